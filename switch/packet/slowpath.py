"""The scapy slow path: answers what the fast path handed up with Verdict.SLOW.

Sans-IO: `handle_egress(packet, reason, ctx)` maps one frame (TAP, vxlan) or packet (TUN, udp)
read from our device to the frames/packets to write back into that same device, plus the final
counted reason and a one-line summary. No sockets, no clock, and it never raises: malformed
input is a counted drop, so one bad packet cannot stop the datapath.

Policy choices:
- ARP who-has X on the TAP: X in a leased peer subnet -> is-at that peer's VtepMAC (what the
  permanent neighbour entries of flannel also say). X in the cluster network but covered by no
  lease -> is-at UNREACHABLE_MAC, so the kernel sends the IP packet into the TAP, the fast path
  says NO_ROUTE and we answer ICMP net unreachable instead of the sender waiting on an ARP
  timeout. X outside the network or in our own subnet -> no answer.
- IPv6: weft carries IPv4 only, so everything IPv6 is dropped and counted as IPV6, neighbour
  solicitations included: the kernel sees the address as unresolved, which is the truth. The
  summary names the ND/MLD message for traces.
- ICMP errors as a router sends them (RFC 792, 1122, 1191, 1812); see `_icmp_error`.

scapy is imported on first use, not with this module: it costs ~50 MB of RSS and a quarter of a
second at start, and a daemon whose pods never ARP for an unleased address or hit an ICMP case
never needs it. The per-call imports after the first are dictionary lookups.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from weft.packet.checksum import inet_checksum
from weft.packet.encap import ENCAPS, Encap
from weft.packet.headers import (
    ETH_ALEN,
    ETH_DST_AT,
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_SRC_AT,
    ETH_TYPE_AT,
    IPV4_DST_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOT_LEN_AT,
)
from weft.packet.reasons import Reason, reason_name

# Answer for "who-has X" when X is in the network but no lease covers it. Locally administered
# unicast (0x02 in the first octet) with "weft" in ASCII, so it cannot be a vendor MAC and is
# recognisable in `ip neigh` and traces. The fast path rewrites the destination MAC of every
# frame it forwards, so the value only has to get the packet into the TAP. A distinct MAC rather
# than our own makes "resolved while there was no lease" visible; once a lease appears the
# kernel's re-probe of the stale entry is answered with the real VtepMAC.
UNREACHABLE_MAC = bytes.fromhex("027765667400")

BROADCAST_MAC = b"\xff" * ETH_ALEN

ICMP_TTL = 64
IPTOS_PREC_INTERNETCONTROL = 0xC0  # precedence Linux gives its ICMP errors (RFC 1812 4.3.2.5)
ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})  # unreachable, quench, redirect, time, param

# reason -> (ICMP type, code): how a router reports each fast-path verdict
ICMP_FOR_REASON: dict[int, tuple[int, int]] = {
    Reason.NO_ROUTE: (3, 0),  # net unreachable
    Reason.OUTSIDE_NETWORK: (3, 0),
    Reason.TTL_EXCEEDED: (11, 0),  # time exceeded in transit
    Reason.FRAG_NEEDED: (3, 4),  # fragmentation needed and DF set, with next-hop MTU
}

_ICMP_NAMES = {(3, 0): "net unreachable", (11, 0): "time exceeded", (3, 4): "frag needed"}

_MULTICAST_V4 = IPv4Network("224.0.0.0/4")
# Sources that are not a unique host (RFC 1812 4.3.2.7): never the target of an ICMP error.
_NOT_A_HOST_V4 = (IPv4Network("0.0.0.0/8"), IPv4Network("127.0.0.0/8"), _MULTICAST_V4,
                  IPv4Network("240.0.0.0/4"))

MacLookup = Callable[[IPv4Address], bytes | None]


@dataclass(frozen=True)
class SlowPathContext:
    """What the slow path knows about this host; the control plane builds a new one per change.

    `peer_mac_for(ip)` gives the VtepMAC of the peer whose lease covers ip (None if no lease);
    `unreachable_mac`
    is the ARP answer for unleased addresses in the network (set it to local_mac to reuse ours).
    """

    backend: str  # a backend type of weft.packet.encap.ENCAPS
    local_subnet: IPv4Network
    network: IPv4Network
    local_mac: bytes  # our TAP/VTEP MAC, vxlan only
    overlay_mtu: int
    peer_mac_for: MacLookup
    unreachable_mac: bytes = UNREACHABLE_MAC
    # the backend's encapsulation, looked up once: whether the device carries frames or packets
    encap: Encap = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        encap = ENCAPS.get(self.backend)
        if encap is None:
            raise ValueError(f"slow path: unknown backend {self.backend!r}")
        object.__setattr__(self, "encap", encap)  # frozen: set once, here
        if len(self.unreachable_mac) != 6:
            raise ValueError("slow path: unreachable_mac must be 6 bytes")

    @property
    def tunnel_address(self) -> IPv4Address:
        """Our device address, the source of our ICMP errors (as in flannel)."""
        return self.local_subnet.network_address


@dataclass(frozen=True)
class SlowResult:
    """`writes` go back INTO the device (TAP: Ethernet frames, TUN: IPv4 packets)."""

    reason: int
    writes: tuple[bytes, ...]
    summary: str


def handle_egress(packet: bytes, reason: int, ctx: SlowPathContext) -> SlowResult:
    """Answer or drop one packet the fast path sent up from our device; never raises."""
    try:
        data = bytes(packet)
        if ctx.encap.tap:
            return _from_tap(data, int(reason), ctx)
        return _from_tun(data, int(reason), ctx)
    except Exception as exc:  # the datapath must survive any input, bugs included
        return _drop(Reason.SLOW_PATH_DROP, f"undecodable ({type(exc).__name__}: {exc})")


def describe(packet: bytes, linktype: str) -> str:
    """One-line scapy summary for people; linktype "ether" (TAP) or "ip"/"raw" (TUN)."""
    try:
        data = bytes(packet)
        kind = _LINKTYPES.get(str(linktype).lower())
        if kind is None:
            return f"{len(data)} bytes, unsupported link type {linktype!r}"
        if not data:
            return "empty packet"
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether

        if kind == "ether":
            pkt = Ether(data)
        elif data[0] >> 4 == 4:
            pkt = IP(data)
        elif data[0] >> 4 == 6:
            pkt = IPv6(data)
        else:
            return f"{len(data)} bytes, not IP (version {data[0] >> 4})"
        return " ".join(pkt.summary().split())
    except Exception as exc:  # a trace line must never break the trace
        return f"undecodable {type(packet).__name__} ({type(exc).__name__})"


# Link type names people and tools use; a backend's is its Encap.device_link.
_LINKTYPES = {"ether": "ether", "ethernet": "ether", "en10mb": "ether", "tap": "ether",
              "ip": "ip", "ipv4": "ip", "raw": "ip", "tun": "ip"}


# ---- dispatch ------------------------------------------------------------------------------


def _drop(reason: int, summary: str) -> SlowResult:
    return SlowResult(int(reason), (), f"drop {reason_name(int(reason))}: {summary}")


def _from_tap(frame: bytes, reason: int, ctx: SlowPathContext) -> SlowResult:
    if len(frame) < ETH_HLEN:
        return _drop(Reason.TRUNCATED, f"{len(frame)}-byte frame")
    (ethertype,) = struct.unpack_from("!H", frame, ETH_TYPE_AT)
    if ethertype == ETH_P_ARP:
        return _arp(frame, ctx)
    if ethertype == ETH_P_IPV6:
        return _ipv6(frame)
    if ethertype != ETH_P_IP:
        return _drop(Reason.UNKNOWN_ETHERTYPE, f"ethertype 0x{ethertype:04x}")
    dst_mac = frame[ETH_DST_AT : ETH_DST_AT + ETH_ALEN]
    src_mac = frame[ETH_SRC_AT : ETH_SRC_AT + ETH_ALEN]
    if dst_mac == BROADCAST_MAC:
        return _drop(Reason.BROADCAST, "IPv4 to the Ethernet broadcast address")
    if dst_mac[0] & 1:
        return _drop(Reason.MULTICAST, f"IPv4 to Ethernet multicast {_mac(dst_mac)}")
    result = _ipv4(frame[ETH_HLEN:], reason, ctx)
    if not result.writes:
        return result
    if src_mac[0] & 1:  # we would answer to a group address: not a host, stay quiet
        return _drop(Reason.ICMP_SUPPRESSED, f"source MAC {_mac(src_mac)} is not unicast")
    # Swap the MACs: the kernel accepts a frame addressed to the TAP's MAC, and the source is
    # the "next hop" it sent the offending frame to.
    head = src_mac + dst_mac + struct.pack("!H", ETH_P_IP)
    return SlowResult(result.reason, tuple(head + w for w in result.writes), result.summary)


def _from_tun(packet: bytes, reason: int, ctx: SlowPathContext) -> SlowResult:
    if not packet:
        return _drop(Reason.TRUNCATED, "empty packet")
    version = packet[0] >> 4
    if version == 6:
        return _drop(Reason.IPV6, "IPv6 on the TUN (no IPv6 datapath)")
    if version != 4:
        return _drop(Reason.NOT_IPV4, f"IP version {version}")
    return _ipv4(packet, reason, ctx)


# ---- IPv4: ICMP errors ---------------------------------------------------------------------


def _ipv4(ip: bytes, reason: int, ctx: SlowPathContext) -> SlowResult:
    if len(ip) < IPV4_HLEN:
        return _drop(Reason.TRUNCATED, f"{len(ip)}-byte IPv4 header")
    ihl = (ip[0] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", ip, IPV4_TOT_LEN_AT)
    if ip[0] >> 4 != 4 or ihl < IPV4_HLEN or total < ihl:
        return _drop(Reason.BAD_IP_HEADER, f"version/IHL/length {ip[0]:#04x}/{total}")
    if total > len(ip):
        return _drop(Reason.TRUNCATED, f"IPv4 length {total} > {len(ip)} bytes")
    if inet_checksum(ip[:ihl]) != 0:  # a router silently drops these (RFC 1812 5.2.2)
        return _drop(Reason.BAD_IP_HEADER, "bad IPv4 header checksum")
    src = IPv4Address(ip[IPV4_SRC_AT : IPV4_SRC_AT + 4])
    dst = IPv4Address(ip[IPV4_DST_AT : IPV4_DST_AT + 4])
    flow = f"{src} > {dst}"
    if _is_broadcast(dst, ctx):
        return _drop(Reason.BROADCAST, f"{flow}: IPv4 broadcast")
    if dst in _MULTICAST_V4:
        return _drop(Reason.MULTICAST, f"{flow}: IPv4 multicast")
    kind = ICMP_FOR_REASON.get(reason)
    if kind is None:
        return _drop(Reason.SLOW_PATH_DROP, f"{flow}: nothing answers {reason_name(reason)}")
    why_not = _why_no_icmp_error(ip, ihl, total, src)
    if why_not:
        return _drop(Reason.ICMP_SUPPRESSED, f"{flow}: {reason_name(reason)}, no ICMP: {why_not}")
    icmp_type, code = kind
    error = _icmp_error(ip[: min(total, ihl + 8)], icmp_type, code, ctx)
    what = _ICMP_NAMES[kind] + (f" mtu {ctx.overlay_mtu}" if kind == (3, 4) else "")
    summary = f"{flow} {reason_name(reason)} -> ICMP {what} {ctx.tunnel_address} > {src}"
    return SlowResult(int(Reason.ICMP_ERROR_SENT), (error,), summary)


def _is_broadcast(dst: IPv4Address, ctx: SlowPathContext) -> bool:
    """Limited, network or subnet-directed broadcast (subnets are SubnetLen wide)."""
    if dst == IPv4Address("255.255.255.255") or dst == ctx.network.broadcast_address:
        return True
    if dst not in ctx.network:
        return False
    host_bits = 32 - ctx.local_subnet.prefixlen
    mask = (1 << host_bits) - 1
    return host_bits >= 2 and int(dst) & mask == mask


def _why_no_icmp_error(ip: bytes, ihl: int, total: int, src: IPv4Address) -> str:
    """RFC 1122 3.2.2 / RFC 1812 4.3.2.7: the cases where a router stays silent."""
    (frag,) = struct.unpack_from("!H", ip, IPV4_FRAG_AT)
    if frag & 0x1FFF:
        return "non-first fragment"
    if any(src in net for net in _NOT_A_HOST_V4):
        return f"source {src} is not a unique host"
    if ip[IPV4_PROTO_AT] == 1:  # ICMP
        if total <= ihl:
            return "ICMP without a type"
        if ip[ihl] in ICMP_ERROR_TYPES:
            return "offending packet is an ICMP error"
    return ""


def _icmp_error(quote: bytes, icmp_type: int, code: int, ctx: SlowPathContext) -> bytes:
    """IPv4 + ICMP error quoting the offending header and 8 bytes of its payload (RFC 792).

    Source is our tunnel address, as flannel's udp proxy does; TTL 64; TOS keeps the offending
    packet's TOS bits with internetwork-control precedence (RFC 1812, as Linux does); ID 0 and
    DF clear, since there is no per-host counter in a pure function and the packet is small.
    """
    from scapy.layers.inet import ICMP, IP
    from scapy.packet import Raw

    if (icmp_type, code) == (3, 4):  # RFC 1191: unused(16) + next-hop MTU(16)
        icmp = ICMP(type=icmp_type, code=code, nexthopmtu=ctx.overlay_mtu & 0xFFFF)
    else:
        icmp = ICMP(type=icmp_type, code=code)
    tos = (quote[1] & 0x1E) | IPTOS_PREC_INTERNETCONTROL
    pkt = IP(src=str(ctx.tunnel_address), dst=str(IPv4Address(quote[12:16])), ttl=ICMP_TTL,
             tos=tos, id=0, flags=0, proto=1) / icmp / Raw(quote)
    return bytes(pkt)


# ---- ARP -----------------------------------------------------------------------------------


def _arp(frame: bytes, ctx: SlowPathContext) -> SlowResult:
    body = frame[ETH_HLEN:]
    if len(body) < 28:
        return _drop(Reason.TRUNCATED, f"{len(body)}-byte ARP")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", body)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return _drop(Reason.SLOW_PATH_DROP, f"ARP for hw {htype}/proto 0x{ptype:04x}")
    sha, spa, tpa = body[8:14], IPv4Address(body[14:18]), IPv4Address(body[24:28])
    question = f"ARP who-has {tpa} tell {spa}"
    if op != 1:
        return _drop(Reason.SLOW_PATH_DROP, f"ARP op {op} from {spa}")
    if sha[0] & 1 or not any(sha):
        return _drop(Reason.SLOW_PATH_DROP, f"{question}: sender MAC {_mac(sha)} not unicast")
    if spa == tpa or int(spa) == 0:  # gratuitous ARP / address probe: not a question to us
        return _drop(Reason.SLOW_PATH_DROP, f"{question}: gratuitous or probe")
    if tpa not in ctx.network:
        return _drop(Reason.OUTSIDE_NETWORK, f"{question}: outside {ctx.network}")
    if tpa in ctx.local_subnet:
        return _drop(Reason.LOCAL_DST, f"{question}: in our subnet {ctx.local_subnet}")
    peer_mac = ctx.peer_mac_for(tpa)
    if peer_mac is None:
        answer, whose = ctx.unreachable_mac, "no lease, unreachable MAC"
    elif len(peer_mac) != 6:
        return _drop(Reason.PEER_LOOKUP_MISS, f"{question}: peer MAC {peer_mac!r} unusable")
    else:
        answer, whose = bytes(peer_mac), "peer VtepMAC"
    from scapy.layers.l2 import ARP, Ether

    reply = Ether(dst=_mac(sha), src=_mac(answer), type=ETH_P_ARP) / ARP(
        hwtype=1, ptype=ETH_P_IP, hwlen=6, plen=4, op=2,
        hwsrc=_mac(answer), psrc=str(tpa), hwdst=_mac(sha), pdst=str(spa))
    summary = f"{question} -> is-at {_mac(answer)} ({whose})"
    return SlowResult(int(Reason.ARP_REPLIED), (bytes(reply),), summary)


# ---- IPv6: dropped, named ------------------------------------------------------------------

_ND_NAMES = {130: "MLD query", 131: "MLD report", 132: "MLD done", 133: "router solicitation",
             134: "router advertisement", 135: "neighbour solicitation",
             136: "neighbour advertisement", 137: "redirect", 143: "MLDv2 report"}


def _ipv6(frame: bytes) -> SlowResult:
    """Every IPv6 frame is dropped as IPV6; the summary says what it was."""
    if len(frame) < ETH_HLEN + 40:
        return _drop(Reason.TRUNCATED, f"{len(frame)}-byte IPv6 frame")
    ip6 = frame[ETH_HLEN:]
    (plen,) = struct.unpack_from("!H", ip6, 4)
    nxt = ip6[6]
    flow = f"IPv6 {IPv6Address(ip6[8:24])} > {IPv6Address(ip6[24:40])}"
    if len(ip6) < 40 + plen:
        return _drop(Reason.TRUNCATED, f"{flow}: payload length {plen} > {len(ip6) - 40}")
    if nxt == 0:  # hop-by-hop options: MLD reports carry router alert
        return _drop(Reason.IPV6, f"{flow}: hop-by-hop (MLD), no IPv6 datapath")
    if nxt != 58 or len(ip6) < 41:
        return _drop(Reason.IPV6, f"{flow}: next header {nxt}, no IPv6 datapath")
    name = _ND_NAMES.get(ip6[40], f"ICMPv6 type {ip6[40]}")
    return _drop(Reason.IPV6, f"{flow}: {name}, no IPv6 datapath")


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
