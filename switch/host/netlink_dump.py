"""One read of the kernel's links, IPv4 addresses, main-table routes and neighbours, parsed lean.

Routes and neighbours are IPv4 unless the caller asks for IPv6 too (a dual-stack backend):
an IPv4-only host keeps its four dumps a pass. Each route and neighbour carries its family
(4 or 6); addresses stay IPv4, which is all the comparisons of addresses need.

The reconciler compares this with what the backend programmed. pyroute2 turns each dumped
message into a dict-like object (~0.7 ms an entry): with 4,096 peers (a neighbour and a route
each) a pass took ~6 s, held the backend's lock all that time (lease events waited behind it)
and left the heap tens of MB larger. Here each message is read with struct at the few offsets
the comparison needs: ~10 us an entry.

The answer has the shape the reconciler indexes (plain dicts, addresses as text, MACs in
lower-case colon form), the same as pyroute2's view of the same messages.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address

from weft.host.rtnl import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFADDRMSG,
    IFF_UP,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_MTU,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NLA_TYPE_MASK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGERR,
    NLMSGHDR,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTATTR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTMSG,
    nlmsg_align,
)

RECV_SIZE = 1 << 20  # one recv takes every message the kernel queued for the dump so far
TIMEOUT = 5.0

_U32 = struct.Struct("=I")


class DumpError(OSError):
    """The kernel answered a dump request with an error."""


def dump_kernel(ipv6: bool = False) -> dict:
    """{"links", "addrs", "routes", "neighbours"}: lists of plain dicts (see the parsers);
    `ipv6`: IPv6 routes and neighbours as well as IPv4 ones."""
    families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.settimeout(TIMEOUT)
        # One dump per family rather than one AF_UNSPEC dump: that would also bring the
        # multicast and MPLS tables, which nothing here compares.
        return {
            "links": _dump(sock, RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0),
                           _link),
            "addrs": _dump(sock, RTM_GETADDR, IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0),
                           _addr),
            "routes": [route for family in families for route in _dump(
                sock, RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0),
                _route)],
            "neighbours": [entry for family in families for entry in _dump(
                sock, RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0), _neighbour)],
        }


def _dump(sock: socket.socket, kind: int, body: bytes,
          parse: Callable[[bytes, int, int], dict | None]) -> list[dict]:
    sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP,
                             kind, 0) + body)
    out: list[dict] = []
    while True:
        data = sock.recv(RECV_SIZE)
        offset = 0
        while offset + NLMSGHDR.size <= len(data):
            length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
            if length < NLMSGHDR.size:
                raise DumpError(f"netlink: malformed message in the dump (length {length})")
            start, end = offset + NLMSGHDR.size, offset + length
            offset += nlmsg_align(length)
            if seq != kind:  # not an answer to this request
                continue
            if msg_type == NLMSG_DONE:
                return out
            if msg_type == NLMSG_ERROR:
                (code,) = NLMSGERR.unpack_from(data, start)
                raise DumpError(-code, f"netlink dump {kind}: errno {-code}")
            entry = parse(data, start, end)
            if entry is not None:
                out.append(entry)


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + RTATTR.size <= end:
        size, kind = RTATTR.unpack_from(data, offset)
        if size < RTATTR.size:
            return
        yield kind & NLA_TYPE_MASK, data[offset + RTATTR.size:offset + size]
        offset += nlmsg_align(size)


def _mac(raw: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in raw) if raw else None


def _ipv4(raw: bytes | None) -> str | None:
    return str(IPv4Address(raw)) if raw is not None and len(raw) == 4 else None


def _ip(raw: bytes | None, family: int) -> str | None:
    """An address attribute of `family` as text; None when absent or of the wrong length."""
    if family == socket.AF_INET6:
        return str(IPv6Address(raw)) if raw is not None and len(raw) == 16 else None
    return _ipv4(raw)


_FAMILY = {socket.AF_INET: 4, socket.AF_INET6: 6}
_ANY = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}


def _link(data: bytes, start: int, end: int) -> dict:
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(data, start)
    attrs = dict(_attrs(data, start + IFINFOMSG.size, end))
    name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
    mtu = attrs.get(IFLA_MTU)
    return {"index": index, "name": name, "up": bool(flags & IFF_UP),
            "mtu": _U32.unpack(mtu)[0] if mtu else None, "mac": _mac(attrs.get(IFLA_ADDRESS))}


def _addr(data: bytes, start: int, end: int) -> dict | None:
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(data, start)
    if family != socket.AF_INET:
        return None
    attrs = dict(_attrs(data, start + IFADDRMSG.size, end))
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the far end on a point-to-point
    # link, and the same address on every other kind.
    address = _ipv4(attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS)))
    return {"index": index, "address": address, "prefixlen": prefixlen} if address else None


def _route(data: bytes, start: int, end: int) -> dict | None:
    family, dst_len, _src, _tos, table, _proto, _scope, _type, flags = RTMSG.unpack_from(
        data, start)
    attrs = dict(_attrs(data, start + RTMSG.size, end))
    if RTA_TABLE in attrs:  # tables above 255 are only in the attribute
        table = _U32.unpack(attrs[RTA_TABLE])[0]
    if family not in _FAMILY or table != RT_TABLE_MAIN:
        return None
    oif = attrs.get(RTA_OIF)
    return {"family": _FAMILY[family],
            "dst": f"{_ip(attrs.get(RTA_DST), family) or _ANY[family]}/{dst_len}",
            "oif": _U32.unpack(oif)[0] if oif else None,
            "gateway": _ip(attrs.get(RTA_GATEWAY), family), "flags": flags}


def _neighbour(data: bytes, start: int, end: int) -> dict | None:
    family, ifindex, state, _flags, _type = NDMSG.unpack_from(data, start)
    if family not in _FAMILY:
        return None
    attrs = dict(_attrs(data, start + NDMSG.size, end))
    return {"family": _FAMILY[family], "ifindex": ifindex, "ip": _ip(attrs.get(NDA_DST), family),
            "mac": _mac(attrs.get(NDA_LLADDR)), "state": state}
