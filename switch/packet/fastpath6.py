"""numba batch kernels of the IPv6 half (flannel-v6.<VNI>): IPv6 frames over an IPv6 underlay.

The row is weft.packet.encap.VXLAN6: the egress output is the VXLAN header + the inner frame
(written into the headroom), and an AF_INET6 UDP socket adds the outer IPv6 + UDP, so the outer
UDP checksum is the kernel's; ingress gets the UDP payload and the sender's address. Each row
sits in a Batch as the IPv4 kernels' rows do (weft.packet.fastpath), but the per-row addresses
are 16 bytes (Batch.src_ip6, Batch.dst_ip6) and the peer table is weft.packet.table6's. Every
input gets one verdict and one reason, counted in rows PATH_VXLAN6_*; fastpath6_twin.py is the
readable twin and the specification.

What the kernel says on the device about itself (neighbour discovery, MLD, router
solicitations, link-local traffic) is dropped and counted, never carried: flannel's
flannel-v6.<VNI> is a nolearning device with permanent neighbours, so nothing there needs an
answer. Hop limit: as the kernel's VXLAN device, the tunnel does not decrement it (the host's
forwarding did, before the packet reached the device).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.batch import HEADROOM, Batch
from weft.packet.counters import (
    PATH_VXLAN6_EGRESS,
    PATH_VXLAN6_INGRESS,
    SLOT_CSUM_COMPLETED,
    SLOT_RX_BYTES,
    SLOT_RX_PACKETS,
    SLOT_TX_BYTES,
    SLOT_TX_PACKETS,
    SLOT_VERDICT,
)
from weft.packet.headers import (
    ETH_ALEN,
    ETH_DST_AT,
    ETH_HLEN,
    ETH_P_IPV6,
    ETH_SRC_AT,
    ETH_TYPE_AT,
    ICMPV6_TYPE_AT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_ALEN,
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
    VXLAN_FLAGS_AT,
    VXLAN_HLEN,
    VXLAN_VNI_AT,
)
from weft.packet.reasons import Reason, Verdict
from weft.packet.table6 import (
    CFG6_LOCAL_INDEX,
    CFG6_LOCAL_VTEP_MAC,
    CFG6_MASK_HI,
    CFG6_MASK_LO,
    CFG6_MTU,
    CFG6_NET_HI,
    CFG6_NET_LO,
    CFG6_SUBNET_SHIFT,
    CFG6_VNI,
    PeerTable6,
)
from weft.packet.wirebytes import fold16 as _fold16
from weft.packet.wirebytes import sum16 as _sum16
from weft.packet.wirebytes import u8 as _u8
from weft.packet.wirebytes import u16 as _u16
from weft.packet.wirebytes import u32 as _u32
from weft.packet.wirebytes import w16 as _w16

_FORWARD = int(Verdict.FORWARD)
_DROP = int(Verdict.DROP)
_SLOW = int(Verdict.SLOW)
_OK = int(Reason.OK)
_TRUNCATED = int(Reason.TRUNCATED)
_BAD_IP_HEADER = int(Reason.BAD_IP_HEADER)
_BAD_VXLAN_FLAGS = int(Reason.BAD_VXLAN_FLAGS)
_WRONG_VNI = int(Reason.WRONG_VNI)
_SPOOFED_INNER_SRC = int(Reason.SPOOFED_INNER_SRC)
_NOT_FOR_US = int(Reason.NOT_FOR_US)
_NO_ROUTE = int(Reason.NO_ROUTE)
_OUTSIDE_NETWORK = int(Reason.OUTSIDE_NETWORK)
_FRAG_NEEDED = int(Reason.FRAG_NEEDED)  # the slow path answers ICMPv6 Packet Too Big
_MULTICAST = int(Reason.MULTICAST)
_WRONG_INNER_MAC = int(Reason.WRONG_INNER_MAC)
_LOCAL_DST = int(Reason.LOCAL_DST)
_PEER_LOOKUP_MISS = int(Reason.PEER_LOOKUP_MISS)
_NDP = int(Reason.NDP)
_MLD = int(Reason.MLD)
_NOT_IPV6 = int(Reason.NOT_IPV6)
_LINK_LOCAL = int(Reason.LINK_LOCAL)

# ICMPv6 types (RFC 4443, 4861, 2710, 3810) the kernel sends about itself
ND_FIRST, ND_LAST = 133, 137  # router/neighbour solicitation and advertisement, redirect
MLD_TYPES = (130, 131, 132, 143)  # query, v1 report, done, v2 report


class Batch6Arrays(NamedTuple):
    """A Batch's arrays as the IPv6 kernels read them: 16-byte addresses per row."""

    bufs: np.ndarray
    lens: np.ndarray
    src_ip6: np.ndarray  # ingress: the outer sender, 16 bytes a row
    out_off: np.ndarray
    out_len: np.ndarray
    verdict: np.ndarray
    reason: np.ndarray
    dst_ip6: np.ndarray  # egress FORWARD: the peer's PublicIPv6


