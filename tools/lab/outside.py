"""An "outside" namespace for a lab: a machine on the fabric that is not in the cluster network.

It stands for the internet as pods see it: it has an address on the fabric and no route to any
pod subnet, so a pod's packet only gets an answer when its host masqueraded it (`--ip-masq`).
Its name starts with the lab's prefix, so the lab's teardown removes it with the rest.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from pyroute2 import IPRoute

from weft.tools.lab import netns
from weft.tools.lab.topology import FABRIC_NET, Lab

OUTSIDE_IP = FABRIC_NET[250]


def add_outside(lab: Lab, name: str = "out", ip: IPv4Address = OUTSIDE_IP) -> str:
    """Create namespace <prefix><name> with eth0 = `ip` on the fabric bridge; returns its name."""
    ns = lab.prefix + name
    netns.create(ns)
    port = f"o-{name}"[:15]
    with IPRoute(netns=lab.fabric) as ipr:
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        idx = ipr.link_lookup(ifname=port)[0]
        ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=eth0, address=str(ip), prefixlen=FABRIC_NET.prefixlen)
        ipr.link("set", index=eth0, state="up")
    return ns
