"""An "outside" namespace for a lab: a machine on the fabric that is not in the cluster network.

It stands for the internet as pods see it: it has an address on the fabric and no route to any
pod subnet, so a pod's packet only gets an answer when its host masqueraded it (`--ip-masq`).
Its name starts with the lab's prefix, so the lab's teardown removes it with the rest.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from weft.tools.lab import netns
from weft.tools.lab.topology import FABRIC_NET, Lab

OUTSIDE_IP = FABRIC_NET[250]


def add_outside(lab: Lab, name: str = "out", ip: IPv4Address = OUTSIDE_IP) -> str:
    """Create namespace <prefix><name> with eth0 = `ip` on the fabric bridge; returns its name."""
    ns = lab.prefix + name
    netns.create(ns)
    lab.plug_into_fabric(ns, f"o-{name}"[:15], ip)
    return ns
