"""`weft doctor`'s probe of the other hosts' PublicIPs, bounded in time and in number.

Per peer, in parallel: the kernel's route to the PublicIP (netlink `route get`); one ICMP echo
(a raw socket as root, else the kernel's unprivileged ping socket); for vxlan and udp one empty
UDP datagram to the backend's port on a connected socket. A UDP port cannot be "connected",
so the only honest answer is negative: an ICMP port unreachable coming back means nothing
listens there; silence means a listener or a filter. The empty datagram is harmless to the
receiver (weft and the kernel's VXLAN drop it as truncated). When the echo goes unanswered the
neighbour entry of the next hop tells a dead or absent host (ARP unanswered) from filtered ICMP.
A dual-stack peer's PublicIPv6 is probed the same way over IPv6 (ICMPv6 echo, neighbour
discovery for the next hop).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from weft.host.rtnl import NUD_FAILED, NUD_INCOMPLETE
from weft.observe.doctor_checks import PeerProbe
from weft.packet.checksum import inet_checksum

TIMEOUT = 1.0  # seconds per probe; all peers are probed at once
MAX_PEERS = 64  # probed at most; the report says how many were left out
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMPV6_ECHO, ICMPV6_ECHOREPLY = 128, 129
# (socket family, ICMP protocol, echo request, echo reply) by IP version
_ICMP = {4: (socket.AF_INET, socket.IPPROTO_ICMP, ICMP_ECHO, ICMP_ECHOREPLY),
         6: (socket.AF_INET6, socket.IPPROTO_ICMPV6, ICMPV6_ECHO, ICMPV6_ECHOREPLY)}
Address = IPv4Address | IPv6Address
PAYLOAD = b"weft doctor probe"

_ident = iter(range(os.getpid() & 0xFF00, (os.getpid() & 0xFF00) + 0x100))
_ident_lock = threading.Lock()


def probe_all(peers: Sequence[tuple[IPv4Network | IPv6Network, Address]], port: int | None,
              timeout: float = TIMEOUT) -> list[PeerProbe]:
    """Probe every (subnet, PublicIP) in parallel, (IPv6 subnet, PublicIPv6) as well; at most
    MAX_PEERS of them."""
    chosen = list(peers)[:MAX_PEERS]
    if not chosen:
        return []
    with ThreadPoolExecutor(max_workers=min(len(chosen), 32),
                            thread_name_prefix="doctor-probe") as pool:
        return list(pool.map(lambda p: probe(p[0], p[1], port, timeout), chosen))


def probe(subnet: IPv4Network | IPv6Network, ip: Address, port: int | None,
          timeout: float = TIMEOUT) -> PeerProbe:
    route, oif, nexthop, error = _route(ip)
    if route is None:
        return PeerProbe(subnet, ip, None, error, timeout=timeout)
    refused: list[bool] = []
    udp = None
    if port is not None:  # the port probe runs beside the echo: one timeout for both
        udp = threading.Thread(target=lambda: refused.append(_udp_refused(ip, port, timeout)))
        udp.start()
    echo = _echo(ip, timeout)
    if udp is not None:
        udp.join()
    failed = echo is None and _neighbour_failed(nexthop, oif)
    return PeerProbe(subnet, ip, route, echo_ms=echo, neighbour_failed=failed, port=port,
                     port_refused=bool(refused and refused[0]), timeout=timeout)


def _route(ip: Address) -> tuple[str | None, int, Address, str | None]:
    """(description, output ifindex, next hop, error) of the kernel's route to `ip`."""
    try:
        with IPRoute() as ipr:
            msg = ipr.route("get", dst=str(ip))[0]
            oif = msg.get_attr("RTA_OIF") or 0
            links = ipr.get_links(oif) if oif else []
    except NetlinkError as exc:
        return None, 0, ip, os.strerror(exc.code) if exc.code else str(exc)
    name = links[0].get_attr("IFLA_IFNAME") if links else f"ifindex {oif}"
    gateway = msg.get_attr("RTA_GATEWAY")
    nexthop = ip_address(gateway) if gateway else ip
    return (f"{name} via {gateway}" if gateway else name), oif, nexthop, None


def _echo(ip: Address, timeout: float) -> float | None:
    """Round trip of one ICMP (ICMPv6) echo in ms, or None when no reply came in `timeout`."""
    family, proto, request, reply = _ICMP[ip.version]
    try:
        sock = socket.socket(family, socket.SOCK_RAW, proto)
        raw = True
    except PermissionError:
        try:  # needs net.ipv4.ping_group_range (IPv6 too) to include our group
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        except OSError:
            return None
        raw = False
    with _ident_lock:
        ident = next(_ident, 0x7777)
    # ICMPv6's checksum covers a pseudo-header the kernel knows and fills in itself on raw
    # and ping sockets alike; ICMP's is ours to compute.
    header = struct.pack("!BBHHH", request, 0, 0, ident, 1)
    csum = inet_checksum(header + PAYLOAD) if ip.version == 4 else 0
    packet = struct.pack("!BBHHH", request, 0, csum, ident, 1) + PAYLOAD
    start = time.monotonic()
    deadline = start + timeout
    with sock:
        try:
            sock.connect((str(ip), 0))  # a raw socket then only receives from `ip`
            sock.send(packet)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(2048)
                if raw and ip.version == 4:  # raw IPv6 sockets get no IP header
                    data = data[(data[0] & 0x0F) * 4:] if data else b""
                if len(data) < 8:
                    continue
                kind, _, _, got_ident, seq = struct.unpack_from("!BBHHH", data)
                # The ping socket rewrites the identifier; a raw one gets every echo reply.
                if kind == reply and seq == 1 and (got_ident == ident or not raw):
                    return (time.monotonic() - start) * 1000
        except (TimeoutError, OSError):
            return None
    return None


def _udp_refused(ip: Address, port: int, timeout: float) -> bool:
    """True when an ICMP port unreachable answers an empty datagram to ip:port."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((str(ip), port))
            sock.send(b"")
            sock.recv(1)
        except ConnectionRefusedError:
            return True
        except (TimeoutError, OSError):
            return False
    return False


def _neighbour_failed(nexthop: Address, oif: int) -> bool:
    """Whether ARP (neighbour discovery) for the next hop went unanswered (entry FAILED, or
    still INCOMPLETE after the echo's timeout)."""
    if not oif:
        return False
    family = socket.AF_INET6 if nexthop.version == 6 else socket.AF_INET
    with IPRoute() as ipr:
        for msg in ipr.get_neighbours(family=family, ifindex=oif):
            if msg.get_attr("NDA_DST") == str(nexthop):
                return bool(msg["state"] & (NUD_INCOMPLETE | NUD_FAILED))
    return False
