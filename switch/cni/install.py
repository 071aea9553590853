"""`weft cni install`: the conflist into the conf dir, the plugin into the bin dir.

The conflist is kube-flannel's cbr0 (the plugin with a bridge delegate as the pods' default
gateway, hairpin on, then portmap). The plugin goes in as a small Python script whose shebang
names this interpreter: a container runtime execs it with its own environment, which knows
nothing of virtualenvs or PYTHONPATH, and -I keeps stray PYTHON* variables out.

The runtime runs that script as root, so the install refuses what would make that unsafe or
broken: an interpreter path a shebang cannot hold, and an interpreter or weft tree that someone
other than root could change (a user's virtualenv would have the runtime run that user's code
as root); --force installs anyway, with a warning for each finding.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator

NETWORK_NAME = "cbr0"  # kube-flannel's network name
CNI_VERSION = "0.3.1"  # kube-flannel's: every runtime in use still accepts it


def conflist(plugin_type: str = "weft", cni_version: str = CNI_VERSION,
             extra: dict | None = None) -> dict:
    """The network conflist; `extra` adds plugin conf keys (subnetFile, dataDir, ipam)."""
    plugin = {"type": plugin_type, "delegate": {"hairpinMode": True, "isDefaultGateway": True},
              **(extra or {})}
    return {"name": NETWORK_NAME, "cniVersion": cni_version,
            "plugins": [plugin, {"type": "portmap", "capabilities": {"portMappings": True}}]}


class InstallRefused(ValueError):
    """The install would not work or would not be safe; the message says what to fix."""


def launcher(python: str | None = None) -> str:
    return (f"#!{python or sys.executable} -I\n"
            "# weft's CNI plugin, written by `weft cni install`.\n"
            "import sys\n"
            "from weft.cni.plugin import main\n"
            "sys.exit(main())\n")


def install(conf_dir: str, bin_dir: str, name: str = "weft", cni_version: str = CNI_VERSION,
            extra: dict | None = None, *, python: str | None = None, force: bool = False,
            warn: Callable[[str], None] | None = None) -> tuple[str, str]:
    """Write <conf_dir>/10-<name>.conflist and <bin_dir>/<name>; returns both paths.

    InstallRefused if `python` (default: this interpreter) cannot go in the launcher's shebang,
    cannot import weft in isolated mode, or (unless `force`: then each finding goes to `warn`)
    it or the files it would run are not root's alone.
    """
    if not name or "/" in name:
        raise ValueError(f"plugin name {name!r} must be a file name")
    python = sys.executable if python is None else python
    check_interpreter(python, force, warn or _warn)
    conf_path = os.path.join(conf_dir, f"10-{name}.conflist")
    bin_path = os.path.join(bin_dir, name)
    text = json.dumps(conflist(name, cni_version, extra), indent=2) + "\n"
    _write_atomic(bin_path, launcher(python), 0o755)
    # The conflist last: a runtime that sees it must find the plugin already in place.
    _write_atomic(conf_path, text, 0o644)
    return conf_path, bin_path


def check_interpreter(python: str, force: bool, warn: Callable[[str], None]) -> None:
    problem = shebang_problem(python)
    if problem:
        raise InstallRefused(problem)
    problems = unsafe_paths(python, *launcher_paths(python))
    if problems and not force:
        listed = problems[:10] + ([f"... and {len(problems) - 10} more"] if problems[10:] else [])
        raise InstallRefused(
            "the container runtime runs the plugin as root, but someone else could change "
            "what it runs:\n  " + "\n  ".join(listed) + "\nmake these root's alone (or "
            "install weft into a root-owned Python), or pass --force to install anyway")
    for problem in problems:
        warn(f"{problem} (installing anyway: --force)")


def _warn(message: str) -> None:
    print(f"weft: cni install: warning: {message}", file=sys.stderr)


# --- the shebang ---------------------------------------------------------------------------

def shebang_limit(release: str | None = None) -> int:
    """How much of a script's first line Linux reads (BINPRM_BUF_SIZE, newline included): 256
    since 5.1, 128 before. A longer line is refused from 5.0 on; older kernels cut it short
    silently, which would drop -I or even run a truncated interpreter path."""
    match = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    if match and (int(match[1]), int(match[2])) >= (5, 1):
        return 256
    return 128


def shebang_problem(python: str, limit: int | None = None) -> str | None:
    """Why `#!<python> -I` cannot be the launcher's first line, or None."""
    if not python or not os.path.isabs(python):
        return f"the interpreter path {python!r} is not absolute: a shebang needs a full path"
    if "\n" in python or "\0" in python:
        return (f"the interpreter path {python!r} contains a newline or NUL, which would end "
                f"the shebang line")
    if any(c.isspace() for c in python):
        return (f"the interpreter path {python!r} contains whitespace: the kernel splits a "
                f"shebang line there and would run a different program")
    try:
        line = f"#!{python} -I\n".encode()
    except UnicodeEncodeError:
        return (f"the interpreter path {python!r} is not UTF-8: Python could not read the "
                f"launcher's first line")
    limit = shebang_limit() if limit is None else limit
    if len(line) > limit:
        return (f"the shebang line for {python} is {len(line)} bytes; Linux reads only the "
                f"first {limit} (BINPRM_BUF_SIZE): use a Python at a shorter path")
    return None


