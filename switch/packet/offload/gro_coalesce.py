"""numba kernels for TUN/TAP offloads: split TSO super-frames (GSO) and coalesce segments (GRO).

A device opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4) prefixes every read
and every write with a 10-byte virtio_net_hdr; its layout and constants are defined once, in
weft.packet.offload.vnet_hdr (little-endian u16 fields, the byte order of the hosts weft runs on).

`split_super` turns one read (header + Ethernet frame or raw IPv4 packet at `l3_off`) into the
ordinary packets the rest of the datapath handles; `coalesce` turns FORWARD rows after the
fast path back into as few device writes as it can. Both never raise, never read outside the
given lengths/offsets and never write outside the rows they return. offload_twin.py holds the
readable twins; tests keep them byte-identical. Arithmetic is int64 as in fastpath.py, so the
same code runs under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.fastpath import HEADROOM
from weft.packet.offload.vnet_hdr import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_CSUM_OFFSET,
    VNET_CSUM_START,
    VNET_F_NEEDS_CSUM,
    VNET_FLAGS,
    VNET_GSO_SIZE,
    VNET_GSO_TYPE,
    VNET_HDR_LEN,
    VNET_HDR_LEN_AT,
)
from weft.packet.wirebytes import fold16 as _fold16
from weft.packet.wirebytes import sum16 as _sum16
from weft.packet.wirebytes import u16 as _u16
from weft.packet.wirebytes import u32 as _u32
from weft.packet.wirebytes import w16 as _w16
from weft.packet.wirebytes import w32 as _w32

# Negative return codes of split_super and coalesce; callers drop and count by code.
ERR_MALFORMED = -1  # headers inconsistent or truncated
ERR_NO_ROOM = -2  # the output rows (number or width) cannot hold the result
ERR_UNSUPPORTED = -3  # well-formed but not ours: gso UDP/TCPV6/UDP_L4/ECN, not IPv4/TCP for TSO

MAX_SEGMENTS = 64  # per coalesced super-frame, as Linux GRO (MAX_GRO_SKBS) and UDP GSO
MAX_IP_LEN = 0xFFFF
UNIT_ROW = 65536 + 64  # row width of the `out` array of coalesce: header + Ethernet + 64 KiB

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# Packet classes of coalesce (_classify).
_OTHER = 0  # not TCP/IPv4 (or not parseable as such): no flow, written as is
_TCP_ALONE = 1  # TCP with known ports that must not be merged: closes its flow's unit
_TCP_MERGE = 2  # a verified ACK(/PSH) data segment: may start or extend a unit
_TCP_NOPORTS = 3  # TCP fragment or truncated header: closes every unit of the address pair


def new_units(m: int) -> tuple[np.ndarray, np.ndarray]:
    """`out` and `out_lens` arrays for coalesce with room for m write units."""
    return np.zeros((m, UNIT_ROW), dtype=np.uint8), np.zeros(m, dtype=np.int32)


# ---- byte and checksum helpers -------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _le16(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(cache=True, nogil=True, inline="always")
def _wle16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


@njit(cache=True, nogil=True, inline="always")
def _copy(dst, do, src, so, n):
    """dst[do:do+n] = src[so:so+n] (no overlap). A loop over views indexed from 0 compiles to a
    vectorized copy; numba's slice assignment takes a generic path about 15x slower."""
    d = dst[do : do + n]
    s = src[so : so + n]
    for k in range(n):
        d[k] = s[k]


@njit(cache=True, nogil=True, inline="always")
def _pseudo(b, ip, l4len):
    """Unfolded IPv4 pseudo-header sum for TCP: addresses, protocol 6, TCP length."""
    return _u16(b, ip + 12) + _u16(b, ip + 14) + _u16(b, ip + 16) + _u16(b, ip + 18) + 6 + l4len


