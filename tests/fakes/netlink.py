"""FakeNetlink: the netlink socket NetlinkBatch sends through, over a kernel that keeps routes
and neighbours (of both families) and answers every request with the ack a kernel would; it
also stands in for the kernel of a repair pass (dump_kernel, route_replace, neigh_replace), so
a test sees what a backend programmed compared with what it wants kept."""

from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest

from weft.host import netlink_batch as nlbatch
from weft.host import rtnl

Address = IPv4Address | IPv6Address
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
        self.routes: dict[IPv4Network | IPv6Network, tuple[int, Address | None]] = {}
        self.onlink: set[IPv4Network | IPv6Network] = set()  # routes given RTNH_F_ONLINK
        self.neighbours: dict[tuple[int, Address], bytes] = {}
        self.bad_gateways: set[IPv4Address] = set()
        self.bad_macs: set[bytes] = set()
        self.mute: set[IPv4Address] = set()
        self.datagrams = 0
        self.dumps: list[bool] = []  # dump_kernel calls: whether each asked for IPv6
        self.repaired: list = []  # what the repair pass put back, in order
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
            dst = ip_address(attributes(body)[1])  # RTA_DST and NDA_DST are both 1
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
        net = ip_network((dst, body[1]))
        oif = struct.unpack("=i", attrs[rtnl.RTA_OIF])[0]
        gateway = ip_address(attrs[rtnl.RTA_GATEWAY]) if rtnl.RTA_GATEWAY in attrs else None
        if kind == rtnl.RTM_DELROUTE:
            held = self.routes.get(net)
            if held is None or held[0] != oif or gateway not in (None, held[1]):
                return errno.ESRCH
            del self.routes[net]
            return 0
        if gateway in self.bad_gateways:
            return errno.EINVAL
        self.routes[net] = (oif, gateway)
        flags = struct.unpack_from("=I", body, 8)[0]  # struct rtmsg's rtm_flags
        (self.onlink.add if flags & rtnl.RTNH_F_ONLINK else self.onlink.discard)(net)
        return 0

    # -- the kernel of a repair pass (weft.host.reconcile.Reconciler's `kernel`) --------------
    def dump_kernel(self, ipv6: bool = False) -> dict:
        """What netlink_dump.dump_kernel would read from this kernel (no links or addresses:
        it holds none); IPv6 routes and neighbours only when asked for, as there."""
        def wanted(address: IPv4Address | IPv6Address | IPv4Network | IPv6Network) -> bool:
            return ipv6 or address.version == 4
        self.dumps.append(ipv6)
        return {
            "links": [], "addrs": [],
            "routes": [{"family": net.version, "dst": str(net), "oif": oif,
                        "gateway": str(gateway) if gateway else None,
                        "flags": rtnl.RTNH_F_ONLINK if net in self.onlink else 0}
                       for net, (oif, gateway) in self.routes.items() if wanted(net)],
            "neighbours": [{"family": ip.version, "ifindex": ifindex, "ip": str(ip),
                            "mac": mac.hex(":"), "state": rtnl.NUD_PERMANENT}
                           for (ifindex, ip), mac in self.neighbours.items() if wanted(ip)],
        }

    def route_replace(self, dst: IPv4Network | IPv6Network, *, oif: int,
                      gateway: Address | None = None, onlink: bool = False) -> None:
        self.repaired.append(dst)
        self.routes[dst] = (oif, gateway)
        (self.onlink.add if onlink else self.onlink.discard)(dst)

    def neigh_replace(self, ip: Address, mac: str, *, ifindex: int) -> None:
        self.repaired.append(ip)
        self.neighbours[(ifindex, ip)] = bytes.fromhex(mac.replace(":", ""))
