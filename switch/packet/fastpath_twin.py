"""Readable pure-Python twins of the fastpath kernels, one packet at a time.

Each twin takes the same inputs as its kernel (packet bytes, the `cfg` array, the PeerTable)
and returns the same verdict, reason and output bytes, plus the header fields it wrote, so
`weft trace` can explain a packet step by step. TWIN_STEPS gives an encapsulation's two twins
by its row (weft.packet.encap), called alike. Tests hold twins and kernels byte-for-byte
equal; when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import NamedTuple

import numpy as np

from weft.packet.checksum import fold16, inet_checksum, sum16
from weft.packet.encap import UDP, VXLAN, Encap
from weft.packet.fastpath import FLOW_SEED, OUTER_TTL, SRC_PORT_MAX, SRC_PORT_MIN
from weft.packet.headers import (
    ETH_ALEN,
    ETH_DST_AT,
    ETH_HLEN,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    ETH_SRC_AT,
    ETH_TYPE_AT,
    IP_DF,
    IP_MF_OFFSET,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_ADDRS,
    IPV4_CSUM_AT,
    IPV4_DST_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_MAX_LEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOT_LEN_AT,
    IPV4_TTL_AT,
    IPV4_VER_IHL,
    L4_PORTS_LEN,
    L4_SPORT_AT,
    TCP_CSUM_AT,
    TCP_HLEN,
    UDP_CSUM_AT,
    UDP_HLEN,
    UDP_LEN_AT,
    VXLAN_ENCAP,
    VXLAN_FLAG_I,
    VXLAN_FLAGS_AT,
    VXLAN_HLEN,
    VXLAN_VNI_AT,
)
from weft.packet.reasons import Reason, Verdict
from weft.packet.table import (
    CFG_LOCAL_INDEX,
    CFG_LOCAL_PUBLIC_IP,
    CFG_LOCAL_VTEP_MAC,
    CFG_MTU,
    CFG_NETMASK,
    CFG_NETWORK,
    CFG_PORT,
    CFG_SUBNET_SHIFT,
    CFG_VNI,
    PeerTable,
)

BROADCAST_MAC = b"\xff" * ETH_ALEN
MASK32 = 0xFFFFFFFF


def _be16(data: bytes, at: int) -> int:
    return struct.unpack_from("!H", data, at)[0]


def _be32(data: bytes, at: int) -> int:
    return struct.unpack_from("!I", data, at)[0]


@dataclass(frozen=True)
class StepResult:
    """What one pipeline step did to one packet.

    `out` is the packet to send/write on FORWARD and the unchanged input otherwise; `dst_ip` is
    the peer PublicIP to send to (egress FORWARD only, else 0); `peer_index` the subnet number of
    the peer involved (-1 if none); `fields` the header fields written, in wire order.
    """

    verdict: Verdict
    reason: Reason
    out: bytes
    peer_index: int = -1
    dst_ip: int = 0
    fields: tuple[tuple[str, int | str], ...] = ()


def _drop(reason: Reason, data: bytes) -> StepResult:
    return StepResult(Verdict.DROP, reason, bytes(data))


def _slow(reason: Reason, data: bytes) -> StepResult:
    return StepResult(Verdict.SLOW, reason, bytes(data))


# ---- checksums and hashes -------------------------------------------------------------------


# One Python Internet checksum (weft.packet.checksum); IPv4 headers use it as they are.
ipv4_checksum = inet_checksum


def complete_partial_l4_checksum(ip: bytearray) -> int | None:
    """Finish a TCP/UDP checksum left in CHECKSUM_PARTIAL form; the value written, or None.

    A kernel VXLAN device with tx-checksum offload (flannel.1 as flannel leaves it) sends the
    inner segment CHECKSUM_PARTIAL: __tcp_v4_send_check()/udp4_hwcsum() pre-fill the checksum
    field with ~csum_tcpudp_magic(src, dst, len, proto, 0), the folded, NOT complemented
    pseudo-header sum, for a NIC to finish. Over veth and bridges nothing does, and a userspace
    socket receives no checksum metadata, so the pod's kernel would drop the frame as corrupt.
    We finish it as the NIC (or skb_checksum_help) would, but only when the checksum does not
    verify AND the field holds exactly that pseudo sum, the only form Linux pre-fills; any other
    bad checksum stays, so real corruption is still dropped by the receiver. `ip` is a whole,
    header-checked IPv4 packet; it is modified in place.
    """
    if _be16(ip, IPV4_FRAG_AT) & IP_MF_OFFSET:  # a fragment: the segment is not all here
        return None
    ihl = (ip[0] & 0x0F) * 4
    room = _be16(ip, IPV4_TOT_LEN_AT) - ihl
    proto = ip[IPV4_PROTO_AT]
    if proto == IPPROTO_TCP and room >= TCP_HLEN:
        l4len, field = room, ihl + TCP_CSUM_AT
    elif proto == IPPROTO_UDP and room >= UDP_HLEN:
        l4len, field = _be16(ip, ihl + UDP_LEN_AT), ihl + UDP_CSUM_AT
        if not UDP_HLEN <= l4len <= room:  # the pseudo-header and the sum use UDP's own length
            return None
        if ip[field : field + 2] == b"\0\0":  # no checksum sent (RFC 768)
            return None
    else:
        return None
    pseudo = fold16(sum16(ip[IPV4_ADDRS]) + proto + l4len)
    seg = sum16(ip[ihl : ihl + l4len])
    if fold16(pseudo + seg) == 0xFFFF:  # verifies already
        return None
    if int.from_bytes(ip[field : field + 2], "big") != pseudo:
        return None
    # The field holds the pseudo sum, so the segment sum is the whole sum, as the NIC computes it
    # from csum_start; 0 goes out as 0xFFFF like skb_checksum_help (0 means "none" for UDP).
    csum = ~fold16(seg) & 0xFFFF or 0xFFFF
    ip[field : field + 2] = csum.to_bytes(2, "big")
    return csum


def ttl_decrement_checksum(csum: int, ttl: int, proto: int) -> int:
    """New header checksum after TTL -> TTL-1, by RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m').

    m is the 16-bit word holding TTL and protocol; no need to re-read the whole header.
    """
    old_word = (ttl << 8) | proto
    new_word = ((ttl - 1) << 8) | proto
    return ~fold16((~csum & 0xFFFF) + (~old_word & 0xFFFF) + new_word) & 0xFFFF


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & MASK32


def _mix(h: int, word: int) -> int:
    k = _rotl32((word * 0xCC9E2D51) & MASK32, 15) * 0x1B873593 & MASK32
    h = _rotl32(h ^ k, 13)
    return (h * 5 + 0xE6546B64) & MASK32


def flow_hash(src: int, dst: int, proto: int, sport: int = 0, dport: int = 0) -> int:
    """Stable 32-bit hash of an inner flow (murmur3 rounds over src, dst, proto, ports)."""
    h = FLOW_SEED
    for word in (src, dst, proto, (sport << 16) | dport):
        h = _mix(h, word)
    h ^= 16
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & MASK32
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def flow_src_port(hash32: int) -> int:
    """Map a flow hash into the source-port range the way Linux udp_flow_src_port() does."""
    return ((hash32 * (SRC_PORT_MAX - SRC_PORT_MIN)) >> 32) + SRC_PORT_MIN


def inner_flow_hash(ip: bytes) -> int:
    """Flow hash of a valid IPv4 packet; ports only for unfragmented TCP/UDP/SCTP."""
    ihl = (ip[0] & 0x0F) * 4
    total, frag = _be16(ip, IPV4_TOT_LEN_AT), _be16(ip, IPV4_FRAG_AT)
    proto = ip[IPV4_PROTO_AT]
    src, dst = struct.unpack_from("!II", ip, IPV4_SRC_AT)
    sport = dport = 0
    if (frag & IP_MF_OFFSET == 0 and proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)
            and ihl + L4_PORTS_LEN <= total):
        sport, dport = struct.unpack_from("!HH", ip, ihl + L4_SPORT_AT)
    return flow_hash(src, dst, proto, sport, dport)


# ---- shared checks --------------------------------------------------------------------------


def ipv4_header_problem(ip: bytes) -> Reason:
    """Reason.OK or why the bytes do not start with a complete IPv4 header and packet."""
    if len(ip) < IPV4_HLEN:
        return Reason.TRUNCATED
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < IPV4_HLEN:
        return Reason.BAD_IP_HEADER
    total = _be16(ip, IPV4_TOT_LEN_AT)
    if total < ihl:
        return Reason.BAD_IP_HEADER
    if total > len(ip):
        return Reason.TRUNCATED
    return Reason.OK


def subnet_index(ip: int, cfg: np.ndarray, table: PeerTable) -> int:
    if ip & int(cfg[CFG_NETMASK]) != int(cfg[CFG_NETWORK]):
        return -1
    idx = (ip - int(cfg[CFG_NETWORK])) >> int(cfg[CFG_SUBNET_SHIFT])
    return idx if idx < table.size else -1


def _sender_subnet(src: int, sender: int, cfg: np.ndarray, table: PeerTable) -> int:
    """Subnet number of the inner source if the outer sender leases it, else -1."""
    idx = subnet_index(src, cfg, table)
    if idx < 0 or idx == cfg[CFG_LOCAL_INDEX] or not table.present[idx]:
        return -1
    return idx if int(table.public_ip[idx]) == sender else -1


def _is_local(ip: int, cfg: np.ndarray, table: PeerTable) -> bool:
    local = int(cfg[CFG_LOCAL_INDEX])
    return local >= 0 and subnet_index(ip, cfg, table) == local


def _egress_route(dst: int, cfg: np.ndarray, table: PeerTable) -> tuple[Verdict, Reason, int]:
    """Where both backends send an egress destination, in the kernels' order.

    Returns (FORWARD, OK, subnet number) when a peer's lease covers `dst`, else the verdict and
    reason the packet gets (outside the network or unleased: slow path; our own subnet: drop).
    """
    idx = subnet_index(dst, cfg, table)
    if idx < 0:
        return Verdict.SLOW, Reason.OUTSIDE_NETWORK, idx
    if idx == cfg[CFG_LOCAL_INDEX]:
        return Verdict.DROP, Reason.LOCAL_DST, idx
    if not table.present[idx]:
        return Verdict.SLOW, Reason.NO_ROUTE, idx
    return Verdict.FORWARD, Reason.OK, idx


def _inner_ingress_checks(ip: bytes, src_ip: int, cfg: np.ndarray,
                          table: PeerTable) -> tuple[Reason, int]:
    """What both backends check on a received inner IPv4 packet, in the kernels' order: a sound
    header, an inner source the sending peer leases, a destination in our subnet.

    Returns (reason, subnet number of the sending peer's lease); OK when all pass.
    """
    problem = ipv4_header_problem(ip)
    if problem != Reason.OK:
        return problem, -1
    peer = _sender_subnet(_be32(ip, IPV4_SRC_AT), src_ip, cfg, table)
    if peer < 0:
        return Reason.SPOOFED_INNER_SRC, -1
    if not _is_local(_be32(ip, IPV4_DST_AT), cfg, table):
        return Reason.NOT_FOR_US, peer
    return Reason.OK, peer


def _mac(raw: bytes) -> str:
    return raw.hex(":")


# ---- VXLAN ----------------------------------------------------------------------------------


def vxlan_egress(frame: bytes, cfg: np.ndarray, table: PeerTable, ip_id: int = 0) -> StepResult:
    """Twin of fastpath.vxlan_egress: Ethernet frame from the TAP -> outer IPv4/UDP/VXLAN."""
    if len(frame) < ETH_HLEN:
        return _drop(Reason.TRUNCATED, frame)
    ethertype = _be16(frame, ETH_TYPE_AT)
    if ethertype == ETH_P_ARP:
        return _slow(Reason.ARP, frame)
    if ethertype == ETH_P_IPV6:
        return _slow(Reason.IPV6, frame)
    if ethertype != ETH_P_IP:
        return _drop(Reason.UNKNOWN_ETHERTYPE, frame)
    dst_mac = frame[ETH_DST_AT : ETH_DST_AT + ETH_ALEN]
    if dst_mac[0] & 1:  # group bit: nothing to unicast to
        return _drop(Reason.BROADCAST if dst_mac == BROADCAST_MAC else Reason.MULTICAST, frame)
    ip = frame[ETH_HLEN:]
    problem = ipv4_header_problem(ip)
    if problem != Reason.OK:
        return _drop(problem, frame)
    dst = _be32(ip, IPV4_DST_AT)
    verdict, reason, idx = _egress_route(dst, cfg, table)
    if reason != Reason.OK:
        return StepResult(verdict, reason, bytes(frame))
    total = _be16(ip, IPV4_TOT_LEN_AT)
    inner = bytearray(frame[: ETH_HLEN + total])  # Ethernet padding is not carried
    outer_total = VXLAN_ENCAP + len(inner)
    dont_fragment = bool(_be16(ip, IPV4_FRAG_AT) & IP_DF)
    if total > cfg[CFG_MTU] and (dont_fragment or outer_total > IPV4_MAX_LEN):
        return _slow(Reason.FRAG_NEEDED, frame)
    peer_mac = bytes(table.vtep_mac[idx])
    if not any(peer_mac):
        return _drop(Reason.PEER_LOOKUP_MISS, frame)

    # What the kernel's neighbour entry would have put there; usually already the same.
    local_mac = int(cfg[CFG_LOCAL_VTEP_MAC]).to_bytes(ETH_ALEN, "big")
    inner[ETH_DST_AT : ETH_DST_AT + ETH_ALEN] = peer_mac
    inner[ETH_SRC_AT : ETH_SRC_AT + ETH_ALEN] = local_mac
    src_ip = int(cfg[CFG_LOCAL_PUBLIC_IP])
    peer_ip = int(table.public_ip[idx])
    sport = flow_src_port(inner_flow_hash(ip))
    dport = int(cfg[CFG_PORT])
    vni = int(cfg[CFG_VNI])
    ip_id &= 0xFFFF
    outer_ip = bytearray(struct.pack("!BBHHHBBHII", IPV4_VER_IHL, 0, outer_total, ip_id, 0,
                                     OUTER_TTL, IPPROTO_UDP, 0, src_ip, peer_ip))
    csum = ipv4_checksum(bytes(outer_ip))
    outer_ip[IPV4_CSUM_AT : IPV4_CSUM_AT + 2] = csum.to_bytes(2, "big")
    udp = struct.pack("!HHHH", sport, dport, outer_total - IPV4_HLEN, 0)
    vxlan = struct.pack("!B3xI", VXLAN_FLAG_I, vni << 8)
    fields = (
        ("inner.eth.dst", _mac(peer_mac)),
        ("inner.eth.src", _mac(local_mac)),
        ("outer.ip.len", outer_total),
        ("outer.ip.id", ip_id),
        ("outer.ip.ttl", OUTER_TTL),
        ("outer.ip.proto", IPPROTO_UDP),
        ("outer.ip.csum", csum),
        ("outer.ip.src", str(IPv4Address(src_ip))),
        ("outer.ip.dst", str(IPv4Address(peer_ip))),
        ("udp.sport", sport),
        ("udp.dport", dport),
        ("udp.len", outer_total - IPV4_HLEN),
        ("udp.csum", 0),
        ("vxlan.flags", VXLAN_FLAG_I),
        ("vxlan.vni", vni),
    )
    out = bytes(outer_ip) + udp + vxlan + bytes(inner)
    return StepResult(Verdict.FORWARD, Reason.OK, out, idx, peer_ip, fields)


def vxlan_ingress(payload: bytes, src_ip: int, cfg: np.ndarray, table: PeerTable) -> StepResult:
    """Twin of fastpath.vxlan_ingress: VXLAN payload from `src_ip` -> inner Ethernet frame.

    A FORWARD frame whose inner TCP/UDP checksum came in CHECKSUM_PARTIAL form is completed
    (see complete_partial_l4_checksum) and the value written appears in `fields`.
    """
    if len(payload) < VXLAN_HLEN + ETH_HLEN + IPV4_HLEN:
        return _drop(Reason.TRUNCATED, payload)
    # RFC 7348: only the I bit matters; other flag and reserved bits are ignored on receipt.
    if not payload[VXLAN_FLAGS_AT] & VXLAN_FLAG_I:
        return _drop(Reason.BAD_VXLAN_FLAGS, payload)
    if _be32(payload, VXLAN_VNI_AT) >> 8 != cfg[CFG_VNI]:
        return _drop(Reason.WRONG_VNI, payload)
    if not table.has_sender(src_ip):
        return _drop(Reason.UNKNOWN_SENDER, payload)
    frame = payload[VXLAN_HLEN:]
    if _be16(frame, ETH_TYPE_AT) != ETH_P_IP:
        return _drop(Reason.NOT_IPV4, payload)
    ip = frame[ETH_HLEN:]
    reason, peer = _inner_ingress_checks(ip, src_ip, cfg, table)
    if reason != Reason.OK:
        return _drop(reason, payload)
    local_mac = int(cfg[CFG_LOCAL_VTEP_MAC]).to_bytes(ETH_ALEN, "big")
    if frame[ETH_DST_AT : ETH_DST_AT + ETH_ALEN] not in (local_mac, BROADCAST_MAC):
        return _drop(Reason.WRONG_INNER_MAC, payload)
    out = bytearray(frame)
    ip_out = out[ETH_HLEN:]
    csum = complete_partial_l4_checksum(ip_out)
    if csum is None:
        return StepResult(Verdict.FORWARD, Reason.OK, bytes(frame), peer, 0)
    out[ETH_HLEN:] = ip_out
    field = "inner.tcp.csum" if ip_out[IPV4_PROTO_AT] == IPPROTO_TCP else "inner.udp.csum"
    return StepResult(Verdict.FORWARD, Reason.OK, bytes(out), peer, 0, ((field, csum),))


# ---- udp backend ----------------------------------------------------------------------------


def _decrement_ttl(ip: bytes) -> tuple[bytes, tuple[tuple[str, int], ...]]:
    total = _be16(ip, IPV4_TOT_LEN_AT)
    out = bytearray(ip[:total])
    ttl = out[IPV4_TTL_AT]
    csum = ttl_decrement_checksum(_be16(out, IPV4_CSUM_AT), ttl, out[IPV4_PROTO_AT])
    out[IPV4_TTL_AT] = ttl - 1
    out[IPV4_CSUM_AT : IPV4_CSUM_AT + 2] = csum.to_bytes(2, "big")
    return bytes(out), (("ip.ttl", ttl - 1), ("ip.csum", csum))


def udp_egress(packet: bytes, cfg: np.ndarray, table: PeerTable) -> StepResult:
    """Twin of fastpath.udp_egress: IPv4 packet from the TUN -> same packet for a peer."""
    if len(packet) < 1:
        return _drop(Reason.TRUNCATED, packet)
    if packet[0] >> 4 == 6:
        return _slow(Reason.IPV6, packet)
    if packet[0] >> 4 != 4:
        return _drop(Reason.NOT_IPV4, packet)
    problem = ipv4_header_problem(packet)
    if problem != Reason.OK:
        return _drop(problem, packet)
    verdict, reason, idx = _egress_route(_be32(packet, IPV4_DST_AT), cfg, table)
    if reason != Reason.OK:
        return StepResult(verdict, reason, bytes(packet))
    if packet[IPV4_TTL_AT] <= 1:
        return _slow(Reason.TTL_EXCEEDED, packet)
    if _be16(packet, IPV4_TOT_LEN_AT) > cfg[CFG_MTU] and _be16(packet, IPV4_FRAG_AT) & IP_DF:
        return _slow(Reason.FRAG_NEEDED, packet)
    out, fields = _decrement_ttl(packet)
    return StepResult(Verdict.FORWARD, Reason.OK, out, idx, int(table.public_ip[idx]), fields)


def udp_ingress(packet: bytes, src_ip: int, cfg: np.ndarray, table: PeerTable) -> StepResult:
    """Twin of fastpath.udp_ingress: IPv4 packet from peer `src_ip` -> packet for the TUN."""
    if not table.has_sender(src_ip):
        return _drop(Reason.UNKNOWN_SENDER, packet)
    if len(packet) < 1:
        return _drop(Reason.TRUNCATED, packet)
    if packet[0] >> 4 != 4:
        return _drop(Reason.NOT_IPV4, packet)
    reason, peer = _inner_ingress_checks(packet, src_ip, cfg, table)
    if reason != Reason.OK:
        return _drop(reason, packet)
    if packet[IPV4_TTL_AT] <= 1:  # flannel decrements on receive too and drops what reaches 0
        return _drop(Reason.TTL_EXCEEDED, packet)
    out, fields = _decrement_ttl(packet)
    return StepResult(Verdict.FORWARD, Reason.OK, out, peer, 0, fields)


# ---- the twins of an encapsulation, by its row ------------------------------------------------


class TwinSteps(NamedTuple):
    """The twins of one encapsulation's egress and ingress kernels, with one signature each."""

    # (frame or packet from the device, cfg, table, the outer IP ID the kernel would give next)
    egress: Callable[[bytes, np.ndarray, PeerTable, int], StepResult]
    # (payload or packet from a peer, that peer's PublicIP, cfg, table)
    ingress: Callable[[bytes, int, np.ndarray, PeerTable], StepResult]


def _udp_egress_step(packet: bytes, cfg: np.ndarray, table: PeerTable, _ip_id: int) -> StepResult:
    return udp_egress(packet, cfg, table)  # the UDP socket numbers the outer IP IDs, not the step


# encapsulation row -> its twins: what `weft trace` runs and what the kernels are held to.
TWIN_STEPS: dict[Encap, TwinSteps] = {
    VXLAN: TwinSteps(vxlan_egress, vxlan_ingress),
    UDP: TwinSteps(_udp_egress_step, udp_ingress),
}