@njit(cache=True, nogil=True)
def _ip_csum(b, ip, ihl):
    """Zero and rewrite the IPv4 header checksum."""
    _w16(b, ip + 10, 0)
    _w16(b, ip + 10, ~_fold16(_sum16(b, ip, ihl)) & 0xFFFF)


# ---- split: one device read -> ordinary packets --------------------------------------------


@njit(cache=True, nogil=True)
def _tso_geometry(src, p, plen, l3_off, gso_size):
    """(code, ihl, doff, tot) of a TCPV4 super-frame at src[p:p+plen]; code 0 when usable.

    hdr_len is deliberately not used: tun fills it with skb_headlen() ("a hint as to how much
    should be linear"), which may include payload, so the header length comes from IHL and the
    TCP data offset, each checked against the bytes present.
    """
    if plen < l3_off + 20:
        return ERR_MALFORMED, 0, 0, 0
    if l3_off == 14 and _u16(src, p + 12) != 0x0800:  # Ethernet: IPv4 only (no VLAN tags)
        return ERR_UNSUPPORTED, 0, 0, 0
    ip = p + l3_off
    if np.int64(src[ip]) >> 4 != 4:
        return ERR_UNSUPPORTED, 0, 0, 0
    ihl = (np.int64(src[ip]) & 0x0F) * 4
    if ihl < 20:
        return ERR_MALFORMED, 0, 0, 0
    if np.int64(src[ip + 9]) != 6:
        return ERR_UNSUPPORTED, 0, 0, 0
    tot = _u16(src, ip + 2)
    # Bytes past the IP total length (none from a real TAP) are ignored, like Ethernet padding.
    if tot < ihl + 20 or l3_off + tot > plen:
        return ERR_MALFORMED, 0, 0, 0
    if _u16(src, ip + 6) & 0x3FFF:  # MF or an offset: a fragment cannot be a TSO frame
        return ERR_MALFORMED, 0, 0, 0
    doff = (np.int64(src[ip + ihl + 12]) >> 4) * 4
    if doff < 20 or ihl + doff > tot:
        return ERR_MALFORMED, 0, 0, 0
    if gso_size <= 0:
        return ERR_MALFORMED, 0, 0, 0
    return 0, ihl, doff, tot


@njit(cache=True, nogil=True)
def _segment(src, p, l3_off, ihl, doff, tot, gso_size, i, nseg, row, h):
    """Write segment i of nseg into row[h:]; returns its length."""
    hlen = l3_off + ihl + doff
    payload = tot - ihl - doff
    start = i * gso_size
    seglen = min(gso_size, payload - start)
    _copy(row, h, src, p, hlen)
    _copy(row, h + hlen, src, p + hlen + start, seglen)
    ip = h + l3_off
    l4 = ip + ihl
    _w16(row, ip + 2, ihl + doff + seglen)
    _w16(row, ip + 4, (_u16(src, p + l3_off + 4) + i) & 0xFFFF)
    _ip_csum(row, ip, ihl)
    _w32(row, l4 + 4, (_u32(src, p + l3_off + ihl + 4) + start) & 0xFFFFFFFF)
    flags = np.int64(src[p + l3_off + ihl + 13])
    if i != nseg - 1:
        flags &= ~(TCP_FIN | TCP_PSH) & 0xFF  # a FIN or a push belongs to the last byte only
    if i != 0:
        flags &= ~TCP_CWR & 0xFF  # the window reduction was signalled once, with the first
    row[l4 + 13] = flags
    _w16(row, l4 + 16, 0)
    total = _pseudo(row, ip, doff + seglen) + _sum16(row, l4, doff + seglen)
    _w16(row, l4 + 16, ~_fold16(total) & 0xFFFF)
    return hlen + seglen


