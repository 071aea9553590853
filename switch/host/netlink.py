"""Kernel programming through netlink (pyroute2), one request a call, with replace semantics.

Every call opens a short-lived IPRoute in the current network namespace: the daemon runs inside
the host's namespace, and programming happens on lease events only, never per packet.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.host import netlink_dump
from weft.host.rtnl import GONE, IFA_F_NODAD, NUD_PERMANENT, RT_SCOPE_LINK, RTNH_F_ONLINK


def link_index(name: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_mac(index: int) -> str:
    with IPRoute() as ipr:
        return ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")


def configure_link(index: int, *, mtu: int, address: IPv4Address | IPv6Address | None = None,
                   mac: str | None = None, txqlen: int | None = None) -> None:
    """Set MTU (and MAC, transmit queue length), put exactly `address`/32 (an IPv6 one /128,
    beside the kernel's link-local address) on the link, bring it up."""
    with IPRoute() as ipr:
        changes: dict = {"mtu": mtu}
        if mac:
            changes["address"] = mac
        if txqlen:
            changes["txqlen"] = txqlen
        ipr.link("set", index=index, **changes)
        if address is not None:
            family, full = (10, 128) if address.version == 6 else (2, 32)
            for addr in ipr.get_addr(family=family, index=index):
                if addr["scope"] == RT_SCOPE_LINK and family == 10:
                    continue  # fe80::/64, the kernel's: flannel-v6.<VNI> keeps it too
                if addr.get_attr("IFA_ADDRESS") != str(address) or addr["prefixlen"] != full:
                    ipr.addr("del", index=index, address=addr.get_attr("IFA_ADDRESS"),
                             prefixlen=addr["prefixlen"])
            # IPv6: no duplicate address detection, whose probes nobody on the device answers
            extra = {"flags": IFA_F_NODAD} if family == 10 else {}
            _ignore_exists(ipr.addr, "add", index=index, address=str(address), prefixlen=full,
                           **extra)
        ipr.link("set", index=index, state="up")


def route_replace(dst: IPv4Network | IPv6Network, *, oif: int,
                  gateway: IPv4Address | IPv6Address | None = None,
                  onlink: bool = False) -> None:
    with IPRoute() as ipr:
        kwargs = {"dst": str(dst), "oif": oif}
        if gateway is not None:
            kwargs["gateway"] = str(gateway)
        if onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        ipr.route("replace", **kwargs)


def route_delete(dst: IPv4Network, *, oif: int | None = None) -> None:
    with IPRoute() as ipr:
        kwargs = {"dst": str(dst)}
        if oif is not None:
            kwargs["oif"] = oif
        _ignore_missing(ipr.route, "del", **kwargs)


def neigh_replace(ip: IPv4Address, mac: str, *, ifindex: int) -> None:
    with IPRoute() as ipr:
        ipr.neigh("replace", dst=str(ip), lladdr=mac, ifindex=ifindex, state=NUD_PERMANENT)


def neigh_delete(ip: IPv4Address, *, ifindex: int) -> None:
    with IPRoute() as ipr:
        _ignore_missing(ipr.neigh, "del", dst=str(ip), ifindex=ifindex)


def connected_networks(index: int, family: int = 2) -> list[IPv4Network | IPv6Network]:
    """The networks (IPv4, or IPv6 with family=10) directly attached to a link: who is on our
    L2 segment. IPv6 link-local (fe80::/64) is left out: no peer publishes such an address."""
    with IPRoute() as ipr:
        return [ip_network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
                for a in ipr.get_addr(family=family, index=index) if a["scope"] == 0]


def _ignore_exists(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _ignore_missing(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def set_ipv4_conf(ifname: str, key: str, value: int) -> None:
    """net.ipv4.conf.<ifname>.<key> (in /proc the device name keeps its dots)."""
    with open(f"/proc/sys/net/ipv4/conf/{ifname}/{key}", "w") as f:
        f.write(str(value))


# The reconciler's one read of links, addresses, routes and neighbours (parsed without pyroute2).
dump_kernel = netlink_dump.dump_kernel


def address_add(index: int, address: IPv4Address, prefixlen: int = 32) -> None:
    with IPRoute() as ipr:
        _ignore_exists(ipr.addr, "add", index=index, address=str(address), prefixlen=prefixlen)


def link_up(index: int) -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=index, state="up")