# --- who could change what the plugin runs --------------------------------------------------

# What the launcher's interpreter sees under -I: where weft is and where it imports from.
_PROBE = ("import json, os, sys, weft.cni.plugin\n"
          "print(json.dumps([os.path.dirname(weft.__file__), sys.path]))\n")


def launcher_paths(python: str) -> tuple[str, list[str]]:
    """(weft's package dir, sys.path) of `python -I`, the way the launcher will run it."""
    try:
        proc = subprocess.run([python, "-I", "-c", _PROBE], capture_output=True, text=True,
                              timeout=60, check=False, env={})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallRefused(f"cannot run {python}: {exc}") from None
    try:
        package_dir, path = json.loads(proc.stdout)
    except ValueError:
        raise InstallRefused(f"{python} -I cannot import weft.cni.plugin, so the launcher "
                             f"would not run: install weft into that interpreter "
                             f"({proc.stderr.strip()[-300:]})") from None
    return package_dir, [p for p in path if p]


def unsafe_paths(python: str, package_dir: str, import_dirs: Iterable[str],
                 trusted_uids: Collection[int] = (0,)) -> list[str]:
    """What someone other than root (or `trusted_uids`) could change to run code as root:
    the interpreter and the directories above it (as named, and resolved: the directory
    holding a symlink decides where it points), weft's package tree, and every directory the
    interpreter imports from with its top-level modules and .pth files (run at start-up), plus
    the directories above those. POSIX ACLs are not looked at."""
    found: dict[tuple[str, bool], str] = {}  # a path seen on the way may be an end too

    def check(path: str, on_the_way: bool) -> None:
        if (path, on_the_way) not in found:
            found[path, on_the_way] = _unsafe(path, on_the_way, trusted_uids) or ""

    for path in (python, os.path.realpath(python), *import_dirs, package_dir):
        for each, on_the_way in _with_parents(path):
            check(each, on_the_way)
    for directory in import_dirs:
        for entry in _startup_files(directory):
            check(entry, False)
    for root, _dirs, files in os.walk(package_dir):
        check(root, False)
        for name in files:
            check(os.path.join(root, name), False)
    return list(dict.fromkeys(problem for problem in found.values() if problem))


def _with_parents(path: str) -> Iterator[tuple[str, bool]]:
    """`path` and the directories above it, each with whether it is only on the way there
    (then a sticky directory such as /tmp is fine: nobody else can replace what is in it). A
    path that does not exist yet counts as its parent: whoever can create it decides."""
    path = os.path.abspath(path)
    on_the_way = False
    while True:
        yield path, on_the_way
        on_the_way = on_the_way or os.path.lexists(path)
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _startup_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [os.path.join(directory, n) for n in names if n.endswith((".py", ".pth"))]


def _unsafe(path: str, on_the_way: bool, trusted_uids: Collection[int]) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: cannot check ({exc.strerror})"
    if st.st_uid not in trusted_uids:
        return f"{path} is owned by uid {st.st_uid}, not root"
    if on_the_way and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH:
        return f"{path} is world-writable (mode {stat.S_IMODE(st.st_mode):o})"
    if st.st_mode & stat.S_IWGRP:
        return f"{path} is writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


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
