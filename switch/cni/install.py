"""`weft cni install`: the conflist into the conf dir, the plugin into the bin dir.

The conflist is kube-flannel's cbr0 (the plugin with a bridge delegate as the pods' default
gateway, hairpin on, then portmap). The plugin goes in as a small Python script whose shebang
names this interpreter: a container runtime execs it with its own environment, which knows
nothing of virtualenvs or PYTHONPATH, and -I keeps stray PYTHON* variables out.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

NETWORK_NAME = "cbr0"  # kube-flannel's network name
CNI_VERSION = "0.3.1"  # kube-flannel's: every runtime in use still accepts it


def conflist(plugin_type: str = "weft", cni_version: str = CNI_VERSION,
             extra: dict | None = None) -> dict:
    """The network conflist; `extra` adds plugin conf keys (subnetFile, dataDir, ipam)."""
    plugin = {"type": plugin_type, "delegate": {"hairpinMode": True, "isDefaultGateway": True},
              **(extra or {})}
    return {"name": NETWORK_NAME, "cniVersion": cni_version,
            "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": True}}]}


def launcher(python: str = sys.executable) -> str:
    return (f"#!{python} -I\n"
            "# weft's CNI plugin, written by `weft cni install`.\n"
            "import sys\n"
            "from weft.cni.plugin import main\n"
            "sys.exit(main())\n")


def install(conf_dir: str, bin_dir: str, name: str = "weft", cni_version: str = CNI_VERSION,
            extra: dict | None = None) -> tuple[str, str]:
    """Write <conf_dir>/10-<name>.conflist and <bin_dir>/<name>; returns both paths."""
    if not name or "/" in name:
        raise ValueError(f"plugin name {name!r} must be a file name")
    conf_path = os.path.join(conf_dir, f"10-{name}.conflist")
    bin_path = os.path.join(bin_dir, name)
    text = json.dumps(conflist(name, cni_version, extra), indent=2) + "\n"
    _write_atomic(bin_path, launcher(), 0o755)
    # The conflist last: a runtime that sees it must find the plugin already in place.
    _write_atomic(conf_path, text, 0o644)
    return conf_path, bin_path


def _write_atomic(path: str, text: str, mode: int) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
