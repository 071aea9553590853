"""Readable pure-Python twins of the offload kernels (offload.py): bytes in, list of bytes out.

`split_super(data, l3_off)` is the twin of offload.split_super on data = src[:src_len];
`coalesce(packets, l3_off)` the twin of offload.coalesce, given the packet of each row (None for
a row the kernel skips: not FORWARD, or a span outside the row). Both return what the kernel
writes (rows / units in order) or the same negative code. Tests hold them byte-identical to the
kernels; when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from weft.packet.checksum import fold16, sum16
from weft.packet.offload.gro_coalesce import (
    ERR_MALFORMED,
    ERR_NO_ROOM,
    ERR_UNSUPPORTED,
    MAX_IP_LEN,
    MAX_SEGMENTS,
    TCP_ACK,
    TCP_CWR,
    TCP_FIN,
    TCP_PSH,
    UNIT_ROW,
)
from weft.packet.offload.vnet_hdr import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
)
from weft.packet.offload.vnet_hdr import VNET_HDR as _VNET_DTYPE

# The numpy layout of weft.packet.offload.vnet_hdr as a struct format: "<" + one code per field.
VNET_HDR = struct.Struct("<" + "".join(_VNET_DTYPE.fields[name][0].char
                                       for name in _VNET_DTYPE.names))
assert VNET_HDR.size == VNET_HDR_LEN


@dataclass(frozen=True)
class VnetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)

    @classmethod
    def unpack(cls, data: bytes) -> VnetHdr:
        return cls(*VNET_HDR.unpack_from(data))


# ---- checksums -------------------------------------------------------------------------------


def tcp_pseudo_sum(ip: bytes, tcp_len: int) -> int:
    """Unfolded IPv4 pseudo-header sum for TCP (addresses, protocol 6, TCP length)."""
    return sum16(ip[12:20]) + 6 + tcp_len


def _set_ip_checksum(pkt: bytearray, ip: int, ihl: int) -> None:
    """Zero and rewrite the checksum of the IPv4 header at pkt[ip:]."""
    pkt[ip + 10 : ip + 12] = b"\0\0"
    csum = ~fold16(sum16(pkt[ip : ip + ihl])) & 0xFFFF
    pkt[ip + 10 : ip + 12] = csum.to_bytes(2, "big")


# ---- split ---------------------------------------------------------------------------------


def _tso_geometry(pkt: bytes, l3_off: int, gso_size: int) -> tuple[int, int, int, int]:
    """(code, ihl, doff, tot) of a TCPV4 super-frame; code 0 when usable. hdr_len is a hint
    (tun writes skb_headlen() there), so header lengths come from IHL and the data offset."""
    if len(pkt) < l3_off + 20:
        return ERR_MALFORMED, 0, 0, 0
    if l3_off == 14 and pkt[12:14] != b"\x08\x00":
        return ERR_UNSUPPORTED, 0, 0, 0
    ip = pkt[l3_off:]
    if ip[0] >> 4 != 4:
        return ERR_UNSUPPORTED, 0, 0, 0
    ihl = (ip[0] & 0x0F) * 4
    if ihl < 20:
        return ERR_MALFORMED, 0, 0, 0
    if ip[9] != 6:
        return ERR_UNSUPPORTED, 0, 0, 0
    tot, frag = struct.unpack_from("!H2xH", ip, 2)
    if tot < ihl + 20 or l3_off + tot > len(pkt):
        return ERR_MALFORMED, 0, 0, 0
    if frag & 0x3FFF:
        return ERR_MALFORMED, 0, 0, 0
    doff = (ip[ihl + 12] >> 4) * 4
    if doff < 20 or ihl + doff > tot or gso_size <= 0:
        return ERR_MALFORMED, 0, 0, 0
    return 0, ihl, doff, tot


def split_super(data: bytes, l3_off: int, max_rows: int | None = None,
                row_cap: int | None = None) -> list[bytes] | int:
    """Twin of offload.split_super: the packets it writes, or its negative code.

    `max_rows` rows from first_row on and `row_cap` bytes per row (None: unlimited) model the
    kernel's room checks.
    """
    if len(data) < VNET_HDR_LEN or l3_off < 0:
        return ERR_MALFORMED
    hdr = VnetHdr.unpack(data)
    if hdr.gso_type & GSO_ECN or hdr.gso_type not in (GSO_NONE, GSO_TCPV4):
        return ERR_UNSUPPORTED
    pkt = bytes(data[VNET_HDR_LEN:])
    rows = max_rows if max_rows is not None else 1 << 30
    cap = row_cap if row_cap is not None else 1 << 30

    if hdr.gso_type == GSO_NONE:
        needs_csum = bool(hdr.flags & VNET_F_NEEDS_CSUM)
        if not pkt or (needs_csum and hdr.csum_start + hdr.csum_offset + 2 > len(pkt)):
            return ERR_MALFORMED
        if rows < 1 or len(pkt) > cap:
            return ERR_NO_ROOM
        if not needs_csum:
            return [pkt]
        # The field already holds the pseudo-header sum, so csum_start..end sums to the whole
        # checksum; 0 is sent as 0xFFFF, as skb_checksum_help does.
        out = bytearray(pkt)
        csum = ~fold16(sum16(out[hdr.csum_start :])) & 0xFFFF or 0xFFFF
        field = hdr.csum_start + hdr.csum_offset
        out[field : field + 2] = csum.to_bytes(2, "big")
        return [bytes(out)]

    code, ihl, doff, tot = _tso_geometry(pkt, l3_off, hdr.gso_size)
    if code:
        return code
    mss = hdr.gso_size
    hlen = l3_off + ihl + doff
    payload = pkt[hlen : l3_off + tot]
    nseg = max(1, -(-len(payload) // mss))
    if rows < nseg or hlen + min(mss, len(payload)) > cap:
        return ERR_NO_ROOM
    ip_id = int.from_bytes(pkt[l3_off + 4 : l3_off + 6], "big")
    seq = int.from_bytes(pkt[l3_off + ihl + 4 : l3_off + ihl + 8], "big")
    tcp_flags = pkt[l3_off + ihl + 13]
    segments = []
    for i in range(nseg):
        chunk = payload[i * mss : (i + 1) * mss]
        seg = bytearray(pkt[:hlen] + chunk)
        ip, tcp = l3_off, l3_off + ihl
        struct.pack_into("!HH", seg, ip + 2, ihl + doff + len(chunk), (ip_id + i) & 0xFFFF)
        _set_ip_checksum(seg, ip, ihl)
        struct.pack_into("!I", seg, tcp + 4, (seq + i * mss) & 0xFFFFFFFF)
        flags = tcp_flags
        if i != nseg - 1:
            flags &= ~(TCP_FIN | TCP_PSH) & 0xFF  # a FIN or a push belongs to the last byte
        if i != 0:
            flags &= ~TCP_CWR & 0xFF  # the window reduction is signalled once, with the first
        seg[tcp + 13] = flags
        seg[tcp + 16 : tcp + 18] = b"\0\0"
        total = tcp_pseudo_sum(seg[ip:], doff + len(chunk)) + sum16(seg[tcp:])
        seg[tcp + 16 : tcp + 18] = (~fold16(total) & 0xFFFF).to_bytes(2, "big")
        segments.append(bytes(seg))
    return segments


# ---- coalesce -------------------------------------------------------------------------------

OTHER, TCP_ALONE, TCP_MERGE, TCP_NOPORTS = range(4)  # packet classes, as in offload._classify


def classify(pkt: bytes, l3_off: int) -> tuple[int, int, int, int]:
    """(class, ihl, doff, IP total length) of one packet; see offload._classify."""
    if len(pkt) < l3_off + 20 or (l3_off == 14 and pkt[12:14] != b"\x08\x00"):
        return OTHER, 0, 0, 0
    ip = pkt[l3_off:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < 20 or ip[9] != 6:
        return OTHER, 0, 0, 0
    tot, frag = struct.unpack_from("!H2xH", ip, 2)
    if tot < ihl or l3_off + tot > len(pkt):
        return OTHER, 0, 0, 0
    if frag & 0x3FFF or tot < ihl + 20:  # no trustworthy ports
        return TCP_NOPORTS, ihl, 0, tot
    tcp = ip[ihl:tot]
    doff = (tcp[12] >> 4) * 4
    if doff < 20 or ihl + doff > tot:
        return TCP_ALONE, ihl, 0, tot
    if tcp[13] & ~TCP_PSH != TCP_ACK or tot - ihl - doff <= 0:
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
    return (pkt[:l3_off] + ip[0:2] + ip[6:7] + ip[8:9] + ip[12:ihl]
            + tcp[0:4] + tcp[8:13] + tcp[14:16] + tcp[18:doff])


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
        doff = (pkt[ip + ihl + 12] >> 4) * 4
        tot = self.merged_len - l3_off
        pkt[ip + 2 : ip + 4] = tot.to_bytes(2, "big")
        _set_ip_checksum(pkt, ip, ihl)
        # CHECKSUM_PARTIAL: the folded pseudo-header sum, for the kernel to complete.
        partial = fold16(tcp_pseudo_sum(pkt[ip:], tot - ihl))
        pkt[ip + ihl + 16 : ip + ihl + 18] = partial.to_bytes(2, "big")
        hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, l3_off + ihl + doff, self.gso_size,
                      l3_off + ihl, 16)
        return hdr.pack() + bytes(pkt)


def coalesce(packets: Sequence[bytes | None], l3_off: int, max_units: int | None = None,
             unit_cap: int = UNIT_ROW) -> list[bytes] | int:
    """Twin of offload.coalesce: the units it writes (vnet header + packet), or its code."""
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
        addr = ip[12:20] if cls != OTHER else b""
        ports = ip[ihl : ihl + 4] if cls in (TCP_ALONE, TCP_MERGE) else b""
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
            seq = int.from_bytes(tcp[4:8], "big")
            new_len = flow.merged_len + len(payload)
            if (seq == flow.next_seq and len(payload) <= flow.gso_size
                    and flow.segments < MAX_SEGMENTS
                    and new_len - l3_off <= MAX_IP_LEN and VNET_HDR_LEN + new_len <= unit_cap
                    and kept_headers(pkt, l3_off, ihl, doff) == flow.kept):
                flow.data[flow.merged_len :] = payload
                flow.merged_len = new_len
                flow.segments += 1
                flow.next_seq = (seq + len(payload)) & 0xFFFFFFFF
                if tcp[13] & TCP_PSH:  # carried into the merged header, as Linux GRO does
                    flow.data[l3_off + ihl + 13] |= TCP_PSH
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
            unit.next_seq = (int.from_bytes(tcp[4:8], "big") + unit.gso_size) & 0xFFFFFFFF
            unit.open = not tcp[13] & TCP_PSH
            unit.kept = kept_headers(pkt, l3_off, ihl, doff)
        units.append(unit)
    return [u.write(l3_off) for u in units]
