"""Readable pure-Python twin of gro_coalesce.py: packets in, device writes out.

`coalesce(packets, l3_off)` is the twin of gro_coalesce.coalesce, given the packet of each row (None
for a row the kernel skips: not FORWARD, or a span outside the row). It returns what the kernel
writes (units in order) or the same negative code. Tests hold it byte-identical to the kernel;
when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from weft.packet.checksum import fold16, sum16
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_TYPE_AT,
    IP_MF_OFFSET,
    IPPROTO_TCP,
    IPV4_ADDRS,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_MAX_LEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOT_LEN_AT,
    IPV4_TTL_AT,
    L4_PORTS_LEN,
    L4_SPORT_AT,
    TCP_ACK,
    TCP_ACK_AT,
    TCP_CSUM_AT,
    TCP_DOFF_AT,
    TCP_FLAGS_AT,
    TCP_HLEN,
    TCP_PSH,
    TCP_SEQ_AT,
    TCP_URG_PTR_AT,
    TCP_WINDOW_AT,
)
from weft.packet.offload.gro_coalesce import MAX_SEGMENTS
from weft.packet.offload.tso import ERR_MALFORMED, ERR_NO_ROOM, UNIT_ROW
from weft.packet.offload.tso_twin import (
    put_partial_tcp_csum,
    set_ip_checksum,
    tcp_pseudo_sum,
)
from weft.packet.offload.vnet_hdr import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr

OTHER, TCP_ALONE, TCP_MERGE, TCP_NOPORTS = range(4)  # packet classes, as in gro_coalesce._classify
_PORTS = slice(L4_SPORT_AT, L4_PORTS_LEN)
_SEQ = slice(TCP_SEQ_AT, TCP_SEQ_AT + 4)


def classify(pkt: bytes, l3_off: int) -> tuple[int, int, int, int]:
    """(class, ihl, doff, IP total length) of one packet; see gro_coalesce._classify."""
    ethertype = pkt[ETH_TYPE_AT : ETH_TYPE_AT + 2]
    if len(pkt) < l3_off + IPV4_HLEN or (l3_off == ETH_HLEN
                                          and ethertype != ETH_P_IP.to_bytes(2, "big")):
        return OTHER, 0, 0, 0
    ip = pkt[l3_off:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < IPV4_HLEN or ip[IPV4_PROTO_AT] != IPPROTO_TCP:
        return OTHER, 0, 0, 0
    tot, frag = struct.unpack_from("!H2xH", ip, IPV4_TOT_LEN_AT)
    if tot < ihl or l3_off + tot > len(pkt):
        return OTHER, 0, 0, 0
    if frag & IP_MF_OFFSET or tot < ihl + TCP_HLEN:  # no trustworthy ports
        return TCP_NOPORTS, ihl, 0, tot
    tcp = ip[ihl:tot]
    doff = (tcp[TCP_DOFF_AT] >> 4) * 4
    if doff < TCP_HLEN or ihl + doff > tot:
        return TCP_ALONE, ihl, 0, tot
    if tcp[TCP_FLAGS_AT] & ~TCP_PSH != TCP_ACK or tot - ihl - doff <= 0:
        return TCP_ALONE, ihl, doff, tot
    # Never merge what we cannot verify: merged frames get fresh checksums.
    if fold16(sum16(ip[:ihl])) != 0xFFFF:
        return TCP_ALONE, ihl, doff, tot
    if fold16(tcp_pseudo_sum(ip, tot - ihl) + sum16(tcp)) != 0xFFFF:
        return TCP_ALONE, ihl, doff, tot
    return TCP_MERGE, ihl, doff, tot


def kept_headers(pkt: bytes, l3_off: int, ihl: int, doff: int) -> bytes:
    """The header bytes a merge keeps from the first segment, so they must match in all:
    L2, version/IHL, TOS, DF, TTL, addresses and options; ports, ack, data offset, window,
    urgent pointer and options. Not IP length/id/checksum nor TCP seq/flags/checksum."""
    ip = pkt[l3_off:]
    tcp = ip[ihl:]
    return (pkt[:l3_off] + ip[:IPV4_TOT_LEN_AT] + ip[IPV4_FRAG_AT : IPV4_FRAG_AT + 1]
            + ip[IPV4_TTL_AT : IPV4_TTL_AT + 1] + ip[IPV4_SRC_AT:ihl]
            + tcp[_PORTS] + tcp[TCP_ACK_AT:TCP_FLAGS_AT] + tcp[TCP_WINDOW_AT:TCP_CSUM_AT]
            + tcp[TCP_URG_PTR_AT:doff])


@dataclass
class _Unit:
    data: bytearray  # the first packet as received, then appended payloads
    raw_len: int  # its length as received (a single packet goes out like that)
    merged_len: int  # length of the merged IP packet plus L2
    addr: bytes = b""
    ports: bytes = b""
    open: bool = False
    segments: int = 1
    gso_size: int = 0
    next_seq: int = 0
    kept: bytes = b""

    def write(self, l3_off: int) -> bytes:
        if self.segments < 2:
            return VnetHdr().pack() + bytes(self.data[: self.raw_len])
        pkt = bytearray(self.data[: self.merged_len])
        ip = l3_off
        ihl = (pkt[ip] & 0x0F) * 4
        doff = (pkt[ip + ihl + TCP_DOFF_AT] >> 4) * 4
        tot = self.merged_len - l3_off
        struct.pack_into("!H", pkt, ip + IPV4_TOT_LEN_AT, tot)
        set_ip_checksum(pkt, ip, ihl)
        put_partial_tcp_csum(pkt, ip, ihl, tot)  # for the kernel to complete
        hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, l3_off + ihl + doff, self.gso_size,
                      l3_off + ihl, TCP_CSUM_AT)
        return hdr.pack() + bytes(pkt)


def coalesce(packets: Sequence[bytes | None], l3_off: int, max_units: int | None = None,
             unit_cap: int = UNIT_ROW) -> list[bytes] | int:
    """Twin of gro_coalesce.coalesce: the units it writes (vnet header + packet), or its code."""
    if l3_off < 0:
        return ERR_MALFORMED
    present = [p for p in packets if p is not None]
    if any(VNET_HDR_LEN + len(p) > unit_cap for p in present):
        return ERR_NO_ROOM
    if max_units is not None and len(present) > max_units:
        return ERR_NO_ROOM
    units: list[_Unit] = []
    for pkt in present:
        pkt = bytes(pkt)
        cls, ihl, doff, tot = classify(pkt, l3_off)
        ip = pkt[l3_off:]
        addr = ip[IPV4_ADDRS] if cls != OTHER else b""
        ports = ip[ihl:][_PORTS] if cls in (TCP_ALONE, TCP_MERGE) else b""
        if cls == TCP_NOPORTS:  # may belong to any flow of the pair: close them all
            for u in units:
                if u.open and u.addr == addr:
                    u.open = False
        flow = None
        if cls in (TCP_ALONE, TCP_MERGE):
            flow = next((u for u in units if u.open and u.addr == addr and u.ports == ports),
                        None)
        if cls == TCP_MERGE and flow is not None:
            tcp = ip[ihl:tot]
            payload = tcp[doff:]
            seq = int.from_bytes(tcp[_SEQ], "big")
            new_len = flow.merged_len + len(payload)
            if (seq == flow.next_seq and len(payload) <= flow.gso_size
                    and flow.segments < MAX_SEGMENTS
                    and new_len - l3_off <= IPV4_MAX_LEN and VNET_HDR_LEN + new_len <= unit_cap
                    and kept_headers(pkt, l3_off, ihl, doff) == flow.kept):
                flow.data[flow.merged_len :] = payload
                flow.merged_len = new_len
                flow.segments += 1
                flow.next_seq = (seq + len(payload)) & 0xFFFFFFFF
                if tcp[TCP_FLAGS_AT] & TCP_PSH:  # carried into the merged header, as GRO does
                    flow.data[l3_off + ihl + TCP_FLAGS_AT] |= TCP_PSH
                    flow.open = False
                if len(payload) < flow.gso_size:
                    flow.open = False
                continue
        if flow is not None:
            flow.open = False  # a later segment must not jump ahead of this packet
        unit = _Unit(bytearray(pkt), len(pkt), len(pkt), addr, ports)
        if cls == TCP_MERGE:
            tcp = ip[ihl:tot]
            unit.merged_len = l3_off + tot
            unit.gso_size = tot - ihl - doff
            unit.next_seq = (int.from_bytes(tcp[_SEQ], "big") + unit.gso_size) & 0xFFFFFFFF
            unit.open = not tcp[TCP_FLAGS_AT] & TCP_PSH
            unit.kept = kept_headers(pkt, l3_off, ihl, doff)
        units.append(unit)
    return [u.write(l3_off) for u in units]
