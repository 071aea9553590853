"""The CNI spec versions weft's plugin speaks, and the check every command makes."""

from __future__ import annotations

from weft.cni.errors import INCOMPATIBLE_VERSION, CniError, shown

# 0.3.0 is the first with the interfaces/ips result, 0.4.0 adds CHECK, 1.0.0 drops ips' version.
SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
LATEST = SUPPORTED[-1]


def check(version: object) -> str:
    """The conf's cniVersion if we speak it, else an incompatible-version error."""
    if version in SUPPORTED:
        return str(version)
    shown = "none" if version in (None, "") else json_str(version)
    raise CniError(INCOMPATIBLE_VERSION,
                   f"incompatible CNI version: the config's cniVersion is {shown}; "
                   f"weft's plugin supports {', '.join(SUPPORTED)} — set one of them")


def allows_check(version: str) -> bool:
    """CHECK exists from spec 0.4.0 on."""
    return tuple(int(p) for p in version.split(".")) >= (0, 4, 0)


def json_str(value: object) -> str:
    return f'"{shown(value)}"' if isinstance(value, str) else shown(value)
