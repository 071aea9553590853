"""A rogue VXLAN sender on the fabric, holding no lease: the set-up the rogue tests share.

Hosts 0 and 1 run weft's vxlan backend with one pod each; host 2 is on the same fabric but runs
nothing and is in no lease, so whatever it sends must be dropped as unknown_sender.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

ROGUE = 2  # the host index that runs no weft


@contextmanager
def rogue_lab() -> Iterator[tuple[Lab, Cluster, str]]:
    """(lab, cluster, the rogue host's namespace) for the length of the `with`."""
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start(pods_per_host=1, idle_hosts=(ROGUE,))
        yield lab, cluster, lab.hosts[ROGUE]


def forged_frame(src_ip: object, dst_ip: object, seq: int = 0) -> bytes:
    """VXLAN (VNI 1) carrying an ICMP echo as a real peer's pod would send it.

    Only the outer source (the rogue host) gives it away.
    """
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    return bytes(VXLAN(flags=0x08, vni=1) / Ether(dst="ff:ff:ff:ff:ff:ff") /
                 IP(src=str(src_ip), dst=str(dst_ip)) / ICMP(seq=seq))


def unknown_sender(cluster: Cluster, host: int = 0) -> int:
    """Datagrams weft on `host` dropped because no lease holds their outer source."""
    return cluster.status(host)["counters"]["drops"].get("unknown_sender", 0)


def link_counter(ifname: str, name: str) -> int:
    """/sys/class/net/<ifname>/statistics/<name> in the calling namespace."""
    with open(f"/sys/class/net/{ifname}/statistics/{name}") as f:
        return int(f.read())
