"""The VTEP MAC: random, locally administered, unicast, as flannel gives its VXLAN device."""

from __future__ import annotations

import random


def random_mac() -> str:
    """A random locally administered unicast MAC, as flannel gives its VTEP device."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{o:02x}" for o in octets)
