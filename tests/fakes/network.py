"""LoopbackTransport: the sockets of one in-process host, on a loopback address of its own.

All of 127.0.0.0/8 is local on Linux, so hosts at 127.0.0.1, 127.0.0.2, ... bind the same port
side by side and exchange real UDP datagrams without root or namespaces.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from fakes.packets import internet_checksum
from weft.drivers.pyloop import FAMILIES
from weft.packet.encap import Encap, as_encap
from weft.packet.headers import IPV4_UDP_HLEN

WAIT = 10.0  # seconds a blocking receive waits before the test fails instead of hanging


def host_address(k: int) -> str:
    """The loopback address of in-process host k (1, 2, ...)."""
    return f"127.0.0.{k}"


def udp_socket(address: str, port: int = 0) -> socket.socket:
    """A UDP socket bound to address:port whose blocking receives give up after WAIT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(WAIT)
    return sock


def free_port(*addresses: str) -> int:
    """A UDP port free on every one of `addresses` (host 1's when none are given)."""
    addresses = addresses or (host_address(1),)
    for _ in range(20):
        with udp_socket(addresses[0]) as first:
            port = first.getsockname()[1]
            try:
                for address in addresses[1:]:
                    udp_socket(address, port).close()
            except OSError:
                continue
            return port
    raise OSError(f"no UDP port free on all of {addresses}")


class LoopbackTransport:
    """What weft.drivers.pyloop.Transport is to a driver (rx, tx, send, close), on loopback.

    It decides by the encapsulation's row (weft.packet.encap), as Transport does. A step that
    leaves the outer headers to the socket (udp: not builds_outer): one socket bound to
    (address, port) receives and sends, flannel's datagram from port to port, exactly as
    Transport does. A step that builds them (vxlan): the pipeline writes the whole outer
    IPv4/UDP header and Transport sends it through a raw socket, which needs root; here `send`
    checks that header as the path would (lengths, the IPv4 checksum, the UDP checksum when set, our
    own address as the source) and sends the UDP payload from that source to the header's
    destination address and port, where the peer's socket receives it as from the kernel's
    VXLAN. What the path would drop is dropped, and why is kept in `refused`; what it
    carried is kept in `carried` (UDP payloads, as the peer receives them).
    """

    def __init__(self, kind: Encap | str, address: str, port: int) -> None:
        self.encap = as_encap(kind)
        self.family = FAMILIES[self.encap.outer]  # how rows hold addresses, as Transport
        self.address = address
        self.port = port
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind((address, port))
        self.rx.setblocking(False)
        if not self.encap.builds_outer:
            self.tx = self.rx
        else:
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.tx.bind((address, 0))
        self.refused: list[str] = []
        self.carried: list[bytes] = []

    def send(self, data, dst_ip: int) -> None:
        dst = str(IPv4Address(dst_ip))
        packet = bytes(data)
        if not self.encap.builds_outer:
            self.carried.append(packet)
            self.tx.sendto(packet, (dst, self.port))
            return
        problem = self._outer_problem(packet, dst)
        if problem:
            self.refused.append(problem)
            return
        payload = packet[IPV4_UDP_HLEN:]
        self.carried.append(payload)
        self.tx.sendto(payload, (dst, struct.unpack_from("!H", packet, 22)[0]))

    def _outer_problem(self, packet: bytes, dst: str) -> str:
        """Why the outer IPv4/UDP header would not get this datagram delivered ("" if fine)."""
        if len(packet) < 28 or packet[0] != 0x45:
            return f"not an IPv4 header without options: {packet[:20].hex()}"
        total, ttl, proto = struct.unpack_from("!H", packet, 2)[0], packet[8], packet[9]
        src, to = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        udp_len, udp_sum = struct.unpack_from("!HH", packet, 24)
        pseudo = packet[12:20] + struct.pack("!HH", 17, len(packet) - 20)
        checks = [
            (total == len(packet), f"IPv4 total length {total}, {len(packet)} bytes sent"),
            (internet_checksum(packet[:20]) == 0, "bad IPv4 header checksum"),
            (ttl > 0 and proto == 17, f"TTL {ttl}, protocol {proto}"),
            (src == self.address, f"outer source {src}, this host is {self.address}"),
            (to == dst, f"outer destination {to}, sent to {dst}"),
            (udp_len == len(packet) - 20, f"UDP length {udp_len} in {len(packet) - 20} bytes"),
            (udp_sum == 0 or internet_checksum(pseudo + packet[20:]) == 0, "bad UDP checksum"),
        ]
        return "; ".join(why for ok, why in checks if not ok)

    def close(self) -> None:
        self.rx.close()
        if self.tx is not self.rx:
            self.tx.close()
