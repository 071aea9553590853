"""`weft-cni`: the CNI plugin executable (type "weft"), flannel's plugin for weft's subnet.env.

ADD renders the delegate conf (bridge + host-local unless the conf's `delegate` says otherwise),
saves it under dataDir/<container id> and execs the delegate plugin from CNI_PATH; DEL replays
the saved conf (an unknown container is already gone: success); CHECK checks through the saved
conf; VERSION lists the spec versions. Failures go to stdout as CNI error JSON, exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO

from weft.cni import delegate, store, subnet_file, versions
from weft.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    UNKNOWN_CONTAINER,
    CniError,
)
from weft.cni.invoke import exec_plugin, find_plugin

DEFAULT_DATA_DIR = "/var/lib/cni/weft"
# Installed as type "flannel", weft takes over flannel's saved delegates: DEL still cleans up
# pods that flannel's own plugin added before the switch.
FLANNEL_DATA_DIR = "/var/lib/cni/flannel"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


def run(command: str, conf_text: str, environ: Mapping[str, str]) -> tuple[dict | None, str]:
    """Do `command`; returns (what to print, the cniVersion to print errors in)."""
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND is {command or 'unset'}; "
                                    f"want one of {', '.join(COMMANDS)}")
    conf = _decode(conf_text, lenient=command == "VERSION")
    if command == "VERSION":
        version = conf.get("cniVersion")
        return {"cniVersion": version if version in versions.SUPPORTED else versions.LATEST,
                "supportedVersions": list(versions.SUPPORTED)}, versions.LATEST
    version = versions.check(conf.get("cniVersion"))
    _check_env(command, environ)
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise CniError(INVALID_CONFIG, "the network conf has no name (conf key name)")
    data_dir = _data_dir(conf)
    container = environ["CNI_CONTAINERID"]
    if command == "ADD":
        return _add(conf, data_dir, container, environ), version
    if command == "DEL":
        return _del(data_dir, container, environ), version
    return _check(conf, version, data_dir, container, environ), version


def _add(conf: dict, data_dir: str, container: str, environ: Mapping[str, str]) -> dict | None:
    env = subnet_file.load(_str_key(conf, "subnetFile", subnet_file.DEFAULT_PATH))
    rendered = delegate.render(conf, env)
    # Saved before the delegate runs: a runtime calls DEL after a failed ADD, and that DEL
    # must undo whatever half the delegate managed.
    store.save(data_dir, container, rendered)
    return _delegate("ADD", rendered, environ)


def _del(data_dir: str, container: str, environ: Mapping[str, str]) -> None:
    saved = store.load(data_dir, container)
    if saved is None:
        return None  # never added here, or deleted already: DEL must succeed
    _delegate("DEL", saved, environ)
    store.remove(data_dir, container)
    return None


def _check(conf: dict, version: str, data_dir: str, container: str,
           environ: Mapping[str, str]) -> None:
    if not versions.allows_check(version):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later; the "
                                             f"conf says {version}")
    saved = store.load(data_dir, container)
    if saved is None:
        raise CniError(UNKNOWN_CONTAINER, f"no network added for container {container} "
                                          f"(nothing saved in {data_dir})")
    if "prevResult" in conf:  # the delegate checks the result the runtime kept from ADD
        saved["prevResult"] = conf["prevResult"]
    _delegate("CHECK", saved, environ)
    return None


def _delegate(command: str, conf: dict, environ: Mapping[str, str]) -> dict | None:
    plugin = find_plugin(conf["type"], environ.get("CNI_PATH", ""))
    return exec_plugin(plugin, conf, {**environ, "CNI_COMMAND": command})


def _decode(text: str, lenient: bool) -> dict:
    try:
        conf = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        if lenient:
            return {}
        raise CniError(DECODING_FAILURE, f"the network conf on stdin is not JSON: {exc}") from None
    if not isinstance(conf, dict):
        if lenient:
            return {}
        raise CniError(DECODING_FAILURE, "the network conf on stdin must be a JSON object")
    return conf


def _check_env(command: str, environ: Mapping[str, str]) -> None:
    wanted = ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]
    if command != "DEL":  # DEL may come after the namespace is gone
        wanted.append("CNI_NETNS")
    missing = [name for name in wanted if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"{', '.join(missing)} not set: a container runtime sets "
                                    f"them for {command}")


def _str_key(conf: dict, key: str, default: str) -> str:
    value = conf.get(key, default)
    if not isinstance(value, str) or not value:
        raise CniError(INVALID_CONFIG, f"conf key {key} must be a path")
    return value


def _data_dir(conf: dict) -> str:
    default = FLANNEL_DATA_DIR if conf.get("type") == "flannel" else DEFAULT_DATA_DIR
    return _str_key(conf, "dataDir", default)


def main(stdin: IO[str] | None = None, stdout: IO[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    """The executable: exit 0 with the result (if any) on stdout, or 1 with error JSON."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    environ = os.environ if environ is None else environ
    text = stdin.read()
    version = versions.LATEST
    try:
        version = _error_version(text)
        result, version = run(environ.get("CNI_COMMAND", ""), text, environ)
    except CniError as err:
        stdout.write(json.dumps(err.to_json(version)) + "\n")
        return 1
    if result is not None:
        stdout.write(json.dumps(result) + "\n")
    return 0


def _error_version(text: str) -> str:
    """The version to report errors in: the conf's, when it is one we speak."""
    try:
        version = json.loads(text).get("cniVersion")
    except (ValueError, AttributeError):
        return versions.LATEST
    return version if version in versions.SUPPORTED else versions.LATEST


if __name__ == "__main__":
    sys.exit(main())
