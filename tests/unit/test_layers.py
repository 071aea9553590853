"""Which part of weft may import which, read from the source (an AST scan, lazy imports too).

Dependencies point one way: cli -> daemon -> backends -> {observe, host, drivers, packet, dev,
control}. observe sits below the backends (they hand it a driver to trace) and reads the host
through weft.host; host, drivers, packet, dev and control never reach up. A module that imports
upward, or a cycle between parts, fails here, not in a bug report about an import order.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What each part may import, besides itself and the root package `weft`. The top-level modules
# are parts of their own: cli (with the flag parsers it alone uses) and daemon.
ALLOWED: dict[str, set[str]] = {
    "weft": set(),  # switch/__init__.py: every import of weft runs it, so it imports nothing
    "cli": {"daemon", "tools", "cni", "backends", "observe", "host", "drivers", "packet", "dev",
            "control"},
    "daemon": {"backends", "observe", "host", "drivers", "packet", "dev", "control"},
    "tools": {"backends", "cni", "observe", "host", "drivers", "packet", "dev", "control"},
    "cni": set(),  # the plugin is exec'd by the container runtime per pod: it stands alone
    "backends": {"observe", "host", "drivers", "packet", "dev", "control"},
    # doctor reads the host (iptables, rtnetlink numbers) and names devices, the trace hub is
    # attached to a driver; none of them imports observe back.
    "observe": {"host", "drivers", "packet", "dev", "control"},
    "host": {"control"},  # the kernel library: programs and reads the host for the backends
    "drivers": {"packet", "dev"},
    "dev": {"packet"},  # devices and sockets may use the packet formats (the virtio header)
    "packet": set(),  # sans-IO: bytes in, bytes out
    "control": set(),
    # weft.status: the status snapshot's dataclasses, imported by whoever reports or reads
    # status; it imports nothing of weft, so it can sit under every part.
    "status": set(),
    # weft.jitcache: numba's cache locator, installed before any `cache=True` kernel compiles;
    # it imports nothing of weft, so the packet kernels and the drivers can both use it.
    "jitcache": set(),
}
for _row, _may in ALLOWED.items():
    if _row not in ("weft", "status", "cni", "packet", "jitcache"):
        _may.add("status")
for _row in ("packet", "drivers", "backends", "tools", "daemon", "cli", "observe"):
    ALLOWED[_row].add("jitcache")
# instance_lock is the daemon's first step (`weft run` claims the host before touching it).
TOP_LEVEL = {"cli": "cli", "goflags": "cli", "flanneld_flags": "cli", "daemon": "daemon",
             "instance_lock": "daemon"}

# Imports that break the table and are being removed (empty since issue 15 parts A and B). The set
# can only shrink: an entry whose import is gone fails test_allowed_for_now_is_still_needed.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


def package_dirs() -> dict[str, Path]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def module_files() -> dict[str, Path]:
    """weft.* module name -> its file, for every module the package-dir mapping installs."""
    modules = {}
    for package, folder in package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, importer: str, modules: Iterable[str],
               is_package: bool = False) -> set[str]:
    """Every weft module `source` imports, at the top or inside a function (lazy imports count).
    `from weft.x import y` is weft.x.y when that is a module, else weft.x."""
    known = set(modules)
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, importer, is_package)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name == "weft" or name.startswith("weft.")}


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "weft"
    return TOP_LEVEL.get(parts[1], parts[1])


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) for every weft import in the tree."""
    modules = module_files()
    edges = set()
    for name, path in modules.items():
        for imported in imports_of(path.read_text(), name, modules, path.stem == "__init__"):
            edges.add((name, imported))
    return edges


def forbidden(edges: Iterable[tuple[str, str]]) -> list[str]:
    """The imports the table does not allow, as 'importer -> imported' lines."""
    bad = []
    for importer, imported in sorted(edges):
        source, target = part_of(importer), part_of(imported)
        if source == target or target == "weft" or (importer, imported) in ALLOWED_FOR_NOW:
            continue
        if target not in ALLOWED.get(source, set()):
            bad.append(f"{importer} -> {imported} ({source} may not import {target})")
    return bad


def part_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """A cycle between parts (as the parts along it), or None."""
    graph: dict[str, set[str]] = {}
    for importer, imported in edges:
        source, target = part_of(importer), part_of(imported)
        if source != target:
            graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_every_part_has_a_row_in_the_table():
    parts = {part_of(name) for name in module_files()}
    assert parts <= set(ALLOWED), f"add a row to ALLOWED for {sorted(parts - set(ALLOWED))}"


def test_imports_follow_the_table():
    assert forbidden(import_edges()) == []


def test_no_cycle_between_parts():
    edges = {edge for edge in import_edges() if edge not in ALLOWED_FOR_NOW}
    assert part_cycle(edges) is None


def test_allowed_for_now_is_still_needed():
    """Once another part removes one of these imports, its entry goes too: the set shrinks."""
    assert ALLOWED_FOR_NOW - import_edges() == set()


def test_the_scan_sees_lazy_and_from_imports():
    modules = {"weft.host", "weft.host.netlink", "weft.backends", "weft.backends.vtep",
               "weft.observe.sibling"}
    source = ("from weft.host import netlink\n"
              "def f():\n"
              "    import weft.backends.vtep\n"
              "    from weft import backends\n"
              "    from . import sibling\n")
    assert imports_of(source, "weft.observe.doctor", modules) == {
        "weft.host.netlink", "weft.backends.vtep", "weft.backends", "weft.observe.sibling"}


def test_the_check_reports_an_upward_import_and_a_cycle():
    assert forbidden({("weft.host.reconcile", "weft.backends.overlay")}) == [
        "weft.host.reconcile -> weft.backends.overlay (host may not import backends)"]
    assert forbidden({("weft.observe.doctor", "weft.daemon")})
    assert part_cycle({("weft.observe.doctor", "weft.backends.vtep"),
                       ("weft.backends.overlay", "weft.host.netlink"),
                       ("weft.host.netlink", "weft.observe.http")}) == [
        "backends", "host", "observe", "backends"]


# rtnetlink numbers (and the message layouts) have one home, weft.host.rtnl.
RTNETLINK_NAME = re.compile(r"_?(RTM|RTMGRP|NLM_F|NLMSG|NLA|RTA|NDA|NUD|RTN|RTNH_F|RTPROT|RT_TABLE"
                            r"|RT_SCOPE|IFLA|IFA|IFF_UP|SOL_NETLINK|NETLINK_CAP)(_|$)")


def test_rtnetlink_numbers_are_defined_in_rtnl_only():
    defined = []
    for name, path in module_files().items():
        if name == "weft.host.rtnl":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                elements = target.elts if isinstance(target, ast.Tuple) else [target]
                defined += [f"{name}.{el.id}" for el in elements
                            if isinstance(el, ast.Name) and RTNETLINK_NAME.match(el.id)]
    assert defined == []


def test_every_module_imports_on_its_own():
    """Each module imports in a fresh interpreter of its own: no root, device or import-order
    need. One interpreter per module would take minutes (numba), so one child imports each
    module in turn after clearing weft from sys.modules."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'weft' or m.startswith('weft.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=-2))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    names = sorted(module_files())
    out = subprocess.run([sys.executable, "-c", script, *names], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