class Peer6Arrays(NamedTuple):
    present: np.ndarray
    public_ip6: np.ndarray
    vtep_mac: np.ndarray


def batch6_arrays(batch: Batch) -> Batch6Arrays:
    return Batch6Arrays(batch.bufs, batch.lens, batch.src_ip6, batch.out_off, batch.out_len,
                        batch.verdict, batch.reason, batch.dst_ip6)


def peer6_arrays(table: PeerTable6) -> Peer6Arrays:
    return Peer6Arrays(table.present, table.public_ip6, table.vtep_mac)


@njit(cache=True, nogil=True)
def _subnet_index6(b, at, cfg, n_subnets):
    """Subnet number of the IPv6 address at b[at:], -1 outside the network."""
    hi = _u32(b, at)
    lo = _u32(b, at + 4)
    if (hi & cfg[CFG6_MASK_HI]) != cfg[CFG6_NET_HI] or (lo & cfg[CFG6_MASK_LO]) != cfg[CFG6_NET_LO]:
        return -1
    off = ((hi & ~cfg[CFG6_MASK_HI] & 0xFFFFFFFF) << 32) | (lo & ~cfg[CFG6_MASK_LO] & 0xFFFFFFFF)
    idx = off >> cfg[CFG6_SUBNET_SHIFT]
    return idx if idx < n_subnets else -1


@njit(cache=True, nogil=True)
def _link_local(b, at):
    return _u8(b, at) == 0xFE and (_u8(b, at + 1) & 0xC0) == 0x80  # fe80::/10


@njit(cache=True, nogil=True)
def _control_reason(b, ip, total):
    """NDP/MLD/multicast/link-local: the kernel's talk on the link, never carried; else OK."""
    nxt = _u8(b, ip + IPV6_NEXT_AT)
    if nxt == IPPROTO_ICMPV6 and total > IPV6_HLEN:
        t = _u8(b, ip + IPV6_HLEN + ICMPV6_TYPE_AT)
        if ND_FIRST <= t <= ND_LAST:
            return _NDP
        if t == 130 or t == 131 or t == 132 or t == 143:
            return _MLD
    multicast = _u8(b, ip + IPV6_DST_AT) == 0xFF
    if multicast and nxt == IPPROTO_HOPOPTS:  # MLD behind its router-alert option
        return _MLD
    if multicast:
        return _MULTICAST
    if _link_local(b, ip + IPV6_SRC_AT) or _link_local(b, ip + IPV6_DST_AT):
        return _LINK_LOCAL
    return _OK


@njit(cache=True, nogil=True)
def _ipv6_total(b, ip, avail):
    """(reason, fixed header + payload length) of the IPv6 header at b[ip:], avail readable."""
    if avail < IPV6_HLEN:
        return _TRUNCATED, 0
    if (_u8(b, ip) >> 4) != IPV6_VERSION:
        return _BAD_IP_HEADER, 0
    total = IPV6_HLEN + _u16(b, ip + IPV6_PLEN_AT)
    if total > avail:
        return _TRUNCATED, 0
    return _OK, total


