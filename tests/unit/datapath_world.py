"""The small world the kernel and twin tests run in (import it as `datapath_world`).

We are 10.1.15.0/24 at 192.0.2.1 in 10.1.0.0/16; peers 10.1.16.0/24 and 10.1.18.0/24 at
192.0.2.2, 10.1.17.0/24 at 192.0.2.3, and 10.1.19.0/24 at 192.0.2.4 without a VtepMAC.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from weft.packet.encap import VXLAN
from weft.packet.table import DatapathConfig, PeerTable

NET = IPv4Network("10.1.0.0/16")
LOCAL_MAC = "02:00:00:00:00:01"
PEER_MAC = "7e:81:33:71:e9:51"
A, B, C = "192.0.2.1", "192.0.2.2", "192.0.2.3"


def ip(text: str) -> int:
    return int(IPv4Address(text))


def make_world() -> tuple[DatapathConfig, PeerTable]:
    cfg = DatapathConfig(NET, 24, vni=1, port=VXLAN.default_port, mtu=1450)
    local_mac = bytes.fromhex(LOCAL_MAC.replace(":", ""))
    cfg.set_local(IPv4Network("10.1.15.0/24"), IPv4Address(A), local_mac)
    table = PeerTable(NET, 24)
    mac = bytes.fromhex(PEER_MAC.replace(":", ""))
    table.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address(B), mac)
    table.set_peer(IPv4Network("10.1.18.0/24"), IPv4Address(B), mac)
    table.set_peer(IPv4Network("10.1.17.0/24"), IPv4Address(C), bytes.fromhex("7e0000000017"))
    table.set_peer(IPv4Network("10.1.19.0/24"), IPv4Address("192.0.2.4"), None)
    return cfg, table
