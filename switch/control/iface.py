"""The external interface: which NIC carries overlay traffic and which address we publish."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from pyroute2 import IPRoute


class InterfaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExternalInterface:
    name: str
    index: int
    address: IPv4Address | None  # the interface's own IPv4 address
    mtu: int
    public_ip: IPv4Address  # what peers send to: --public-ip, else the interface address


def find_external_interface(
    iface: str | None, public_ip: IPv4Address | None
) -> ExternalInterface:
    """`--iface` by name or address, else the default route's interface (as flanneld)."""
    with IPRoute() as ipr:
        if iface:
            index = _lookup(ipr, iface)
        else:
            index = _default_route_index(ipr)
        link = ipr.get_links(index)[0]
        name = link.get_attr("IFLA_IFNAME")
        mtu = link.get_attr("IFLA_MTU")
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=index)]
    address = IPv4Address(addrs[0]) if addrs else None
    if public_ip is None:
        if address is None:
            raise InterfaceError(
                f"interface {name} has no IPv4 address; give --public-ip or choose another --iface"
            )
        public_ip = address
    return ExternalInterface(name, index, address, mtu, public_ip)


def _lookup(ipr: IPRoute, iface: str) -> int:
    try:
        wanted = IPv4Address(iface)
    except ValueError:
        wanted = None
    if wanted is None:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise InterfaceError(f"failed to find interface {iface!r} (check --iface)")
        return found[0]
    for addr in ipr.get_addr(family=2):
        if IPv4Address(addr.get_attr("IFA_ADDRESS")) == wanted:
            return addr["index"]
    raise InterfaceError(f"no interface has address {iface} (check --iface)")


def _default_route_index(ipr: IPRoute) -> int:
    for route in ipr.get_default_routes(family=2):
        oif = route.get_attr("RTA_OIF")
        if oif:
            return oif
    raise InterfaceError("no default route to choose an interface from; give --iface")
