"""`weft-cni`: the CNI plugin executable (type "weft"), flannel's plugin for weft's subnet.env.

ADD renders the delegate conf (bridge + host-local unless the conf's `delegate` says otherwise),
saves it under dataDir/<container id> and execs the delegate plugin from CNI_PATH; DEL replays
the saved conf (an unknown container is already gone: success); CHECK checks through the saved
conf; VERSION lists the spec versions. Failures go to stdout as CNI error JSON, exit 1; so do
inputs nobody should send (a runtime shows stdout to the user and parses it, so it must get
JSON there, never a traceback). ADD, DEL and CHECK of one container hold its lock throughout
(store.locked), so a DEL racing an ADD waits for it and then undoes it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO

from weft.cni import delegate, safejson, store, subnet_file, versions
from weft.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL_ERROR,
    INVALID_CONFIG,
    INVALID_ENV,
    UNKNOWN_CONTAINER,
    CniError,
    shown,
)
from weft.cni.invoke import exec_plugin, find_plugin

DEFAULT_DATA_DIR = "/var/lib/cni/weft"
# Installed as type "flannel", weft takes over flannel's saved delegates: DEL still cleans up
# pods that flannel's own plugin added before the switch.
FLANNEL_DATA_DIR = "/var/lib/cni/flannel"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


def run(command: str, conf: dict, environ: Mapping[str, str]) -> dict | None:
    """Do ADD, DEL or CHECK with the decoded conf; the result to print, if any."""
    version = versions.check(conf.get("cniVersion"))
    _check_env(command, environ)
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise CniError(INVALID_CONFIG, "the network conf has no name (conf key name)")
    data_dir = _data_dir(conf)
    container = environ["CNI_CONTAINERID"]
    if command == "ADD":
        return _add(conf, data_dir, container, environ)
    if command == "DEL":
        return _del(data_dir, container, environ)
    return _check(conf, version, data_dir, container, environ)


def _add(conf: dict, data_dir: str, container: str, environ: Mapping[str, str]) -> dict | None:
    with store.locked(data_dir, container):
        env = subnet_file.load(_path_key(conf, "subnetFile", subnet_file.DEFAULT_PATH))
        rendered = delegate.render(conf, env)
        # Saved before the delegate runs: a runtime calls DEL after a failed ADD, and that DEL
        # must undo whatever half the delegate managed.
        store.save(data_dir, container, rendered)
        return _delegate("ADD", rendered, environ)


def _del(data_dir: str, container: str, environ: Mapping[str, str]) -> None:
    with store.locked(data_dir, container):
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
    prev_result = conf.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise CniError(INVALID_CONFIG, "conf key prevResult must be the JSON object ADD "
                                       "returned")
    with store.locked(data_dir, container):
        saved = store.load(data_dir, container)
        if saved is None:
            raise CniError(UNKNOWN_CONTAINER, f"no network added for container {container} "
                                              f"(nothing saved in {data_dir})")
        if prev_result is not None:  # the delegate checks the result the runtime kept from ADD
            saved["prevResult"] = prev_result
        _delegate("CHECK", saved, environ)
        return None


def _delegate(command: str, conf: dict, environ: Mapping[str, str]) -> dict | None:
    plugin = find_plugin(conf["type"], environ.get("CNI_PATH", ""))
    return exec_plugin(plugin, conf, {**environ, "CNI_COMMAND": command})


def _decode(raw: bytes | str) -> dict:
    try:
        conf = safejson.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"the network conf on stdin is not JSON: "
                                         f"{shown(str(exc), 200)}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network conf on stdin must be a JSON object")
    return conf


def _version(raw: bytes | str) -> dict:
    """VERSION's answer. Runtimes send it with little or no conf: anything goes."""
    try:
        asked = _decode(raw).get("cniVersion")
    except CniError:
        asked = None
    return {"cniVersion": asked if asked in versions.SUPPORTED else versions.LATEST,
            "supportedVersions": list(versions.SUPPORTED)}


def _check_env(command: str, environ: Mapping[str, str]) -> None:
    wanted = ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]
    if command != "DEL":  # DEL may come after the namespace is gone
        wanted.append("CNI_NETNS")
    missing = [name for name in wanted if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"{', '.join(missing)} not set: a container runtime sets "
                                    f"them for {command}")


def _path_key(conf: dict, key: str, default: str) -> str:
    """A path from the conf (null or absent: `default`). Relative paths would depend on the
    runtime's working directory; NUL and unencodable text cannot be file names at all."""
    value = conf.get(key)
    if value is None:
        return default
    if isinstance(value, str) and os.path.isabs(value) and "\0" not in value:
        try:
            os.fsencode(value)
            return value
        except UnicodeError:
            pass
    raise CniError(INVALID_CONFIG, f"conf key {key} must be an absolute path, not "
                                   f"{versions.json_str(value)}")


def _data_dir(conf: dict) -> str:
    default = FLANNEL_DATA_DIR if conf.get("type") == "flannel" else DEFAULT_DATA_DIR
    return _path_key(conf, "dataDir", default)


def main(stdin: IO[bytes] | IO[str] | None = None, stdout: IO[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    """The executable: exit 0 with the result (if any) on stdout, or 1 with error JSON."""
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    environ = os.environ if environ is None else environ
    answer, status = respond(stdin, environ)
    if answer is not None:
        stdout.write(json.dumps(answer) + "\n")
    return status


def respond(stdin: IO[bytes] | IO[str], environ: Mapping[str, str]) -> tuple[dict | None, int]:
    """What to print (result, error JSON or nothing) and the exit status."""
    version = versions.LATEST  # errors speak the conf's version once we know it is one we do
    try:
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(INVALID_ENV, f"CNI_COMMAND is {shown(command) or 'unset'}; "
                                        f"want one of {', '.join(COMMANDS)}")
        raw = stdin.read()
        if command == "VERSION":
            return _version(raw), 0
        conf = _decode(raw)
        if conf.get("cniVersion") in versions.SUPPORTED:
            version = conf["cniVersion"]
        return run(command, conf, environ), 0
    except CniError as err:
        return err.to_json(version), 1
    except Exception as exc:  # a bug of ours: still an answer the runtime can show
        return _internal_error(exc).to_json(version), 1


def _internal_error(exc: Exception) -> CniError:
    import traceback  # only on this path: the plugin starts without it

    where = traceback.extract_tb(exc.__traceback__)[-1]
    return CniError(INTERNAL_ERROR, f"weft-cni failed: {type(exc).__name__}: "
                                    f"{shown(str(exc), 200)}",
                    f"at {os.path.basename(where.filename)}:{where.lineno} in {where.name}; "
                    f"please report this")


if __name__ == "__main__":
    sys.exit(main())