@njit(cache=True, nogil=True)
def _egress_one(b, ln, cap, cfg, present, public_ip6, vtep_mac, dst_row):
    """(verdict, reason, out offset, out length) of one TAP frame; FORWARD fills dst_row."""
    h = HEADROOM
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, h, 0
    if ln < ETH_HLEN:
        return _DROP, _TRUNCATED, h, ln
    if _u16(b, h + ETH_TYPE_AT) != ETH_P_IPV6:
        return _DROP, _NOT_IPV6, h, ln
    ip = h + ETH_HLEN
    r, total = _ipv6_total(b, ip, ln - ETH_HLEN)
    if r != _OK:
        return _DROP, r, h, ln
    r = _control_reason(b, ip, total)
    if r != _OK:
        return _DROP, r, h, ln
    if _u8(b, h + ETH_DST_AT) & 1:
        return _DROP, _MULTICAST, h, ln
    idx = _subnet_index6(b, ip + IPV6_DST_AT, cfg, present.shape[0])
    if idx < 0:
        return _SLOW, _OUTSIDE_NETWORK, h, ln
    if idx == cfg[CFG6_LOCAL_INDEX]:
        return _DROP, _LOCAL_DST, h, ln
    if present[idx] == 0:
        return _SLOW, _NO_ROUTE, h, ln
    if total > cfg[CFG6_MTU]:  # no fragmenting in IPv6: Packet Too Big from the slow path
        return _SLOW, _FRAG_NEEDED, h, ln
    known = False
    for k in range(ETH_ALEN):
        if vtep_mac[idx, k] != 0:
            known = True
    if not known:
        return _DROP, _PEER_LOOKUP_MISS, h, ln
    # FORWARD: from here on the row is modified.
    local_mac = cfg[CFG6_LOCAL_VTEP_MAC]
    for k in range(ETH_ALEN):
        b[h + ETH_DST_AT + k] = vtep_mac[idx, k]
        b[h + ETH_SRC_AT + k] = (local_mac >> (40 - 8 * k)) & 0xFF
    x = h - VXLAN_HLEN
    vni = cfg[CFG6_VNI]
    b[x + VXLAN_FLAGS_AT] = VXLAN_FLAG_I
    b[x + VXLAN_FLAGS_AT + 1] = 0
    b[x + VXLAN_FLAGS_AT + 2] = 0
    b[x + VXLAN_FLAGS_AT + 3] = 0
    b[x + VXLAN_VNI_AT] = (vni >> 16) & 0xFF
    b[x + VXLAN_VNI_AT + 1] = (vni >> 8) & 0xFF
    b[x + VXLAN_VNI_AT + 2] = vni & 0xFF
    b[x + VXLAN_VNI_AT + 3] = 0
    for k in range(IPV6_ALEN):
        dst_row[k] = public_ip6[idx, k]
    # Ethernet padding past the IPv6 packet is not carried, as on the IPv4 path.
    return _FORWARD, _OK, x, VXLAN_HLEN + ETH_HLEN + total


@njit(cache=True, nogil=True)
def _ingress_one(b, ln, cap, sender, cfg, present, public_ip6):
    """(verdict, reason, out offset, out length) of one UDP payload from `sender` (16 bytes)."""
    h = HEADROOM
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, h, 0
    if ln < VXLAN_HLEN + ETH_HLEN:
        return _DROP, _TRUNCATED, h, ln
    if (_u8(b, h + VXLAN_FLAGS_AT) & VXLAN_FLAG_I) == 0:
        return _DROP, _BAD_VXLAN_FLAGS, h, ln
    if (_u32(b, h + VXLAN_VNI_AT) >> 8) != cfg[CFG6_VNI]:
        return _DROP, _WRONG_VNI, h, ln
    e = h + VXLAN_HLEN
    if _u16(b, e + ETH_TYPE_AT) != ETH_P_IPV6:
        return _DROP, _NOT_IPV6, h, ln
    ip = e + ETH_HLEN
    r, total = _ipv6_total(b, ip, ln - VXLAN_HLEN - ETH_HLEN)
    if r != _OK:
        return _DROP, r, h, ln
    # The sender must be the PublicIPv6 leased with the inner source's subnet.
    src = _subnet_index6(b, ip + IPV6_SRC_AT, cfg, present.shape[0])
    if src < 0 or src == cfg[CFG6_LOCAL_INDEX] or present[src] == 0:
        return _DROP, _SPOOFED_INNER_SRC, h, ln
    for k in range(IPV6_ALEN):
        if public_ip6[src, k] != sender[k]:
            return _DROP, _SPOOFED_INNER_SRC, h, ln
    local = cfg[CFG6_LOCAL_INDEX]
    if local < 0 or _subnet_index6(b, ip + IPV6_DST_AT, cfg, present.shape[0]) != local:
        return _DROP, _NOT_FOR_US, h, ln
    dmac = (_u16(b, e + ETH_DST_AT) << 32) | _u32(b, e + ETH_DST_AT + 2)
    if dmac != cfg[CFG6_LOCAL_VTEP_MAC]:
        return _DROP, _WRONG_INNER_MAC, h, ln
    return _FORWARD, _OK, e, ln - VXLAN_HLEN


