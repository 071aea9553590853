"""What every offload kernel knows about a TCP/IPv4 super-frame, in numba: whether a frame is one
(tso_geometry), how its segment i is written (write_segment), and the checksum and virtio-header
forms a super-frame travels in. tso_split.py, gro_coalesce.py, tunnel.py and udp_gro.py build on
these; tso_twin.py holds the readable twins.

A TSO super-frame is one IPv4/TCP packet of up to 64 KiB whose payload the receiver of the
frame (the kernel, or split_super) cuts into gso_size-byte segments, each with its own IP
length/id/checksum and TCP seq/flags/checksum. Arithmetic is int64 as in fastpath.py, so the
same code runs under NUMBA_DISABLE_JIT=1.
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
    IPV4_CSUM_AT,
    IPV4_DST_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_ID_AT,
    IPV4_MAX_LEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOT_LEN_AT,
    TCP_CSUM_AT,
    TCP_CWR,
    TCP_DOFF_AT,
    TCP_FIN,
    TCP_FLAGS_AT,
    TCP_HLEN,
    TCP_PSH,
    TCP_SEQ_AT,
)
from weft.packet.offload.vnet_hdr import (
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
from weft.packet.wirebytes import fold16, sum16, u16, u32, w16, w32, wle16

__all__ = ["ERR_MALFORMED", "ERR_NO_ROOM", "ERR_UNSUPPORTED", "UNIT_ROW", "copy_bytes",
           "ipv4_ihl", "put_partial_tcp_csum", "put_tso_header", "set_ip_checksum",
           "tcp_doff", "tcp_pseudo_sum", "tso_geometry", "write_segment"]

# Negative return codes of split_super and coalesce; callers drop and count by code.
ERR_MALFORMED = -1  # headers inconsistent or truncated
ERR_NO_ROOM = -2  # the output rows (number or width) cannot hold the result
ERR_UNSUPPORTED = -3  # well-formed but not ours: gso UDP/TCPV6/UDP_L4/ECN, not IPv4/TCP for TSO

# Room for one device read or write in offload mode: virtio header + Ethernet + the largest
# IP packet, rounded up.
UNIT_ROW = 65536 + 64
assert UNIT_ROW >= VNET_HDR_LEN + ETH_HLEN + IPV4_MAX_LEN


@njit(cache=True, nogil=True, inline="always")
def copy_bytes(dst, do, src, so, n):
    """dst[do:do+n] = src[so:so+n] (no overlap). A loop over views indexed from 0 compiles to a
    vectorized copy; numba's slice assignment takes a generic path about 15x slower."""
    d = dst[do : do + n]
    s = src[so : so + n]
    for k in range(n):
        d[k] = s[k]


@njit(cache=True, nogil=True, inline="always")
def ipv4_ihl(b, ip):
    """The length of the IPv4 header at b[ip:] from its IHL."""
    return (np.int64(b[ip]) & 0x0F) * 4


@njit(cache=True, nogil=True, inline="always")
def tcp_doff(b, l4):
    """The length of the TCP header at b[l4:] from its data offset."""
    return (np.int64(b[l4 + TCP_DOFF_AT]) >> 4) * 4


@njit(cache=True, nogil=True, inline="always")
def tcp_pseudo_sum(b, ip, l4len):
    """Unfolded IPv4 pseudo-header sum for TCP: addresses, protocol 6, TCP length."""
    return (u16(b, ip + IPV4_SRC_AT) + u16(b, ip + IPV4_SRC_AT + 2) + u16(b, ip + IPV4_DST_AT)
            + u16(b, ip + IPV4_DST_AT + 2) + IPPROTO_TCP + l4len)


@njit(cache=True, nogil=True)
def set_ip_checksum(b, ip, ihl):
    """Zero and rewrite the IPv4 header checksum."""
    w16(b, ip + IPV4_CSUM_AT, 0)
    w16(b, ip + IPV4_CSUM_AT, ~fold16(sum16(b, ip, ihl)) & 0xFFFF)


@njit(cache=True, nogil=True)
def put_partial_tcp_csum(b, ip, ihl, tot):
    """CHECKSUM_PARTIAL form, as the stack leaves it for a NIC: the folded pseudo-header sum of
    the whole super-frame in its TCP checksum field (never 0, the protocol alone is nonzero);
    whoever cuts the frame completes it per segment."""
    w16(b, ip + ihl + TCP_CSUM_AT, fold16(tcp_pseudo_sum(b, ip, tot - ihl)))


