"""FakeNetlink: the netlink socket NetlinkBatch sends through, over a kernel that keeps routes
and neighbours and answers every request with the ack a kernel would."""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.host import netlink_batch as nlbatch
from weft.host import rtnl

RTMSG_LEN = 12  # struct rtmsg and struct ndmsg are both 12 bytes; attributes follow


def attributes(body: bytes, offset: int = RTMSG_LEN) -> dict[int, bytes]:
    """A request's rtattrs by type, read from `offset` on."""
    out = {}
    while offset + 4 <= len(body):
        size, kind = struct.unpack_from("=HH", body, offset)
        out[kind] = body[offset + 4:offset + size]
        offset += (size + 3) & ~3
    return out


def ack(seq: int, code: int) -> bytes:
    """The kernel's NLMSG_ERROR answer to request `seq`: 0 done, else the errno refused."""
    body = struct.pack("=i", -code) + rtnl.NLMSGHDR.pack(16, 0, 0, seq, 0)
    return rtnl.NLMSGHDR.pack(16 + len(body), rtnl.NLMSG_ERROR, 0, seq, 0) + body


class FakeNetlink:
    """The socket of NetlinkBatch over a kernel that only holds routes and neighbours.

    Refuses (EINVAL) routes via `bad_gateways` and neighbours to `bad_macs`, as the kernel
    refuses a gateway that is a local address or a link-layer address of the wrong length;
    leaves unanswered the requests for `mute` destinations (an ack lost). `datagrams` counts
    the sends: a batch is meant to need few.
    """

    def __init__(self) -> None:
        self.routes: dict[IPv4Network, tuple[int, IPv4Address | None]] = {}
        self.neighbours: dict[tuple[int, IPv4Address], bytes] = {}
        self.bad_gateways: set[IPv4Address] = set()
        self.bad_macs: set[bytes] = set()
        self.mute: set[IPv4Address] = set()
        self.datagrams = 0
        self._acks: list[bytes] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNetlink:
        """Every NetlinkBatch of the test talks to this kernel."""
        monkeypatch.setattr(nlbatch, "_socket", lambda: self)
        return self

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def send(self, data: bytes) -> int:
        self.datagrams += 1
        offset = 0
        while offset < len(data):
            length, kind, _flags, seq, _pid = rtnl.NLMSGHDR.unpack_from(data, offset)
            body = data[offset + 16:offset + length]
            dst = IPv4Address(attributes(body)[1])  # RTA_DST and NDA_DST are both 1
            code = self._apply(kind, body, dst)
            if dst not in self.mute:
                self._acks.append(ack(seq, code))
            offset += length
        return len(data)

    def recv(self, _size: int) -> bytes:
        if not self._acks:
            raise TimeoutError("timed out")
        return self._acks.pop(0)

    def _apply(self, kind: int, body: bytes, dst: IPv4Address) -> int:
        attrs = attributes(body)
        if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
            key = (struct.unpack_from("=i", body, 4)[0], dst)
            if kind == rtnl.RTM_DELNEIGH:
                return 0 if self.neighbours.pop(key, None) else errno.ENOENT
            mac = attrs[rtnl.NDA_LLADDR]
            if mac in self.bad_macs:
                return errno.EINVAL
            self.neighbours[key] = mac
            return 0
        net = IPv4Network((dst, body[1]))
        oif = struct.unpack("=i", attrs[rtnl.RTA_OIF])[0]
        gateway = IPv4Address(attrs[rtnl.RTA_GATEWAY]) if rtnl.RTA_GATEWAY in attrs else None
        if kind == rtnl.RTM_DELROUTE:
            held = self.routes.get(net)
            if held is None or held[0] != oif or gateway not in (None, held[1]):
                return errno.ESRCH
            del self.routes[net]
            return 0
        if gateway in self.bad_gateways:
            return errno.EINVAL
        self.routes[net] = (oif, gateway)
        return 0
