"""Cache staleness for compiled code: one stamp over every file its machine code holds.

numba decides whether a cached function is stale from its own source file only, but the
compiled loops (compiled_loops.py and the helpers in libc.py, loopio.py, udpgso.py) compile the
pipeline's steps, the fastpath and offload kernels and the byte helpers they share into
themselves, and so do the steps and kernels with their helpers (the checksum of wirebytes.py
is inlined into both fastpath.py and offload.py). After an edit of one of those files, or of the
table/reason/virtio constants or argument groups they freeze, old code would keep running. This
locator, consulted only for functions defined in the covered modules, stamps their cache with
all of the files below, so an edit of any of them recompiles all of them.

Each covered module imports this one before its first @njit(cache=True): numba picks the
locator when the decorator runs.
"""

from __future__ import annotations

import os

from numba.core import caching

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKET = os.path.join(_HERE, "packet")
_OFFLOAD = os.path.join(_PACKET, "offload")
_DRIVERS = os.path.join(_HERE, "drivers")
# Functions defined in these files get the stamp ...
_COVERED = frozenset(
    [os.path.join(_DRIVERS, name)
     for name in ("compiled_loops.py", "libc.py", "loopio.py", "udpgso.py")]
    + [os.path.join(_PACKET, name) for name in ("steps.py", "fastpath.py", "wirebytes.py")]
    + [os.path.join(_OFFLOAD, name) for name in ("gro_coalesce.py", "tunnel.py")])
# ... which is taken over these: the covered modules and what their compiled code freezes.
_DEPENDS = sorted(_COVERED) + [
    os.path.join(_DRIVERS, "scratch.py"),
    os.path.join(_PACKET, "table.py"),
    os.path.join(_PACKET, "reasons.py"),
    os.path.join(_OFFLOAD, "vnet_hdr.py"),
    os.path.join(_HERE, "dev", "udpopts.py"),
]


class _DependentStamp:
    def get_source_stamp(self):
        return tuple((os.stat(path).st_mtime, os.stat(path).st_size) for path in _DEPENDS)

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.abspath(py_file) not in _COVERED:
            return None
        return super().from_function(py_func, py_file)


class _DependentUserLocator(_DependentStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR set: cache there, as numba would."""


class _DependentInTreeLocator(_DependentStamp, caching.InTreeCacheLocator):
    """Otherwise next to the source, in __pycache__."""


for _locator in (_DependentInTreeLocator, _DependentUserLocator):  # user dir ends up first
    if _locator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _locator)
