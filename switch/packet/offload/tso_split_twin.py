"""Readable pure-Python twin of tso_split.py: one device read in, the list of packets out.

`split_super(data, l3_off)` is the twin of tso_split.split_super on data = src[:src_len]: the
packets it writes (rows in order) or the same negative code. Tests hold it byte-identical to
the kernel; when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct

from weft.packet.checksum import fold16, sum16
from weft.packet.headers import (
    IPV4_ID_AT,
    IPV4_TOT_LEN_AT,
    TCP_CSUM_AT,
    TCP_CWR,
    TCP_FIN,
    TCP_FLAGS_AT,
    TCP_PSH,
    TCP_SEQ_AT,
)
from weft.packet.offload.tso import ERR_MALFORMED, ERR_NO_ROOM, ERR_UNSUPPORTED
from weft.packet.offload.tso_twin import set_ip_checksum, tcp_pseudo_sum, tso_geometry
from weft.packet.offload.vnet_hdr import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHdr,
)


def split_super(data: bytes, l3_off: int, max_rows: int | None = None,
                row_cap: int | None = None) -> list[bytes] | int:
    """Twin of tso_split.split_super: the packets it writes, or its negative code.

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

    code, ihl, doff, tot = tso_geometry(pkt, l3_off, hdr.gso_size)
    if code:
        return code
    mss = hdr.gso_size
    hlen = l3_off + ihl + doff
    payload = pkt[hlen : l3_off + tot]
    nseg = max(1, -(-len(payload) // mss))
    if rows < nseg or hlen + min(mss, len(payload)) > cap:
        return ERR_NO_ROOM
    ip, tcp = l3_off, l3_off + ihl
    ip_id = int.from_bytes(pkt[ip + IPV4_ID_AT : ip + IPV4_ID_AT + 2], "big")
    seq = int.from_bytes(pkt[tcp + TCP_SEQ_AT : tcp + TCP_SEQ_AT + 4], "big")
    tcp_flags = pkt[tcp + TCP_FLAGS_AT]
    segments = []
    for i in range(nseg):
        chunk = payload[i * mss : (i + 1) * mss]
        seg = bytearray(pkt[:hlen] + chunk)
        struct.pack_into("!H", seg, ip + IPV4_TOT_LEN_AT, ihl + doff + len(chunk))
        struct.pack_into("!H", seg, ip + IPV4_ID_AT, (ip_id + i) & 0xFFFF)
        set_ip_checksum(seg, ip, ihl)
        struct.pack_into("!I", seg, tcp + TCP_SEQ_AT, (seq + i * mss) & 0xFFFFFFFF)
        flags = tcp_flags
        if i != nseg - 1:
            flags &= ~(TCP_FIN | TCP_PSH) & 0xFF  # a FIN or a push belongs to the last byte
        if i != 0:
            flags &= ~TCP_CWR & 0xFF  # the window reduction is signalled once, with the first
        seg[tcp + TCP_FLAGS_AT] = flags
        seg[tcp + TCP_CSUM_AT : tcp + TCP_CSUM_AT + 2] = b"\0\0"
        total = tcp_pseudo_sum(seg[ip:], doff + len(chunk)) + sum16(seg[tcp:])
        seg[tcp + TCP_CSUM_AT : tcp + TCP_CSUM_AT + 2] = (~fold16(total) & 0xFFFF).to_bytes(
            2, "big")
        segments.append(bytes(seg))
    return segments
