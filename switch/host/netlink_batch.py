"""Many rtnetlink requests in few system calls, each answered on its own: peer programming at scale.

`netlink.py` opens an IPRoute per call and waits for its answer: ~2 ms a request, 16 s for the two
requests of each of 4,096 peers. Here requests are packed into one datagram per chunk, the kernel
handles them in order during that one sendmsg and queues one acknowledgement per request, and the
acks are matched back to their requests by sequence number. A request that fails fails alone: the
kernel goes on with the next message, so one bad peer never stops the others. A key (a peer) is
all or nothing: when one of its requests fails, what its other requests made is deleted again
(one more exchange, for the failing keys only; the success path costs nothing more).

The messages are the ones pyroute2 sends for the same calls in netlink.py (proto static, scope
global, main table, NUD_PERMANENT neighbours), with replace semantics, so both kinds of call
program identical kernel state and either may replace what the other made.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Hashable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from weft.host.rtnl import (
    GONE,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NETLINK_CAP_ACK,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSGERR,
    NLMSGHDR,
    NUD_PERMANENT,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTATTR,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_STATIC,
    SOL_NETLINK,
    nlmsg_align,
)

# Every ack of a chunk is queued before sendmsg returns, one skb (~1 KiB of buffer) each: a chunk
# must fit the receive buffer or acks are lost (ENOBUFS). 256 acks fit well within RCVBUF.
CHUNK = 256
RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module
ACK_TIMEOUT = 5.0  # seconds; the kernel answers within the sendmsg, this only guards a bug


def _attr(kind: int, payload: bytes) -> bytes:
    size = RTATTR.size + len(payload)
    return RTATTR.pack(size, kind) + payload + b"\0" * (nlmsg_align(size) - size)


def _family(addr: IPv4Address | IPv6Address | IPv4Network | IPv6Network) -> int:
    """The address family of a request: the address's own."""
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def _ip(addr: IPv4Address | IPv6Address) -> bytes:
    return addr.packed


class NetlinkBatch:
    """Collects requests tagged with a key (e.g. a peer's subnet); `commit` says which failed.

    Not thread-safe; one batch per programming round.
    """

    def __init__(self) -> None:
        self._requests: list[tuple[int, int, bytes, Hashable, bool]] = []  # type, flags, body..

    def __len__(self) -> int:
        return len(self._requests)

    def neigh_replace(self, key: Hashable, ip: IPv4Address | IPv6Address, mac: bytes, *,
                      ifindex: int) -> None:
        body = NDMSG.pack(_family(ip), ifindex, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, _ip(ip)) + _attr(NDA_LLADDR, bytes(mac))
        self._add(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, key)

    def neigh_delete(self, key: Hashable, ip: IPv4Address | IPv6Address, *, ifindex: int) -> None:
        body = NDMSG.pack(_family(ip), ifindex, 0, 0, 0)
        self._add(RTM_DELNEIGH, 0, body + _attr(NDA_DST, _ip(ip)), key, missing_ok=True)

    def route_replace(self, key: Hashable, dst: IPv4Network | IPv6Network, *, oif: int,
                      gateway: IPv4Address | IPv6Address | None = None,
                      onlink: bool = False) -> None:
        body = self._rtmsg(dst, RTN_UNICAST, RTNH_F_ONLINK if onlink else 0)
        body += _attr(RTA_DST, _ip(dst.network_address)) + _attr(RTA_OIF, struct.pack("=i", oif))
        if gateway is not None:
            body += _attr(RTA_GATEWAY, _ip(gateway))
        self._add(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, key)

    def route_delete(self, key: Hashable, dst: IPv4Network | IPv6Network, *,
                     oif: int | None = None) -> None:
        body = self._rtmsg(dst, 0, 0) + _attr(RTA_DST, _ip(dst.network_address))
        if oif is not None:
            body += _attr(RTA_OIF, struct.pack("=i", oif))
        self._add(RTM_DELROUTE, 0, body, key, missing_ok=True)

    @staticmethod
    def _rtmsg(dst: IPv4Network | IPv6Network, kind: int, flags: int) -> bytes:
        return RTMSG.pack(_family(dst), dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                          RT_SCOPE_UNIVERSE, kind, flags)

    def _add(self, kind: int, flags: int, body: bytes, key: Hashable,
             missing_ok: bool = False) -> None:
        self._requests.append((kind, flags, body, key, missing_ok))

    def commit(self) -> dict[Hashable, str]:
        """Send every request; key -> why its first failed request failed (absent: all fine).

        Requests are handled in the order they were added, so a neighbour added before the route
        that uses it is there when the route is checked. A failed key leaves nothing behind: what
        its other requests created or replaced is deleted (`_undo`).
        """
        failures: dict[Hashable, str] = {}
        if not self._requests:
            return failures
        refused: set[int] = set()  # sequence numbers the kernel answered with an error
        with _socket() as sock:
            _exchange_all(sock, self._requests, 1, failures, refused)
            if failures:
                self._undo(sock, failures, refused)
        self._requests.clear()
        return failures

    def _undo(self, sock: socket.socket, failures: dict[Hashable, str], refused: set[int]) -> None:
        """Delete, latest first, what the requests of failed keys may have made.

        Requests whose answer was lost count as done (deleting what is not there is fine). The
        undo of a create-or-replace is a delete of the same message: a route delete matches its
        destination, device, gateway, type, scope and protocol, so it takes that route only; a
        neighbour delete matches address and device. Deletions have nothing to undo.
        """
        undo = [(_UNDO[kind], 0, body, key, True)
                for seq, (kind, _flags, body, key, _ok) in enumerate(self._requests, start=1)
                if kind in _UNDO and key in failures and seq not in refused]
        undo.reverse()
        # Numbered after the requests: a late ack of theirs cannot pass for an undo's.
        undo_failures: dict[Hashable, str] = {}
        _exchange_all(sock, undo, len(self._requests) + 1, undo_failures, set())
        for key, why in undo_failures.items():
            failures[key] += f"; undoing its other requests failed too: {why}"


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        try:  # root may raise the limit beyond rmem_max; others get what rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.settimeout(ACK_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


