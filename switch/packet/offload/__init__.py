"""TUN/TAP and UDP offloads, in one place: the virtio header, TSO split, GRO coalesce, UDP GRO
receive buffers and UDP-tunnel GSO. Numba kernels, each module with its readable twin beside it:

    vnet_hdr      struct virtio_net_hdr (and the 24-byte tunnel variant): layout, constants
    tso           what a TCP/IPv4 super-frame is and how its segments are written (shared)
    tso_split     TSO on a device read: one read -> ordinary packets (split_super)
    gro_coalesce  GRO on a device write: FORWARD rows -> writes, a flow's segments merged
                  (coalesce)
    udp_gro       UDP GRO receive buffers -> rows (gro_split, split_tunnel_gso)
    tunnel        TSO reads <-> UDP-tunnel GSO frames the kernel cuts (encap_super,
                  decap_super)
    *_twin        the pure-Python twin of the kernel module of that name: the specification,
                  held byte-identical to it by the tests; beside its kernel, so that the two
                  are read, changed and reviewed together

The public names of the kernel modules are importable from here too (`from weft.packet.offload
import split_super`); they load on first use, so importing vnet_hdr alone (the device opener
does) loads neither numpy nor numba.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

_KERNEL_MODULES = ("vnet_hdr", "tso", "tso_split", "gro_coalesce", "udp_gro", "tunnel")


@functools.cache
def _exports() -> dict[str, str]:
    """Public name (the __all__ of each kernel module) -> the module that defines it."""
    found: dict[str, str] = {}
    for name in _KERNEL_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        for public in module.__all__:
            found[public] = name
    return found


def __getattr__(name: str) -> Any:
    # A submodule not imported yet is not an export: `from weft.packet.offload import vnet_hdr`
    # asks for it here first, and must not load every kernel to be told to import it.
    if name in {info.name for info in pkgutil.iter_modules(__path__)}:
        raise AttributeError(name)
    exports = _exports()
    if name not in exports:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{exports[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_exports()))
