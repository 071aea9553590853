"""CNI's exec protocol from the caller's side: find a plugin in CNI_PATH, run it, read it.

The plugin gets the CNI_* variables in its environment and its conf on stdin, and answers on
stdout: a result (or nothing, for DEL and CHECK) with exit 0, or error JSON with non-zero exit.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping

from weft.cni import safejson
from weft.cni.errors import DECODING_FAILURE, INVALID_CONFIG, IO_FAILURE, CniError


def find_plugin(name: str, cni_path: str) -> str:
    """The executable `name` in the first CNI_PATH directory holding one."""
    if not name or "/" in name:
        raise CniError(INVALID_CONFIG, f"plugin type {name!r} is not a plugin name")
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    for directory in dirs:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"CNI plugin {name!r} not found in CNI_PATH "
                                   f"{':'.join(dirs) or '(empty)'}; install it there "
                                   f"(Debian: containernetworking-plugins) or fix CNI_PATH")


def exec_plugin(plugin: str, conf: dict, env: Mapping[str, str]) -> dict | None:
    """Run `plugin` with exactly `env` and `conf` on stdin; its result, None if it printed none.

    A failing plugin's error JSON becomes a CniError with the plugin's own code and message.
    """
    name = os.path.basename(plugin)
    try:
        proc = subprocess.run([plugin], input=json.dumps(conf).encode(), env=dict(env),
                              capture_output=True, check=False)
    except OSError as exc:  # not a program (ENOEXEC), gone since find_plugin, no memory...
        raise CniError(IO_FAILURE, f"cannot run CNI plugin {plugin}: {exc.strerror}") from None
    if proc.returncode != 0:
        err = CniError.from_json(proc.stdout, f"{name} exited with status {proc.returncode}")
        if not err.details and proc.stderr:
            err.details = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise err
    if not proc.stdout.strip():
        return None
    try:
        result = safejson.loads(proc.stdout)
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"{name} printed a result that is not JSON ({exc})",
                       proc.stdout.decode(errors="replace")[-2000:]) from None
    if not isinstance(result, dict):
        raise CniError(DECODING_FAILURE, f"{name} printed a result that is not a JSON object",
                       proc.stdout.decode(errors="replace")[-2000:])
    return result
