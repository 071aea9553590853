"""The external interface: which NIC carries overlay traffic and which address we publish."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = logging.getLogger(__name__)


class InterfaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExternalInterface:
    name: str
    index: int
    address: IPv4Address | None  # the interface's own IPv4 address
    mtu: int
    public_ip: IPv4Address  # what peers send to: --public-ip, else the interface address
    # EnableIPv6: what peers send IPv6 to (--public-ipv6, else the interface's first global
    # IPv6 address); None in an IPv4-only cluster
    public_ipv6: IPv6Address | None = None


def find_external_interface(
    iface: str | Sequence[str] | None, public_ip: IPv4Address | None,
    iface_regex: Sequence[str] = (), can_reach: IPv4Address | None = None,
    ipv6: bool = False, public_ipv6: IPv6Address | None = None,
) -> ExternalInterface:
    """The interface as flanneld chooses it: the first `--iface` (name or address) that exists,
    else the first interface an `--iface-regex` matches (by address, then by name), else the
    one the kernel routes `--iface-can-reach` through, else the default route's."""
    names = [iface] if isinstance(iface, str) else list(iface or ())
    with IPRoute() as ipr:
        if names:
            index = _first(ipr, names, _lookup, "--iface")
        elif iface_regex:
            index = _first(ipr, list(iface_regex), _regex_lookup, "--iface-regex")
        elif can_reach is not None:
            index = _route_index(ipr, can_reach)
        else:
            index = _default_route_index(ipr)
        link = ipr.get_links(index)[0]
        name = link.get_attr("IFLA_IFNAME")
        mtu = link.get_attr("IFLA_MTU")
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=index)]
        # Global scope only (RT_SCOPE_UNIVERSE): a link-local fe80:: address reaches no peer.
        addrs_v6 = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=10, index=index)
                    if a["scope"] == 0]
    address = IPv4Address(addrs[0]) if addrs else None
    if public_ip is None:
        if address is None:
            raise InterfaceError(
                f"interface {name} has no IPv4 address; give --public-ip or choose another --iface"
            )
        public_ip = address
    if ipv6 and public_ipv6 is None:
        if not addrs_v6:
            raise InterfaceError(f"EnableIPv6: interface {name} has no global IPv6 address; "
                                 f"give --public-ipv6 or choose another --iface")
        public_ipv6 = IPv6Address(addrs_v6[0])
    return ExternalInterface(name, index, address, mtu, public_ip,
                             public_ipv6 if ipv6 else None)


def _first(ipr: IPRoute, candidates: list[str], lookup, flag: str) -> int:
    """The first candidate that finds an interface; flanneld logs the misses and goes on."""
    errors = []
    for candidate in candidates:
        try:
            return lookup(ipr, candidate)
        except InterfaceError as exc:
            if len(candidates) == 1:
                raise
            log.info("%s", exc)
            errors.append(candidate)
    raise InterfaceError(f"no interface matches any {flag} given ({', '.join(errors)})")


def _regex_lookup(ipr: IPRoute, pattern: str) -> int:
    """Go's regexp.MatchString semantics (a search, not anchored): IPv4 addresses first, then
    names of interfaces that have an IPv4 address, in index order (as flanneld)."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InterfaceError(f"invalid --iface-regex {pattern!r}: {exc}") from None
    addrs = sorted(ipr.get_addr(family=2), key=lambda a: a["index"])
    for addr in addrs:
        if regex.search(addr.get_attr("IFA_ADDRESS")):
            return addr["index"]
    with_ipv4 = {addr["index"] for addr in addrs}
    for link in sorted(ipr.get_links(), key=lambda link: link["index"]):
        if link["index"] in with_ipv4 and regex.search(link.get_attr("IFLA_IFNAME")):
            return link["index"]
    raise InterfaceError(f"no interface with an IPv4 address matches --iface-regex {pattern!r}")


def _route_index(ipr: IPRoute, destination: IPv4Address) -> int:
    """The interface of the kernel's route to `destination` (`ip route get`)."""
    try:
        routes = ipr.route("get", dst=str(destination))
    except NetlinkError as exc:
        raise InterfaceError(f"no route to --iface-can-reach {destination}: "
                             f"{exc.args[-1] if exc.args else exc}") from None
    for route in routes:
        if oif := route.get_attr("RTA_OIF"):
            return oif
    raise InterfaceError(f"the route to --iface-can-reach {destination} names no interface")


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
