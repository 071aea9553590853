"""Cache staleness for compiled code: a kernel's cache is stamped with every weft file its
machine code can hold.

numba decides whether a cached function is stale from its own source file only. But a function
compiles the functions it calls and the module globals it reads (header offsets, table slots,
reasons, argument groups) into its machine code: the compiled loops (weft.drivers) hold the
pipeline's steps, the fastpath and offload kernels and the byte helpers; the tunnel kernels hold
the fastpath's; every kernel freezes the constants it reads. After an edit of any of those files
old code would keep running. So the stamp of a function defined in a weft module is taken over
that module and every weft module it imports, directly or through others, and the modules that
define the argument groups (NamedTuples) compiled functions take: an edit of any file a kernel
depends on recompiles it, an edit elsewhere (a twin, the slow path) recompiles nothing.

The imports are read from the source files (import statements anywhere in them), not from what
happens to be imported at run time, so the stamp is the same in every process whatever was imported
first, and a new module is covered without being listed anywhere. `from package import name`
where the name is not a submodule (a package re-exporting it) counts the whole package.

This is a module of its own, under no subpackage, because both weft.packet and weft.drivers
compile and neither may import the other's internals for it. Each module that compiles with
cache=True imports it before its first decorator: numba picks the locator when the decorator
runs. With NUMBA_CACHE_DIR set (the systemd unit sets /var/cache/weft/numba) the
cache goes there, as numba would put it; else next to the source, in __pycache__.
"""

from __future__ import annotations

import functools
import os
import re

from numba.core import caching

_ROOT = os.path.dirname(os.path.abspath(__file__))  # the folder of the weft package
_PACKAGE = __name__.rpartition(".")[0]  # "weft"


def package_root() -> str:
    """The folder of the weft package's sources."""
    return _ROOT


def cache_root() -> str:
    """Where the cache of weft's top package goes: NUMBA_CACHE_DIR when set, as numba would,
    else __pycache__ next to the sources (each module's cache sits beside it)."""
    return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(_ROOT, "__pycache__")


def _module_name(path: str) -> str:
    parts = os.path.relpath(path, _ROOT)[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([_PACKAGE, *parts])


def _source(name: str) -> tuple[str, bool] | None:
    """(file, is a package) of weft module `name` under _ROOT; None for anything else
    (weft.backends and weft.tools live in other folders of a checkout, and compile nothing)."""
    if name != _PACKAGE and not name.startswith(_PACKAGE + "."):
        return None
    base = os.path.join(_ROOT, *name.split(".")[1:])
    if os.path.isfile(base + ".py"):
        return base + ".py", False
    init = os.path.join(base, "__init__.py")
    return (init, True) if os.path.isfile(init) else None


def _package_files(init: str) -> set[str]:
    folder = os.path.dirname(init)
    return {os.path.join(top, name) for top, _, names in os.walk(folder)
            for name in names if name.endswith(".py")}


# Import statements, wherever they are (a lazy import inside a function counts too). Read with
# a pattern, not ast.parse, which would cost ~5 ms a file at every start; a line in a docstring
# that looks like an import only adds a file to the stamp.
_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w. \t,]+)", re.M)


def _names(clause: str) -> list[str]:
    """The imported names of "a as b, c" or "(a,\n b as c)"."""
    return [part.split()[0] for part in clause.strip("()").replace("\n", " ").split(",")
            if part.strip()]


@functools.cache
def _imported(path: str) -> frozenset[str]:
    """Files of the weft modules the source at `path` imports."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    here = _module_name(path)
    package = here if path.endswith("__init__.py") else here.rpartition(".")[0]
    found: set[str] = set()
    for clause in _IMPORT.findall(text):
        for name in _names(clause):
            source = _source(name)
            if source:
                found |= _package_files(source[0]) if source[1] else {source[0]}
    for dots, module, clause in _FROM.findall(text):
        base = module
        if dots:
            parent = package.rsplit(".", len(dots) - 1)[0]
            base = f"{parent}.{module}" if module else parent
        source = _source(base)
        if not source:
            continue
        if not source[1]:  # (a package's __init__ counts only for a name it defines)
            found.add(source[0])
        for name in _names(clause):
            sub = _source(f"{base}.{name}")
            if sub:  # a submodule
                found |= _package_files(sub[0]) if sub[1] else {sub[0]}
            elif source[1]:  # a name a package re-exports: any of its modules
                found |= _package_files(source[0])
    return frozenset(found)


@functools.cache
def dependencies(path: str) -> tuple[str, ...]:
    """`path` and the files of every weft module it imports, transitively; sorted."""
    seen = {path}
    todo = [path]
    while todo:
        for dep in _imported(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return tuple(sorted(seen))


# numba types a NamedTuple by its class name and field types, not its field names: a cached
# function would read the wrong array after two fields of one type were swapped or renamed.
# The argument groups are made by the drivers and passed in, so their module is not among the
# function's imports; every module defining a NamedTuple of arrays is in every stamp instead.
_GROUP_CLASS = re.compile(r"^class \w+\((typing\.)?NamedTuple\)", re.M)
_NUMPY = re.compile(r"^(import numpy|from numpy)", re.M)


@functools.cache
def argument_groups() -> tuple[str, ...]:
    """Files of the weft modules that define NamedTuples and import numpy (argument groups of
    compiled functions: weft.packet.pipeline_steps, weft.drivers.loop_args)."""
    found = []
    for path in sorted(_package_files(os.path.join(_ROOT, "__init__.py"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if _GROUP_CLASS.search(text) and _NUMPY.search(text):
            found.append(path)
    return tuple(found)


def stamp_files(path: str) -> tuple[str, ...]:
    """The files whose state the cache stamp of functions defined in `path` is taken over."""
    return tuple(sorted(set(dependencies(path)) | set(argument_groups())))


def covers(py_file: str) -> bool:
    """Whether functions defined in `py_file` get this stamp: any module of the weft package."""
    return os.path.abspath(py_file).startswith(_ROOT + os.sep)


class _DependentStamp:
    _py_file: str

    def get_source_stamp(self):
        stamp = []
        for path in stamp_files(os.path.abspath(self._py_file)):
            st = os.stat(path)
            stamp.append((os.path.relpath(path, _ROOT), st.st_mtime, st.st_size))
        return tuple(stamp)

    @classmethod
    def from_function(cls, py_func, py_file):
        if not covers(py_file):
            return None
        return super().from_function(py_func, py_file)


class _DependentUserLocator(_DependentStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR set: cache there, as numba would."""


class _DependentInTreeLocator(_DependentStamp, caching.InTreeCacheLocator):
    """Otherwise next to the source, in __pycache__."""


for _locator in (_DependentInTreeLocator, _DependentUserLocator):  # user dir ends up first
    if _locator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _locator)


# An index pickles the argument groups' classes by module path, and numba unpickles it before
# it compares the stamp: after a module is renamed (weft.drivers.scratch -> loop_args) an index
# written by the old tree names a module that is gone, and loading it would raise. Such an index
# is stale like one with another stamp: compile again and overwrite it.
_load_index = caching.IndexDataCacheFile._load_index


def _load_index_or_stale(self):  # noqa: ANN001, ANN202 - numba's private method, as it is
    try:
        return _load_index(self)
    except (ImportError, AttributeError):
        return {}


if caching.IndexDataCacheFile._load_index is not _load_index_or_stale:
    caching.IndexDataCacheFile._load_index = _load_index_or_stale
