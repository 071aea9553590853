"""Opening the TUN/TAP device (python-pytun). Persistent, so a restarted daemon reattaches to
the same device, MAC and routes instead of making peers relearn us."""

from __future__ import annotations

import random

import pytun


def random_mac() -> str:
    """A random locally administered unicast MAC, as flannel gives its VTEP device."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def open_device(name: str, *, tap: bool) -> pytun.TunTapDevice:
    flags = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
    device = pytun.TunTapDevice(name=name, flags=flags)
    device.persist(True)
    return device
