"""The IPv6 half's slow path: ICMPv6 errors for what fastpath6 handed up with Verdict.SLOW.

Sans-IO like weft.packet.slowpath: one frame read from the v6 TAP in, the frames to write back
into it out, never raising. As a router does (RFC 4443): Packet Too Big with the device's MTU
for a packet larger than it (IPv6 is never fragmented on the way), Destination Unreachable (no
route) for an address in IPv6Network that no lease covers. No error answers an ICMPv6 error, a
packet from the unspecified, a multicast or a link-local address; errors carry as much of the
packet as fits in the IPv6 minimum MTU. Everything else is a counted drop. scapy loads on first
use.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network

from weft.packet.headers import (
    ETH_HLEN,
    ETH_SRC_AT,
    IPPROTO_ICMPV6,
    IPV6_HLEN,
    IPV6_MIN_MTU,
    IPV6_NEXT_AT,
    IPV6_SRC_AT,
)
from weft.packet.reasons import Reason
from weft.packet.slowpath import SlowResult

ICMPV6_HLEN = 8
HOP_LIMIT = 64
# reason -> (ICMPv6 type, code)
ICMPV6_FOR_REASON: dict[int, tuple[int, int]] = {
    Reason.FRAG_NEEDED: (2, 0),  # packet too big
    Reason.NO_ROUTE: (1, 0),  # no route to destination
}


@dataclass(frozen=True)
class SlowPath6Context:
    local_subnet: IPv6Network  # its network address is on the device: our errors' source
    local_mac: bytes  # the v6 device's VtepMAC
    mtu: int  # the v6 device's MTU, what Packet Too Big reports


def handle_egress6(frame: bytes, reason: int, ctx: SlowPath6Context) -> SlowResult:
    """The ICMPv6 error for one SLOW frame from the v6 TAP, or a counted drop; never raises."""
    try:
        return _answer(bytes(frame), int(reason), ctx)
    except Exception as exc:  # noqa: BLE001 - the datapath must survive any input
        return SlowResult(int(Reason.SLOW_PATH_DROP), (),
                          f"ipv6: undecodable ({type(exc).__name__}: {exc})")


def _answer(frame: bytes, reason: int, ctx: SlowPath6Context) -> SlowResult:
    answer = ICMPV6_FOR_REASON.get(reason)
    if answer is None or len(frame) < ETH_HLEN + IPV6_HLEN:
        return SlowResult(int(Reason.SLOW_PATH_DROP), (), "ipv6: no answer")
    ip = frame[ETH_HLEN:]
    src = IPv6Address(ip[IPV6_SRC_AT:IPV6_SRC_AT + 16])
    if src.is_unspecified or src.is_multicast or src.is_link_local:
        return SlowResult(int(Reason.ICMP_SUPPRESSED), (), f"ipv6: no error to {src}")
    if ip[IPV6_NEXT_AT] == IPPROTO_ICMPV6 and len(ip) > IPV6_HLEN and ip[IPV6_HLEN] < 128:
        return SlowResult(int(Reason.ICMP_SUPPRESSED), (), "ipv6: no error about an error")
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6
    from scapy.layers.l2 import Ether

    kind, code = answer
    quote = bytes(ip[:IPV6_MIN_MTU - IPV6_HLEN - ICMPV6_HLEN])
    error = (ICMPv6PacketTooBig(mtu=ctx.mtu) if kind == 2 else ICMPv6DestUnreach(code=code))
    reply = (Ether(dst=frame[ETH_SRC_AT:ETH_SRC_AT + 6], src=ctx.local_mac, type=0x86DD)
             / IPv6(src=str(ctx.local_subnet.network_address), dst=str(src), hlim=HOP_LIMIT)
             / error / quote)
    name = "packet too big" if kind == 2 else "no route"
    return SlowResult(int(Reason.ICMP_ERROR_SENT), (bytes(reply),),
                      f"ipv6: icmpv6 {name} to {src}")