@njit(cache=True, nogil=True)
def put_tso_header(b, at, hdr_len, gso_size, csum_start):
    """The virtio_net_hdr of a TCPV4 super-frame at b[at:]: NEEDS_CSUM, the TCP checksum field
    at csum_start + its offset in the TCP header."""
    for k in range(VNET_HDR_LEN):
        b[at + k] = 0
    b[at + VNET_FLAGS] = VNET_F_NEEDS_CSUM
    b[at + VNET_GSO_TYPE] = GSO_TCPV4
    wle16(b, at + VNET_HDR_LEN_AT, hdr_len)
    wle16(b, at + VNET_GSO_SIZE, gso_size)
    wle16(b, at + VNET_CSUM_START, csum_start)
    wle16(b, at + VNET_CSUM_OFFSET, TCP_CSUM_AT)


@njit(cache=True, nogil=True)
def tso_geometry(src, p, plen, l3_off, gso_size):
    """(code, ihl, doff, tot) of a TCPV4 super-frame at src[p:p+plen]; code 0 when usable.

    hdr_len is deliberately not used: tun fills it with skb_headlen() ("a hint as to how much
    should be linear"), which may include payload, so the header length comes from IHL and the
    TCP data offset, each checked against the bytes present.
    """
    if plen < l3_off + IPV4_HLEN:
        return ERR_MALFORMED, 0, 0, 0
    # Ethernet: IPv4 only (no VLAN tags)
    if l3_off == ETH_HLEN and u16(src, p + ETH_TYPE_AT) != ETH_P_IP:
        return ERR_UNSUPPORTED, 0, 0, 0
    ip = p + l3_off
    if np.int64(src[ip]) >> 4 != 4:
        return ERR_UNSUPPORTED, 0, 0, 0
    ihl = ipv4_ihl(src, ip)
    if ihl < IPV4_HLEN:
        return ERR_MALFORMED, 0, 0, 0
    if np.int64(src[ip + IPV4_PROTO_AT]) != IPPROTO_TCP:
        return ERR_UNSUPPORTED, 0, 0, 0
    tot = u16(src, ip + IPV4_TOT_LEN_AT)
    # Bytes past the IP total length (none from a real TAP) are ignored, like Ethernet padding.
    if tot < ihl + TCP_HLEN or l3_off + tot > plen:
        return ERR_MALFORMED, 0, 0, 0
    if u16(src, ip + IPV4_FRAG_AT) & IP_MF_OFFSET:  # a fragment cannot be a TSO frame
        return ERR_MALFORMED, 0, 0, 0
    doff = tcp_doff(src, ip + ihl)
    if doff < TCP_HLEN or ihl + doff > tot:
        return ERR_MALFORMED, 0, 0, 0
    if gso_size <= 0:
        return ERR_MALFORMED, 0, 0, 0
    return 0, ihl, doff, tot


@njit(cache=True, nogil=True)
def write_segment(src, p, l3_off, ihl, doff, tot, gso_size, i, nseg, row, h):
    """Write segment i of nseg of the super-frame at src[p:] into row[h:]; returns its length."""
    hlen = l3_off + ihl + doff
    payload = tot - ihl - doff
    start = i * gso_size
    seglen = min(gso_size, payload - start)
    copy_bytes(row, h, src, p, hlen)
    copy_bytes(row, h + hlen, src, p + hlen + start, seglen)
    ip = h + l3_off
    l4 = ip + ihl
    w16(row, ip + IPV4_TOT_LEN_AT, ihl + doff + seglen)
    w16(row, ip + IPV4_ID_AT, (u16(src, p + l3_off + IPV4_ID_AT) + i) & 0xFFFF)
    set_ip_checksum(row, ip, ihl)
    w32(row, l4 + TCP_SEQ_AT, (u32(src, p + l3_off + ihl + TCP_SEQ_AT) + start) & 0xFFFFFFFF)
    flags = np.int64(src[p + l3_off + ihl + TCP_FLAGS_AT])
    if i != nseg - 1:
        flags &= ~(TCP_FIN | TCP_PSH) & 0xFF  # a FIN or a push belongs to the last byte only
    if i != 0:
        flags &= ~TCP_CWR & 0xFF  # the window reduction was signalled once, with the first
    row[l4 + TCP_FLAGS_AT] = flags
    w16(row, l4 + TCP_CSUM_AT, 0)
    total = tcp_pseudo_sum(row, ip, doff + seglen) + sum16(row, l4, doff + seglen)
    w16(row, l4 + TCP_CSUM_AT, ~fold16(total) & 0xFFFF)
    return hlen + seglen
