"""Readable pure-Python twins of the fastpath6 kernels, one packet at a time.

Same inputs as the kernels (the packet, the cfg array, the PeerTable6; the sender's address on
ingress), same verdict, reason and output bytes; `dst_ip` of an egress FORWARD is the peer's
PublicIPv6 as an int. Tests hold kernels and twins equal; when they disagree, this is the
specification.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import numpy as np

from weft.packet.checksum import fold16, sum16
from weft.packet.fastpath6 import MLD_TYPES, ND_FIRST, ND_LAST
from weft.packet.fastpath_twin import StepResult, _drop, _slow
from weft.packet.headers import (
    ETH_DST_AT,
    ETH_HLEN,
    ETH_P_IPV6,
    ETH_TYPE_AT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_DST_AT,
    IPV6_HLEN,
    IPV6_NEXT_AT,
    IPV6_PLEN_AT,
    IPV6_SRC_AT,
    IPV6_VERSION,
    TCP_CSUM_AT,
    TCP_HLEN,
    UDP_CSUM_AT,
    UDP_HLEN,
    UDP_LEN_AT,
    VXLAN_FLAG_I,
    VXLAN_HLEN,
)
from weft.packet.reasons import Reason, Verdict
from weft.packet.table6 import CFG6_LOCAL_INDEX, CFG6_LOCAL_VTEP_MAC, CFG6_MTU, CFG6_VNI, PeerTable6


def _address(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 16], "big")


def _ipv6_total(ip: bytes) -> tuple[Reason, int]:
    if len(ip) < IPV6_HLEN:
        return Reason.TRUNCATED, 0
    if ip[0] >> 4 != IPV6_VERSION:
        return Reason.BAD_IP_HEADER, 0
    total = IPV6_HLEN + struct.unpack_from("!H", ip, IPV6_PLEN_AT)[0]
    return (Reason.TRUNCATED, 0) if total > len(ip) else (Reason.OK, total)


def control_reason(ip: bytes, total: int) -> Reason:
    """What the kernel says on the link about itself (never carried to a peer), else OK."""
    nxt = ip[IPV6_NEXT_AT]
    if nxt == IPPROTO_ICMPV6 and total > IPV6_HLEN:
        kind = ip[IPV6_HLEN]
        if ND_FIRST <= kind <= ND_LAST:
            return Reason.NDP
        if kind in MLD_TYPES:
            return Reason.MLD
    multicast = ip[IPV6_DST_AT] == 0xFF
    if multicast:
        return Reason.MLD if nxt == IPPROTO_HOPOPTS else Reason.MULTICAST
    if any(IPv6Address(ip[at:at + 16]).is_link_local for at in (IPV6_SRC_AT, IPV6_DST_AT)):
        return Reason.LINK_LOCAL
    return Reason.OK


def vxlan6_egress(frame: bytes, cfg: np.ndarray, table: PeerTable6) -> StepResult:
    if len(frame) < ETH_HLEN:
        return _drop(Reason.TRUNCATED, frame)
    if struct.unpack_from("!H", frame, ETH_TYPE_AT)[0] != ETH_P_IPV6:
        return _drop(Reason.NOT_IPV6, frame)
    ip = frame[ETH_HLEN:]
    reason, total = _ipv6_total(ip)
    if reason != Reason.OK:
        return _drop(reason, frame)
    reason = control_reason(ip, total)
    if reason != Reason.OK:
        return _drop(reason, frame)
    if frame[ETH_DST_AT] & 1:
        return _drop(Reason.MULTICAST, frame)
    idx = table.index_of(_address(ip, IPV6_DST_AT))
    if idx < 0:
        return _slow(Reason.OUTSIDE_NETWORK, frame)
    if idx == cfg[CFG6_LOCAL_INDEX]:
        return _drop(Reason.LOCAL_DST, frame)
    if not table.present[idx]:
        return _slow(Reason.NO_ROUTE, frame)
    if total > cfg[CFG6_MTU]:
        return _slow(Reason.FRAG_NEEDED, frame)
    peer_mac = bytes(table.vtep_mac[idx])
    if not any(peer_mac):
        return _drop(Reason.PEER_LOOKUP_MISS, frame)
    vni = int(cfg[CFG6_VNI])
    header = bytes([VXLAN_FLAG_I, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    local_mac = int(cfg[CFG6_LOCAL_VTEP_MAC]).to_bytes(6, "big")
    inner = peer_mac + local_mac + frame[12:ETH_HLEN + total]
    peer = table.public_ip6_of(idx)
    return StepResult(Verdict.FORWARD, Reason.OK, header + inner, idx, int(peer),
                      (("vni", vni), ("peer", str(peer))))


def vxlan6_ingress(payload: bytes, sender: IPv6Address, cfg: np.ndarray,
                   table: PeerTable6) -> StepResult:
    if len(payload) < VXLAN_HLEN + ETH_HLEN:
        return _drop(Reason.TRUNCATED, payload)
    if not payload[0] & VXLAN_FLAG_I:
        return _drop(Reason.BAD_VXLAN_FLAGS, payload)
    if int.from_bytes(payload[4:7], "big") != cfg[CFG6_VNI]:
        return _drop(Reason.WRONG_VNI, payload)
    frame = bytearray(payload[VXLAN_HLEN:])
    if struct.unpack_from("!H", frame, ETH_TYPE_AT)[0] != ETH_P_IPV6:
        return _drop(Reason.NOT_IPV6, payload)
    ip = frame[ETH_HLEN:]
    reason, _total = _ipv6_total(ip)
    if reason != Reason.OK:
        return _drop(reason, payload)
    src = table.index_of(_address(ip, IPV6_SRC_AT))
    local = int(cfg[CFG6_LOCAL_INDEX])
    if src < 0 or src == local or not table.present[src] or table.public_ip6_of(src) != sender:
        return _drop(Reason.SPOOFED_INNER_SRC, payload)
    if local < 0 or table.index_of(_address(ip, IPV6_DST_AT)) != local:
        return _drop(Reason.NOT_FOR_US, payload)
    if int.from_bytes(frame[ETH_DST_AT:ETH_DST_AT + 6], "big") != cfg[CFG6_LOCAL_VTEP_MAC]:
        return _drop(Reason.WRONG_INNER_MAC, payload)
    csum = complete_partial_l4_checksum6(ip)
    frame[ETH_HLEN:] = ip
    fields = (("l4_checksum_completed", csum),) if csum is not None else ()
    return StepResult(Verdict.FORWARD, Reason.OK, bytes(frame), src, 0, fields)


def complete_partial_l4_checksum6(ip: bytearray) -> int | None:
    """The IPv6 form of fastpath_twin.complete_partial_l4_checksum: a TCP/UDP checksum the
    sender's kernel left as the folded pseudo-header sum (CHECKSUM_PARTIAL) is finished, only
    when it does not verify and holds exactly that sum; the value written, or None."""
    nxt = ip[IPV6_NEXT_AT]
    room = struct.unpack_from("!H", ip, IPV6_PLEN_AT)[0]
    l4 = IPV6_HLEN
    if nxt == IPPROTO_TCP and room >= TCP_HLEN:
        l4len, field = room, l4 + TCP_CSUM_AT
    elif nxt == IPPROTO_UDP and room >= UDP_HLEN:
        l4len, field = struct.unpack_from("!H", ip, l4 + UDP_LEN_AT)[0], l4 + UDP_CSUM_AT
        if not UDP_HLEN <= l4len <= room:
            return None
    else:
        return None
    pseudo = fold16(sum16(ip[IPV6_SRC_AT:IPV6_DST_AT + 16]) + nxt + l4len)
    seg = sum16(ip[l4:l4 + l4len])
    if fold16(pseudo + seg) == 0xFFFF or int.from_bytes(ip[field:field + 2], "big") != pseudo:
        return None
    csum = ~fold16(seg) & 0xFFFF or 0xFFFF
    ip[field:field + 2] = csum.to_bytes(2, "big")
    return csum