@njit(cache=True, nogil=True)
def _complete_partial_l4_csum6(b, ip):
    """Finish an inner TCP/UDP checksum left CHECKSUM_PARTIAL by the sender's kernel (the
    IPv6 form of fastpath._complete_partial_l4_csum: the field holds the folded pseudo-header
    sum over both addresses); True if written. Only a TCP/UDP header right after the fixed
    header is looked at."""
    nxt = _u8(b, ip + IPV6_NEXT_AT)
    room = _u16(b, ip + IPV6_PLEN_AT)
    l4 = ip + IPV6_HLEN
    if nxt == IPPROTO_TCP:
        if room < TCP_HLEN:
            return False
        l4len = room
        field = l4 + TCP_CSUM_AT
    elif nxt == IPPROTO_UDP:
        if room < UDP_HLEN:
            return False
        l4len = _u16(b, l4 + UDP_LEN_AT)
        if l4len < UDP_HLEN or l4len > room:
            return False
        field = l4 + UDP_CSUM_AT
    else:
        return False
    pseudo = _fold16(_sum16(b, ip + IPV6_SRC_AT, 2 * IPV6_ALEN) + nxt + l4len)
    seg = _sum16(b, l4, l4len)
    if _fold16(pseudo + seg) == 0xFFFF or _u16(b, field) != pseudo:
        return False
    csum = ~_fold16(seg) & 0xFFFF
    _w16(b, field, csum if csum != 0 else 0xFFFF)
    return True


@njit(cache=True, nogil=True)
def _record(b, counters, path, i, v, r, off, olen, ln):
    b.out_off[i] = off
    b.out_len[i] = olen
    b.verdict[i] = v
    b.reason[i] = r
    one = np.uint64(1)
    counters[path, r] += one
    counters[path, SLOT_VERDICT + v] += one
    counters[path, SLOT_RX_PACKETS] += one
    if ln > 0:
        counters[path, SLOT_RX_BYTES] += np.uint64(ln)
    if v == _FORWARD:
        counters[path, SLOT_TX_PACKETS] += one
        counters[path, SLOT_TX_BYTES] += np.uint64(olen)


@njit(cache=True, nogil=True)
def _rows(n, b):
    m = min(n, b.bufs.shape[0], b.lens.shape[0], b.out_off.shape[0], b.out_len.shape[0])
    m = min(m, b.verdict.shape[0], b.reason.shape[0], b.dst_ip6.shape[0], b.src_ip6.shape[0])
    return max(0, m), b.bufs.shape[1] - HEADROOM


@njit(cache=True, nogil=True)
def vxlan6_egress(n, b, peers, cfg, counters):
    """Encapsulate the n IPv6 frames read from the v6 TAP; returns how many are FORWARD."""
    n, cap = _rows(n, b)
    forwarded = 0
    for i in range(n):
        ln = np.int64(b.lens[i])
        v, r, off, olen = _egress_one(b.bufs[i], ln, cap, cfg, peers.present, peers.public_ip6,
                                      peers.vtep_mac, b.dst_ip6[i])
        if v == _FORWARD:
            forwarded += 1
        _record(b, counters, PATH_VXLAN6_EGRESS, i, v, r, off, olen, ln)
    return forwarded


@njit(cache=True, nogil=True)
def vxlan6_ingress(n, b, peers, cfg, counters):
    """Check and decapsulate n VXLAN payloads, row i sent by b.src_ip6[i]; returns # FORWARD."""
    n, cap = _rows(n, b)
    forwarded = 0
    for i in range(n):
        ln = np.int64(b.lens[i])
        v, r, off, olen = _ingress_one(b.bufs[i], ln, cap, b.src_ip6[i], cfg, peers.present,
                                       peers.public_ip6)
        if v == _FORWARD:
            forwarded += 1
            if _complete_partial_l4_csum6(b.bufs[i], off + ETH_HLEN):
                counters[PATH_VXLAN6_INGRESS, SLOT_CSUM_COMPLETED] += np.uint64(1)
        _record(b, counters, PATH_VXLAN6_INGRESS, i, v, r, off, olen, ln)
    return forwarded
