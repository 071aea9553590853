"""GRO coalesce in numba: the FORWARD rows of a batch -> as few device writes as it can.

After the ingress kernel, `coalesce` turns the FORWARD rows back into device writes for a TUN/TAP
opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4): consecutive TCP/IPv4 data
segments of one flow become one TSO super-frame behind a virtio_net_hdr (vnet_hdr.py), as Linux
GRO merges them, and everything else goes out as it came behind an all-zero header. It never
raises, never reads outside the given lengths/offsets and never writes outside the units it
returns. gro_coalesce_twin.py holds the readable twin; tests keep them byte-identical.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_TYPE_AT,
    IP_MF_OFFSET,
    IPPROTO_TCP,
    IPV4_DST_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_MAX_LEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOS_AT,
    IPV4_TOT_LEN_AT,
    IPV4_TTL_AT,
    L4_SPORT_AT,
    TCP_ACK,
    TCP_CSUM_AT,
    TCP_FLAGS_AT,
    TCP_HLEN,
    TCP_PSH,
    TCP_SEQ_AT,
)
from weft.packet.offload.tso import (
    ERR_MALFORMED,
    ERR_NO_ROOM,
    UNIT_ROW,
    copy_bytes,
    ipv4_ihl,
    put_partial_tcp_csum,
    put_tso_header,
    set_ip_checksum,
    tcp_doff,
    tcp_pseudo_sum,
)
from weft.packet.offload.vnet_hdr import (
    GSO_TCPV4,
    VNET_GSO_SIZE,
    VNET_GSO_TYPE,
    VNET_HDR_LEN,
    VNET_HDR_LEN_AT,
)
from weft.packet.wirebytes import fold16, le16, sum16, u16, u32, w16

__all__ = ["MAX_SEGMENTS", "UNIT_FIELDS", "coalesce", "coalesce_into", "new_unit_scratch",
           "new_units", "unit_segments"]

MAX_SEGMENTS = 64  # per coalesced super-frame, as Linux GRO (MAX_GRO_SKBS) and UDP GSO

# Packet classes of coalesce (_classify).
_OTHER = 0  # not TCP/IPv4 (or not parseable as such): no flow, written as is
_TCP_ALONE = 1  # TCP with known ports that must not be merged: closes its flow's unit
_TCP_MERGE = 2  # a verified ACK(/PSH) data segment: may start or extend a unit
_TCP_NOPORTS = 3  # TCP fragment or truncated header: closes every unit of the address pair


def new_units(m: int) -> tuple[np.ndarray, np.ndarray]:
    """`out` and `out_lens` arrays for coalesce with room for m write units."""
    return np.zeros((m, UNIT_ROW), dtype=np.uint8), np.zeros(m, dtype=np.int32)


@njit(cache=True, nogil=True)
def _classify(b, o, ln, l3_off):
    """(class, ip offset, ihl, doff, IP total length) of the packet b[o:o+ln]."""
    if ln < l3_off + IPV4_HLEN:
        return _OTHER, 0, 0, 0, 0
    if l3_off == ETH_HLEN and u16(b, o + ETH_TYPE_AT) != ETH_P_IP:
        return _OTHER, 0, 0, 0, 0
    ip = o + l3_off
    ihl = ipv4_ihl(b, ip)
    if (np.int64(b[ip]) >> 4 != 4 or ihl < IPV4_HLEN
            or np.int64(b[ip + IPV4_PROTO_AT]) != IPPROTO_TCP):
        return _OTHER, ip, 0, 0, 0
    tot = u16(b, ip + IPV4_TOT_LEN_AT)
    if tot < ihl or l3_off + tot > ln:
        return _OTHER, ip, 0, 0, 0
    if u16(b, ip + IPV4_FRAG_AT) & IP_MF_OFFSET or tot < ihl + TCP_HLEN:
        return _TCP_NOPORTS, ip, ihl, 0, tot
    l4 = ip + ihl
    doff = tcp_doff(b, l4)
    if doff < TCP_HLEN or ihl + doff > tot:
        return _TCP_ALONE, ip, ihl, 0, tot
    tflags = np.int64(b[l4 + TCP_FLAGS_AT])
    if (tflags & ~TCP_PSH) != TCP_ACK or tot - ihl - doff <= 0:
        return _TCP_ALONE, ip, ihl, doff, tot
    # Never merge what we cannot verify: the merged frame gets fresh checksums, which would
    # launder a corrupt segment, and a partial checksum would be summed into garbage.
    if fold16(sum16(b, ip, ihl)) != 0xFFFF:
        return _TCP_ALONE, ip, ihl, doff, tot
    if fold16(tcp_pseudo_sum(b, ip, tot - ihl) + sum16(b, l4, tot - ihl)) != 0xFFFF:
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
    if ipv4_ihl(u, uip) != ihl:
        return False
    if b[ip] != u[uip] or b[ip + IPV4_TOS_AT] != u[uip + IPV4_TOS_AT]:
        return False
    # DF: the first byte of the flags/offset field (the rest is 0 in what _classify merges)
    if b[ip + IPV4_FRAG_AT] != u[uip + IPV4_FRAG_AT]:
        return False
    if b[ip + IPV4_TTL_AT] != u[uip + IPV4_TTL_AT]:
        return False
    for k in range(IPV4_SRC_AT, ihl):  # addresses and options
        if b[ip + k] != u[uip + k]:
            return False
    l4 = ip + ihl
    ul4 = uip + ihl
    if tcp_doff(u, ul4) != doff:
        return False
    for k in range(doff):
        # seq, flags, checksum (the checksum as two equalities: a chained range test here made
        # coalesce ~2% slower)
        if (TCP_SEQ_AT <= k < TCP_SEQ_AT + 4 or k == TCP_FLAGS_AT or k == TCP_CSUM_AT
                or k == TCP_CSUM_AT + 1):
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
    ihl = ipv4_ihl(u, ip)
    doff = tcp_doff(u, ip + ihl)
    tot = ulen - VNET_HDR_LEN - l3_off
    w16(u, ip + IPV4_TOT_LEN_AT, tot)
    set_ip_checksum(u, ip, ihl)
    put_partial_tcp_csum(u, ip, ihl, tot)  # the kernel completes it per segment
    put_tso_header(u, 0, l3_off + ihl + doff, gso_size, l3_off + ihl)


@njit(cache=True, nogil=True)
def unit_segments(u, ulen):
    """How many packets the coalesce unit u[:ulen] carries (its header says TCPV4 if merged)."""
    if u[VNET_GSO_TYPE] != GSO_TCPV4:
        return 1
    hdr_len = le16(u, VNET_HDR_LEN_AT)
    gso_size = le16(u, VNET_GSO_SIZE)
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


@njit(cache=True, nogil=True, inline="always")
def _units_fit(out_off, out_len, verdict, n, width, out, out_lens, scratch):
    """0 when `out` and `scratch` have a row per FORWARD packet among the first n, each row of
    `out` wide enough for its virtio header + packet; else ERR_NO_ROOM."""
    uw = out.shape[1]
    need = 0
    for i in range(n):
        _, ln = _forward_span(out_off, out_len, verdict, i, width)
        if ln < 0:
            continue
        need += 1
        if VNET_HDR_LEN + ln > uw:
            return ERR_NO_ROOM
    if need > min(out.shape[0], out_lens.shape[0]) or need > scratch.shape[1]:
        return ERR_NO_ROOM
    return 0


@njit(cache=True, nogil=True, inline="always")
def _flow_key(b, cls, ip, ihl):
    """(source IP, destination IP, both ports as one u32) of a classified packet; 0 for what
    its class does not have."""
    src = 0
    dst = 0
    ports = 0
    if cls != _OTHER:
        src = u32(b, ip + IPV4_SRC_AT)
        dst = u32(b, ip + IPV4_DST_AT)
    if cls == _TCP_ALONE or cls == _TCP_MERGE:
        ports = u32(b, ip + ihl + L4_SPORT_AT)  # source and destination port
    return src, dst, ports


@njit(cache=True, nogil=True, inline="always")
def _close_address_pair(scratch, units, src, dst):
    """Close every open unit between src and dst (a TCP packet whose ports are unknown)."""
    for m in range(units):
        if scratch[_U_OPEN, m] and scratch[_U_SRC, m] == src and scratch[_U_DST, m] == dst:
            scratch[_U_OPEN, m] = 0


@njit(cache=True, nogil=True, inline="always")
def _open_unit_of(scratch, units, src, dst, ports):
    """The open unit of this TCP flow, or -1."""
    for m in range(units):
        if (scratch[_U_OPEN, m] and scratch[_U_SRC, m] == src and scratch[_U_DST, m] == dst
                and scratch[_U_PORTS, m] == ports):
            return m
    return -1


@njit(cache=True, nogil=True, inline="always")
def _append_segment(b, o, ip, ihl, doff, tot, u, scratch, m, l3_off):
    """Append a data segment's payload to unit m when it continues the flow exactly and the
    unit has room; returns whether it did (else nothing is changed)."""
    payload = tot - ihl - doff
    seq = u32(b, ip + ihl + TCP_SEQ_AT)
    new_len = scratch[_U_LEN, m] + payload
    if not (seq == scratch[_U_SEQ, m] and payload <= scratch[_U_GSO, m]
            and scratch[_U_NSEG, m] < MAX_SEGMENTS
            and new_len - VNET_HDR_LEN - l3_off <= IPV4_MAX_LEN and new_len <= u.shape[0]
            and _same_headers(b, o, ip, ihl, doff, u, l3_off)):
        return False
    copy_bytes(u, scratch[_U_LEN, m], b, ip + ihl + doff, payload)
    scratch[_U_LEN, m] = new_len
    scratch[_U_NSEG, m] += 1
    scratch[_U_SEQ, m] = (seq + payload) & 0xFFFFFFFF
    tflags = np.int64(b[ip + ihl + TCP_FLAGS_AT])
    if tflags & TCP_PSH:
        # Carried into the merged header as Linux GRO does, so that segmenting it again puts
        # PSH on the last segment where it was.
        uf = VNET_HDR_LEN + l3_off + ihl + TCP_FLAGS_AT
        u[uf] = np.int64(u[uf]) | TCP_PSH
        scratch[_U_OPEN, m] = 0
    if payload < scratch[_U_GSO, m]:
        scratch[_U_OPEN, m] = 0
    return True


@njit(cache=True, nogil=True, inline="always")
def _start_unit(b, o, ln, cls, ip, ihl, doff, tot, src, dst, ports, u, scratch, m, l3_off):
    """Unit m := this packet behind a virtio header; open for appending if it may merge."""
    copy_bytes(u, VNET_HDR_LEN, b, o, ln)
    scratch[_U_LEN, m] = VNET_HDR_LEN + ln
    scratch[_U_RAW, m] = VNET_HDR_LEN + ln
    scratch[_U_NSEG, m] = 1
    scratch[_U_SRC, m] = src
    scratch[_U_DST, m] = dst
    scratch[_U_PORTS, m] = ports
    scratch[_U_OPEN, m] = 0
    scratch[_U_GSO, m] = 0
    scratch[_U_SEQ, m] = 0
    if cls == _TCP_MERGE:
        payload = tot - ihl - doff
        scratch[_U_LEN, m] = VNET_HDR_LEN + l3_off + tot  # padding, if any, is dropped on a merge
        scratch[_U_GSO, m] = payload
        scratch[_U_SEQ, m] = (u32(b, ip + ihl + TCP_SEQ_AT) + payload) & 0xFFFFFFFF
        scratch[_U_OPEN, m] = (np.int64(b[ip + ihl + TCP_FLAGS_AT]) & TCP_PSH) == 0


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

    Per unit, `scratch` (no allocation per batch) holds: open for appending?, length as
    merged, length as received, segments, gso size, next seq, flow key. Every field of a unit
    is written when the unit is made, so nothing needs clearing between calls.
    """
    l3_off = np.int64(l3_off)
    n = max(0, min(np.int64(n), bufs.shape[0], out_off.shape[0], out_len.shape[0],
                   verdict.shape[0]))
    if l3_off < 0:
        return ERR_MALFORMED
    width = bufs.shape[1]
    if _units_fit(out_off, out_len, verdict, n, width, out, out_lens, scratch) != 0:
        return ERR_NO_ROOM
    units = 0
    for i in range(n):
        o, ln = _forward_span(out_off, out_len, verdict, i, width)
        if ln < 0:
            continue
        b = bufs[i]
        cls, ip, ihl, doff, tot = _classify(b, o, ln, l3_off)
        src, dst, ports = _flow_key(b, cls, ip, ihl)
        if cls == _TCP_NOPORTS:
            _close_address_pair(scratch, units, src, dst)
        found = -1
        if cls == _TCP_ALONE or cls == _TCP_MERGE:
            found = _open_unit_of(scratch, units, src, dst, ports)
        if cls == _TCP_MERGE and found >= 0:
            if _append_segment(b, o, ip, ihl, doff, tot, out[found], scratch, found, l3_off):
                continue
        if found >= 0:
            scratch[_U_OPEN, found] = 0  # a later segment must not jump ahead of this packet
        _start_unit(b, o, ln, cls, ip, ihl, doff, tot, src, dst, ports, out[units], scratch,
                    units, l3_off)
        units += 1
    for m in range(units):
        if scratch[_U_NSEG, m] < 2:
            scratch[_U_LEN, m] = scratch[_U_RAW, m]  # unmerged: out exactly as it came, padding too
        _finish_unit(out[m], scratch[_U_LEN, m], scratch[_U_NSEG, m], scratch[_U_GSO, m], l3_off)
        out_lens[m] = scratch[_U_LEN, m]
    return units
