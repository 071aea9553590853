"""Program a lab host the way flanneld's vxlan backend does, using the kernel's vxlan device.

This is the reference peer weft must interoperate with: a weft host and a host set up as below
(what flanneld's vxlan backend programs through netlink) exchange pod traffic both ways.

    ip link add flannel.<VNI> type vxlan id <VNI> local <public ip> dev eth0 dstport <port> \\
        nolearning; ip link set address <mac> mtu <mtu>; ip addr add <subnet net addr>/32; up
    per peer:
    ip neigh replace <net addr> lladdr <mac> dev flannel.<VNI> nud permanent
    bridge fdb replace <mac> dev flannel.<VNI> dst <public ip> self permanent
    ip route replace <subnet> via <net addr> dev flannel.<VNI> onlink

and with EnableIPv6 the same again for the lease's IPv6 half, on flannel-v6.<VNI> (the kernel's
default MTU over an IPv6 underlay, 70 bytes under eth0's; the v6 subnet's network address /128;
FDB entries to each peer's PublicIPv6):

    ip link add flannel-v6.<VNI> type vxlan id <VNI> local <public ipv6> dev eth0 \
        dstport <port> nolearning
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from weft.backends.vtep import random_mac  # noqa: F401 - re-exported for callers
from weft.host.rtnl import RTNH_F_ONLINK

_GONE = (2, 3, 19)  # ENOENT, ESRCH, ENODEV: already absent is fine when removing


def device_name(vni: int) -> str:
    return f"flannel.{vni}"


def setup_device(ns: str, vni: int, port: int, public_ip: str, subnet: IPv4Network | str,
                 mtu: int, mac: str, dev: str = "eth0", udp_csum: bool | None = None) -> int:
    """Create and raise flannel.<vni> in `ns`; returns its ifindex.

    flanneld leaves IFLA_VXLAN_UDP_CSUM unset, so the kernel default applies (on Linux 6.18:
    outer UDP checksums ON). Pass udp_csum=False to get a zero-checksum peer.
    """
    subnet = ipaddress.ip_network(subnet)
    name = device_name(vni)
    extra = {} if udp_csum is None else {"vxlan_udp_csum": int(udp_csum)}
    with IPRoute(netns=ns) as ipr:
        link = ipr.link_lookup(ifname=dev)[0]
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=str(public_ip),
                 vxlan_link=link, vxlan_port=port, vxlan_learning=0, address=mac, mtu=mtu, **extra)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.addr("replace", index=idx, address=str(subnet.network_address), prefixlen=32)
        ipr.link("set", index=idx, state="up")
        return idx


def device_name6(vni: int) -> str:
    return f"flannel-v6.{vni}"


def setup_device6(ns: str, vni: int, port: int, public_ipv6: str, subnet6: IPv6Network | str,
                  mac: str, dev: str = "eth0") -> int:
    """Create and raise flannel-v6.<vni> in `ns` as flanneld does; returns its ifindex. No MTU
    given, as flanneld (Backend MTU unset): the kernel's default for VXLAN over IPv6."""
    subnet6 = ipaddress.ip_network(subnet6)
    name = device_name6(vni)
    with IPRoute(netns=ns) as ipr:
        link = ipr.link_lookup(ifname=dev)[0]
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local6=str(public_ipv6),
                 vxlan_link=link, vxlan_port=port, vxlan_learning=0, address=mac)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.addr("replace", index=idx, address=str(subnet6.network_address), prefixlen=128)
        ipr.link("set", index=idx, state="up")
        return idx


def add_peer6(ns: str, vni: int, subnet6: IPv6Network | str, vtep_mac: str,
              public_ipv6: str) -> None:
    """The IPv6 half of add_peer: neighbour, FDB entry to PublicIPv6, onlink route."""
    subnet6 = ipaddress.ip_network(subnet6)
    gw = str(subnet6.network_address)
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=device_name6(vni))[0]
        ipr.neigh("replace", dst=gw, lladdr=vtep_mac, ifindex=idx, state=ndmsg.NUD_PERMANENT,
                  family=10)
        ipr.fdb("replace", ifindex=idx, lladdr=vtep_mac, dst=str(public_ipv6),
                state=ndmsg.NUD_PERMANENT, flags=ndmsg.NTF_SELF)
        ipr.route("replace", dst=str(subnet6), gateway=gw, oif=idx, flags=RTNH_F_ONLINK,
                  family=10)


def remove_device(ns: str, vni: int) -> None:
    """Delete flannel.<vni> (its neighbours, FDB entries and routes go with it)."""
    with IPRoute(netns=ns) as ipr:
        for idx in ipr.link_lookup(ifname=device_name(vni)):
            ipr.link("del", index=idx)


def add_peer(ns: str, vni: int, subnet: IPv4Network | str, vtep_mac: str,
             public_ip: str) -> None:
    """Make the peer leasing `subnet` (VTEP `vtep_mac` at `public_ip`) reachable."""
    subnet = ipaddress.ip_network(subnet)
    gw = str(subnet.network_address)
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=device_name(vni))[0]
        ipr.neigh("replace", dst=gw, lladdr=vtep_mac, ifindex=idx, state=ndmsg.NUD_PERMANENT)
        ipr.fdb("replace", ifindex=idx, lladdr=vtep_mac, dst=str(public_ip),
                state=ndmsg.NUD_PERMANENT, flags=ndmsg.NTF_SELF)
        ipr.route("replace", dst=str(subnet), gateway=gw, oif=idx, flags=RTNH_F_ONLINK)


def remove_peer(ns: str, vni: int, subnet: IPv4Network | str, vtep_mac: str,
                public_ip: str) -> None:
    """Undo add_peer, in flannel's order (route, then neighbour, then FDB)."""
    subnet = ipaddress.ip_network(subnet)
    gw = str(subnet.network_address)
    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=device_name(vni))
        if not found:
            return
        idx = found[0]
        steps = (
            lambda: ipr.route("del", dst=str(subnet), gateway=gw, oif=idx),
            lambda: ipr.neigh("del", dst=gw, lladdr=vtep_mac, ifindex=idx),
            lambda: ipr.fdb("del", ifindex=idx, lladdr=vtep_mac, dst=str(public_ip),
                            state=ndmsg.NUD_PERMANENT, flags=ndmsg.NTF_SELF),
        )
        for step in steps:
            try:
                step()
            except NetlinkError as exc:
                if exc.code not in _GONE:
                    raise