@njit(cache=True, nogil=True)
def split_super(src, src_len, l3_off, bufs, lens, first_row):
    """Split one device read into ordinary packets at bufs[row, HEADROOM:], lens[row].

    `src[:src_len]` is a virtio_net_hdr followed by the packet (Ethernet frame for l3_off=14,
    raw IPv4 for l3_off=0). Returns the number of rows written from `first_row` on, or
    ERR_MALFORMED / ERR_NO_ROOM / ERR_UNSUPPORTED, in which case no row was touched.
    gso NONE: copied, with the partial checksum completed if NEEDS_CSUM is set. gso TCPV4:
    gso_size-byte TCP segments with their own IP length/id/checksum and TCP seq/flags/checksum.
    """
    src_len = np.int64(src_len)
    l3_off = np.int64(l3_off)
    first_row = np.int64(first_row)
    if src_len < VNET_HDR_LEN or src_len > src.shape[0] or l3_off < 0:
        return ERR_MALFORMED
    flags = np.int64(src[VNET_FLAGS])
    gso = np.int64(src[VNET_GSO_TYPE])
    gso_size = _le16(src, VNET_GSO_SIZE)
    csum_start = _le16(src, VNET_CSUM_START)
    csum_offset = _le16(src, VNET_CSUM_OFFSET)
    if gso & GSO_ECN or (gso != GSO_NONE and gso != GSO_TCPV4):
        return ERR_UNSUPPORTED
    p = VNET_HDR_LEN
    plen = src_len - p
    rows = min(bufs.shape[0], lens.shape[0])
    cap = bufs.shape[1] - HEADROOM
    h = HEADROOM

    if gso == GSO_NONE:
        needs_csum = (flags & VNET_F_NEEDS_CSUM) != 0
        if plen <= 0 or (needs_csum and csum_start + csum_offset + 2 > plen):
            return ERR_MALFORMED
        if first_row < 0 or first_row >= rows or plen > cap:
            return ERR_NO_ROOM
        row = bufs[first_row]
        _copy(row, h, src, p, plen)
        if needs_csum:
            # The field holds the pseudo-header sum already (what the stack leaves for the NIC),
            # so summing from csum_start to the end gives the full checksum. 0 goes out as
            # 0xFFFF like skb_checksum_help (for UDP 0 would mean "no checksum").
            field = h + csum_start + csum_offset
            csum = ~_fold16(_sum16(row, h + csum_start, plen - csum_start)) & 0xFFFF
            _w16(row, field, csum if csum != 0 else 0xFFFF)
        lens[first_row] = plen
        return 1

    code, ihl, doff, tot = _tso_geometry(src, p, plen, l3_off, gso_size)
    if code != 0:
        return code
    payload = tot - ihl - doff
    nseg = max(1, (payload + gso_size - 1) // gso_size)
    hlen = l3_off + ihl + doff
    if first_row < 0 or first_row + nseg > rows or hlen + min(gso_size, payload) > cap:
        return ERR_NO_ROOM
    for i in range(nseg):
        lens[first_row + i] = _segment(src, p, l3_off, ihl, doff, tot, gso_size, i, nseg,
                                       bufs[first_row + i], h)
    return nseg


# ---- coalesce: FORWARD rows -> device writes ------------------------------------------------


@njit(cache=True, nogil=True)
def _classify(b, o, ln, l3_off):
    """(class, ip offset, ihl, doff, IP total length) of the packet b[o:o+ln]."""
    if ln < l3_off + 20:
        return _OTHER, 0, 0, 0, 0
    if l3_off == 14 and _u16(b, o + 12) != 0x0800:
        return _OTHER, 0, 0, 0, 0
    ip = o + l3_off
    ihl = (np.int64(b[ip]) & 0x0F) * 4
    if np.int64(b[ip]) >> 4 != 4 or ihl < 20 or np.int64(b[ip + 9]) != 6:
        return _OTHER, ip, 0, 0, 0
    tot = _u16(b, ip + 2)
    if tot < ihl or l3_off + tot > ln:
        return _OTHER, ip, 0, 0, 0
    if _u16(b, ip + 6) & 0x3FFF or tot < ihl + 20:
        return _TCP_NOPORTS, ip, ihl, 0, tot
    l4 = ip + ihl
    doff = (np.int64(b[l4 + 12]) >> 4) * 4
    if doff < 20 or ihl + doff > tot:
        return _TCP_ALONE, ip, ihl, 0, tot
    tflags = np.int64(b[l4 + 13])
    if (tflags & ~TCP_PSH) != TCP_ACK or tot - ihl - doff <= 0:
        return _TCP_ALONE, ip, ihl, doff, tot
    # Never merge what we cannot verify: the merged frame gets fresh checksums, which would
    # launder a corrupt segment, and a partial checksum would be summed into garbage.
    if _fold16(_sum16(b, ip, ihl)) != 0xFFFF:
        return _TCP_ALONE, ip, ihl, doff, tot
    if _fold16(_pseudo(b, ip, tot - ihl) + _sum16(b, l4, tot - ihl)) != 0xFFFF:
        return _TCP_ALONE, ip, ihl, doff, tot
    return _TCP_MERGE, ip, ihl, doff, tot


@njit(cache=True, nogil=True)
def _same_headers(b, o, ip, ihl, doff, u, l3_off):
    """Do the headers of b's packet match unit row u in every byte a merge keeps?

    Everything but IP length/id/checksum and TCP seq/flags/checksum must be equal: L2 header,
    version/IHL, TOS, DF, TTL, addresses, IP options, ports, ack, data offset, window, urgent
    pointer, TCP options. Flags are checked by the caller (ACK, PSH only on the last).
    """
    q = VNET_HDR_LEN
    for k in range(l3_off):
        if b[o + k] != u[q + k]:
            return False
    uip = q + l3_off
    if (np.int64(u[uip]) & 0x0F) * 4 != ihl:
        return False
    if b[ip] != u[uip] or b[ip + 1] != u[uip + 1] or b[ip + 6] != u[uip + 6]:
        return False
    if b[ip + 8] != u[uip + 8]:
        return False
    for k in range(12, ihl):
        if b[ip + k] != u[uip + k]:
            return False
    l4 = ip + ihl
    ul4 = uip + ihl
    if (np.int64(u[ul4 + 12]) >> 4) * 4 != doff:
        return False
    for k in range(doff):
        if 4 <= k < 8 or k == 13 or k == 16 or k == 17:  # seq, flags, checksum
            continue
        if b[l4 + k] != u[ul4 + k]:
            return False
    return True


@njit(cache=True, nogil=True)
def _finish_unit(u, ulen, nseg, gso_size, l3_off):
    """Give a unit its virtio_net_hdr; a merged unit gets fresh IP fields and a partial csum."""
    for k in range(VNET_HDR_LEN):
        u[k] = 0
    if nseg < 2:
        return
    ip = VNET_HDR_LEN + l3_off
    ihl = (np.int64(u[ip]) & 0x0F) * 4
    doff = (np.int64(u[ip + ihl + 12]) >> 4) * 4
    tot = ulen - VNET_HDR_LEN - l3_off
    _w16(u, ip + 2, tot)
    _ip_csum(u, ip, ihl)
    # CHECKSUM_PARTIAL form, as the stack leaves it for a NIC: the folded pseudo-header sum
    # (never 0, the protocol alone is nonzero); the kernel completes it per segment.
    _w16(u, ip + ihl + 16, _fold16(_pseudo(u, ip, tot - ihl)))
    u[VNET_FLAGS] = VNET_F_NEEDS_CSUM
    u[VNET_GSO_TYPE] = GSO_TCPV4
    _wle16(u, VNET_HDR_LEN_AT, l3_off + ihl + doff)
    _wle16(u, VNET_GSO_SIZE, gso_size)
    _wle16(u, VNET_CSUM_START, l3_off + ihl)
    _wle16(u, VNET_CSUM_OFFSET, 16)  # the TCP checksum field


@njit(cache=True, nogil=True)
def unit_segments(u, ulen):
    """How many packets the coalesce unit u[:ulen] carries (its header says TCPV4 if merged)."""
    if u[VNET_GSO_TYPE] != GSO_TCPV4:
        return 1
    hdr_len = _le16(u, VNET_HDR_LEN_AT)
    gso_size = _le16(u, VNET_GSO_SIZE)
    payload = np.int64(ulen) - VNET_HDR_LEN - hdr_len
    if gso_size <= 0 or payload <= 0:
        return 1
    return (payload + gso_size - 1) // gso_size


@njit(cache=True, nogil=True, inline="always")
def _forward_span(out_off, out_len, verdict, i, width):
    """(offset, length) of row i's packet if it is FORWARD and inside its row, else (0, -1).

    Both passes of coalesce take their rows through this, so the rows counted for room are
    exactly the rows written.
    """
    o = np.int64(out_off[i])
    ln = np.int64(out_len[i])
    if verdict[i] != 0 or o < 0 or ln < 0 or o + ln > width:
        return 0, -1
    return o, ln


# Rows of the per-unit scratch of coalesce_into (int64[UNIT_FIELDS, rows]).
_U_OPEN, _U_LEN, _U_RAW, _U_NSEG, _U_GSO, _U_SEQ, _U_SRC, _U_DST, _U_PORTS = range(9)
UNIT_FIELDS = 9


def new_unit_scratch(rows: int) -> np.ndarray:
    """The per-unit bookkeeping coalesce_into needs for up to `rows` units, allocated once."""
    return np.zeros((UNIT_FIELDS, rows), dtype=np.int64)


@njit(cache=True, nogil=True)
def coalesce(bufs, out_off, out_len, verdict, n, l3_off, out, out_lens):
    """coalesce_into with its scratch allocated here (tests, tools); the compiled loop keeps
    one scratch per direction and calls coalesce_into."""
    return coalesce_into(bufs, out_off, out_len, verdict, n, l3_off, out, out_lens,
                         np.zeros((UNIT_FIELDS, max(1, out.shape[0])), dtype=np.int64))


@njit(cache=True, nogil=True)
def coalesce_into(bufs, out_off, out_len, verdict, n, l3_off, out, out_lens, scratch):
    """Build device writes from the FORWARD rows among the first n; returns how many.

    Row i's packet is bufs[i, out_off[i] : out_off[i] + out_len[i]] (a row whose span is not
    inside the row is skipped). Each unit in out[m, :out_lens[m]] is a virtio_net_hdr + packet.
    TCP/IPv4 data segments of one flow that follow each other in row order (other flows may
    sit between them) are merged into one TSO super-frame when nothing is lost by doing so;
    everything else is written as is behind an all-zero header. Units are in order of their
    first packet, so each flow keeps its order. ERR_MALFORMED for l3_off < 0; ERR_NO_ROOM
    (nothing written) unless `out` has a row per FORWARD packet, each wide enough for it.
    `bufs` is only read; bytes of out[m] past out_lens[m] are scratch.
    """
    l3_off = np.int64(l3_off)
    n = max(0, min(np.int64(n), bufs.shape[0], out_off.shape[0], out_len.shape[0],
                   verdict.shape[0]))
    if l3_off < 0:
        return ERR_MALFORMED
    width = bufs.shape[1]
    m_cap = min(out.shape[0], out_lens.shape[0])
    uw = out.shape[1]
    need = 0
    for i in range(n):
        _, ln = _forward_span(out_off, out_len, verdict, i, width)
        if ln < 0:
            continue
        need += 1
        if VNET_HDR_LEN + ln > uw:
            return ERR_NO_ROOM
    if need > m_cap or need > scratch.shape[1]:
        return ERR_NO_ROOM

    # Per unit (rows of `scratch`, no allocation per batch): open for appending?, length as
    # merged, length as received, segments, gso size, next seq, flow key. Every field of a
    # unit is written when the unit is made, so nothing needs clearing between calls.
    u_open = scratch[_U_OPEN]
    u_len = scratch[_U_LEN]
    u_raw = scratch[_U_RAW]
    u_nseg = scratch[_U_NSEG]
    u_gso = scratch[_U_GSO]
    u_seq = scratch[_U_SEQ]
    u_src = scratch[_U_SRC]
    u_dst = scratch[_U_DST]
    u_ports = scratch[_U_PORTS]
    units = 0
    for i in range(n):
        o, ln = _forward_span(out_off, out_len, verdict, i, width)
        if ln < 0:
            continue
        b = bufs[i]
        cls, ip, ihl, doff, tot = _classify(b, o, ln, l3_off)
        src = 0
        dst = 0
        ports = 0
        if cls != _OTHER:
            src = _u32(b, ip + 12)
            dst = _u32(b, ip + 16)
        if cls == _TCP_ALONE or cls == _TCP_MERGE:
            ports = _u32(b, ip + ihl)
        if cls == _TCP_NOPORTS:
            for m in range(units):
                if u_open[m] and u_src[m] == src and u_dst[m] == dst:
                    u_open[m] = 0
        found = -1
        if cls == _TCP_ALONE or cls == _TCP_MERGE:
            for m in range(units):
                if u_open[m] and u_src[m] == src and u_dst[m] == dst and u_ports[m] == ports:
                    found = m
                    break
        if cls == _TCP_MERGE and found >= 0:
            u = out[found]
            payload = tot - ihl - doff
            seq = _u32(b, ip + ihl + 4)
            new_len = u_len[found] + payload
            if (seq == u_seq[found] and payload <= u_gso[found]
                    and u_nseg[found] < MAX_SEGMENTS
                    and new_len - VNET_HDR_LEN - l3_off <= MAX_IP_LEN and new_len <= uw
                    and _same_headers(b, o, ip, ihl, doff, u, l3_off)):
                body = ip + ihl + doff
                _copy(u, u_len[found], b, body, payload)
                u_len[found] = new_len
                u_nseg[found] += 1
                u_seq[found] = (seq + payload) & 0xFFFFFFFF
                tflags = np.int64(b[ip + ihl + 13])
                if tflags & TCP_PSH:
                    # Carried into the merged header as Linux GRO does, so that segmenting
                    # it again puts PSH on the last segment where it was.
                    uf = VNET_HDR_LEN + l3_off + ihl + 13
                    u[uf] = np.int64(u[uf]) | TCP_PSH
                    u_open[found] = 0
                if payload < u_gso[found]:
                    u_open[found] = 0
                continue
        if found >= 0:
            u_open[found] = 0  # a later segment must not jump ahead of this packet
        m = units
        units += 1
        u = out[m]
        _copy(u, VNET_HDR_LEN, b, o, ln)
        u_len[m] = VNET_HDR_LEN + ln
        u_raw[m] = VNET_HDR_LEN + ln
        u_nseg[m] = 1
        u_src[m] = src
        u_dst[m] = dst
        u_ports[m] = ports
        u_open[m] = 0
        u_gso[m] = 0
        u_seq[m] = 0
        if cls == _TCP_MERGE:
            payload = tot - ihl - doff
            u_len[m] = VNET_HDR_LEN + l3_off + tot  # padding, if any, is dropped on a merge
            u_gso[m] = payload
            u_seq[m] = (_u32(b, ip + ihl + 4) + payload) & 0xFFFFFFFF
            u_open[m] = (np.int64(b[ip + ihl + 13]) & TCP_PSH) == 0
    for m in range(units):
        if u_nseg[m] < 2:
            u_len[m] = u_raw[m]  # an unmerged packet goes out exactly as it came, padding too
        _finish_unit(out[m], u_len[m], u_nseg[m], u_gso[m], l3_off)
        out_lens[m] = u_len[m]
    return units