def _exchange_all(sock: socket.socket, requests: list, first_seq: int,
                  failures: dict[Hashable, str], refused: set[int]) -> None:
    """Send `requests` a chunk at a time, numbered from `first_seq` on."""
    for start in range(0, len(requests), CHUNK):
        _exchange(sock, requests[start:start + CHUNK], failures, first_seq + start, refused)


def _exchange(sock: socket.socket, chunk: list, failures: dict[Hashable, str], first_seq: int,
              refused: set[int]) -> None:
    """Send one chunk as one datagram and read one ack per request.

    Sequence numbers run on across chunks, so an ack that arrives late (after a timeout) is
    never matched to a request of a later chunk.
    """
    pending: dict[int, tuple[int, Hashable, bool]] = {}
    parts = []
    for seq, (kind, flags, body, key, missing_ok) in enumerate(chunk, start=first_seq):
        parts.append(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind,
                                    NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
        pending[seq] = (kind, key, missing_ok)
    try:
        sock.send(b"".join(parts))
        while pending:
            _read_acks(sock.recv(1 << 16), pending, failures, refused)
    except OSError as exc:  # lost acks or a refused send: the rest is unknown, so failed
        why = f"netlink: {os.strerror(exc.errno) if exc.errno else exc}"
        for _kind, key, _missing_ok in pending.values():
            failures.setdefault(key, why)


def _read_acks(data: bytes, pending: dict, failures: dict[Hashable, str],
               refused: set[int] | None = None) -> None:
    """Match acks to pending requests; a failure is kept per key, its sequence in `refused`."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and seq in pending:
            (code,) = NLMSGERR.unpack_from(data, offset + NLMSGHDR.size)
            request, key, missing_ok = pending.pop(seq)
            if code and not (missing_ok and -code in GONE):
                failures.setdefault(key, f"{_NAMES.get(request, request)}: "
                                         f"{os.strerror(-code)} (errno {-code})")
                if refused is not None:
                    refused.add(seq)
        offset += nlmsg_align(length)


_UNDO = {RTM_NEWROUTE: RTM_DELROUTE, RTM_NEWNEIGH: RTM_DELNEIGH}
_NAMES = {RTM_NEWROUTE: "route replace", RTM_DELROUTE: "route delete",
          RTM_NEWNEIGH: "neighbour replace", RTM_DELNEIGH: "neighbour delete"}
