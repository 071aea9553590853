"""numba batch kernels: encapsulate and decapsulate whole batches of packets in place.

A kernel takes the arrays in the named groups of pipeline_steps and reads each by its name: the
batch `b` (BatchArrays), the peer table `peers` (PeerArrays) and `state` (PipelineState: the
config slots and the counters). Every input packet sits in one row of `b.bufs` starting at
HEADROOM (batch.py: the Batch those rows belong to) with length `b.lens[i]`, so the 36 bytes of
outer IPv4 + UDP + VXLAN are written into the headroom without copying the frame. Each input
gets exactly one verdict and one reason, written to the batch's per-packet output arrays and
counted in `state.counters[path, reason]` (counters.py: the layout). The kernels never raise and
never touch bytes outside `b.bufs[i, HEADROOM - VXLAN_ENCAP : HEADROOM + b.lens[i]]`; a length
that does not fit the row is dropped as TRUNCATED. fastpath_twin.py holds a readable twin of
every kernel; tests keep them equal.

All arithmetic is done in int64 on purpose: the same code then runs under NUMBA_DISABLE_JIT=1
(numpy scalars) without uint8/uint64 surprises, and 32-bit multiplies are split so nothing wraps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.batch import HEADROOM
from weft.packet.counters import (
    PATH_UDP_EGRESS,
    PATH_UDP_INGRESS,
    PATH_VXLAN_EGRESS,
    PATH_VXLAN_INGRESS,
    SLOT_CSUM_COMPLETED,
    SLOT_IP_ID,
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
    IPV4_CSUM_AT,
    IPV4_DST_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_ID_AT,
    IPV4_MAX_LEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOS_AT,
    IPV4_TOT_LEN_AT,
    IPV4_TTL_AT,
    IPV4_VER_IHL,
    L4_DPORT_AT,
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
)
from weft.packet.wirebytes import checksum as _checksum
from weft.packet.wirebytes import fold16 as _fold16
from weft.packet.wirebytes import sum16 as _sum16
from weft.packet.wirebytes import u8 as _u8
from weft.packet.wirebytes import u16 as _u16
from weft.packet.wirebytes import u32 as _u32
from weft.packet.wirebytes import w16 as _w16
from weft.packet.wirebytes import w32 as _w32

if TYPE_CHECKING:  # the groups are made by the callers; numba types them by class
    from weft.packet.pipeline_steps import BatchArrays, PeerArrays, PipelineState

OUTER_TTL = 64
# Linux udp_flow_src_port() with the default ip_local_port_range 32768..60999.
SRC_PORT_MIN = 32768
SRC_PORT_MAX = 60999
FLOW_SEED = 0x5EED_F1A7

_FORWARD = int(Verdict.FORWARD)
_DROP = int(Verdict.DROP)
_SLOW = int(Verdict.SLOW)
_OK = int(Reason.OK)
_TRUNCATED = int(Reason.TRUNCATED)
_NOT_IPV4 = int(Reason.NOT_IPV4)
_BAD_IP_HEADER = int(Reason.BAD_IP_HEADER)
_BAD_VXLAN_FLAGS = int(Reason.BAD_VXLAN_FLAGS)
_WRONG_VNI = int(Reason.WRONG_VNI)
_UNKNOWN_SENDER = int(Reason.UNKNOWN_SENDER)
_SPOOFED_INNER_SRC = int(Reason.SPOOFED_INNER_SRC)
_NOT_FOR_US = int(Reason.NOT_FOR_US)
_NO_ROUTE = int(Reason.NO_ROUTE)
_OUTSIDE_NETWORK = int(Reason.OUTSIDE_NETWORK)
_TTL_EXCEEDED = int(Reason.TTL_EXCEEDED)
_FRAG_NEEDED = int(Reason.FRAG_NEEDED)
_ARP = int(Reason.ARP)
_IPV6 = int(Reason.IPV6)
_BROADCAST = int(Reason.BROADCAST)
_MULTICAST = int(Reason.MULTICAST)
_WRONG_INNER_MAC = int(Reason.WRONG_INNER_MAC)
_LOCAL_DST = int(Reason.LOCAL_DST)
_UNKNOWN_ETHERTYPE = int(Reason.UNKNOWN_ETHERTYPE)
_PEER_LOOKUP_MISS = int(Reason.PEER_LOOKUP_MISS)

_MASK32 = 0xFFFFFFFF


# ---- byte and checksum helpers -------------------------------------------------------------


@njit(cache=True, nogil=True)
def _ttl_csum(hc, old_word, new_word):
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    s = (~hc & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@njit(cache=True, nogil=True, inline="always")
def _mul32(a, k):
    # a * k mod 2**32 without leaving int64: split k into 16-bit halves.
    return (a * (k & 0xFFFF) + (((a * (k >> 16)) & 0xFFFF) << 16)) & _MASK32


@njit(cache=True, nogil=True, inline="always")
def _rotl32(x, r):
    return ((x << r) | (x >> (32 - r))) & _MASK32


@njit(cache=True, nogil=True, inline="always")
def _mix(h, w):
    k = _mul32(w, 0xCC9E2D51)
    k = _mul32(_rotl32(k, 15), 0x1B873593)
    h = _rotl32(h ^ k, 13)
    return (h * 5 + 0xE6546B64) & _MASK32


@njit(cache=True, nogil=True)
def _flow_hash(src, dst, proto, sport, dport):
    """murmur3-style 32-bit hash of the inner 5-tuple."""
    h = _mix(FLOW_SEED, src)
    h = _mix(h, dst)
    h = _mix(h, proto)
    h = _mix(h, (sport << 16) | dport)
    h ^= 16
    h = _mul32(h ^ (h >> 16), 0x85EBCA6B)
    h = _mul32(h ^ (h >> 13), 0xC2B2AE35)
    return h ^ (h >> 16)


@njit(cache=True, nogil=True)
def _sender_known(keys, ip):
    """Is `ip` in the PeerTable sender set? Same probing as table.sender_hash/_insert_key."""
    mask = keys.shape[0] - 1
    slot = ((((ip ^ (ip >> 16)) * 0x45D9F3B) & _MASK32) >> 8) & mask
    for _ in range(keys.shape[0]):
        key = np.int64(keys[slot])
        if key == 0:  # empty slot ends the probe; also keeps 0.0.0.0 from matching it
            return False
        if key == ip:
            return True
        slot = (slot + 1) & mask
    return False


@njit(cache=True, nogil=True)
def _ipv4_check(b, o, avail):
    """Reason code for the IPv4 header at b[o:], `avail` bytes readable."""
    if avail < IPV4_HLEN:
        return _TRUNCATED
    vihl = _u8(b, o)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < IPV4_HLEN:
        return _BAD_IP_HEADER
    total = _u16(b, o + IPV4_TOT_LEN_AT)
    if total < ihl:
        return _BAD_IP_HEADER
    if total > avail:
        return _TRUNCATED
    return _OK


@njit(cache=True, nogil=True)
def _subnet_index(ip, cfg, n_subnets):
    """Subnet number of `ip`, -1 outside the network (or outside the table arrays)."""
    if (ip & cfg[CFG_NETMASK]) != cfg[CFG_NETWORK]:
        return -1
    idx = (ip - cfg[CFG_NETWORK]) >> cfg[CFG_SUBNET_SHIFT]
    if idx >= n_subnets:
        return -1
    return idx


@njit(cache=True, nogil=True)
def _inner_src_ok(ip, sender, cfg, present, public_ip):
    """The inner source must sit in the subnet leased by the outer sender."""
    idx = _subnet_index(ip, cfg, present.shape[0])
    if idx < 0 or idx == cfg[CFG_LOCAL_INDEX] or present[idx] == 0:
        return False
    return np.int64(public_ip[idx]) == sender


@njit(cache=True, nogil=True)
def _egress_route(dst, cfg, present):
    """(verdict, reason, subnet number) of an egress destination: FORWARD/OK when a peer's
    lease covers it; outside the network or unleased go to the slow path, our own subnet drops."""
    idx = _subnet_index(dst, cfg, present.shape[0])
    if idx < 0:
        return _SLOW, _OUTSIDE_NETWORK, idx
    if idx == cfg[CFG_LOCAL_INDEX]:
        return _DROP, _LOCAL_DST, idx
    if present[idx] == 0:
        return _SLOW, _NO_ROUTE, idx
    return _FORWARD, _OK, idx


@njit(cache=True, nogil=True)
def _is_local(ip, cfg, n_subnets):
    local = cfg[CFG_LOCAL_INDEX]
    return local >= 0 and _subnet_index(ip, cfg, n_subnets) == local


@njit(cache=True, nogil=True)
def _record(b, counters, path, i, v, r, off, olen, dst, ln):
    """Row i's result into the batch's output arrays, and counted in row `path`."""
    b.out_off[i] = off
    b.out_len[i] = olen
    b.verdict[i] = v
    b.reason[i] = r
    b.dst_ip[i] = dst
    one = np.uint64(1)
    counters[path, r] += one
    counters[path, SLOT_VERDICT + v] += one
    counters[path, SLOT_RX_PACKETS] += one
    if ln > 0:
        counters[path, SLOT_RX_BYTES] += np.uint64(ln)
    if v == _FORWARD:
        counters[path, SLOT_TX_PACKETS] += one
        counters[path, SLOT_TX_BYTES] += np.uint64(olen)


@njit(cache=True, nogil=True, inline="always")
def _batch_rows(n, b):
    """(rows to run, room for a packet in a row): n clipped to every per-packet array the
    kernels read and write, so a short array never lets them index past it."""
    m = min(n, b.bufs.shape[0], b.lens.shape[0], b.out_off.shape[0], b.out_len.shape[0])
    m = max(0, min(m, b.verdict.shape[0], b.reason.shape[0], b.dst_ip.shape[0]))
    return m, b.bufs.shape[1] - HEADROOM


@njit(cache=True, nogil=True, inline="always")
def _ingress_rows(n, b):
    """_batch_rows for the ingress kernels, which also read each row's sender (b.src_ip)."""
    m, cap = _batch_rows(n, b)
    return min(m, b.src_ip.shape[0]), cap


@njit(cache=True, nogil=True, inline="always")
def _ingress_row(b, i):
    """(length, sender) of ingress row i, as int64."""
    return np.int64(b.lens[i]), np.int64(b.src_ip[i])


# ---- VXLAN egress: Ethernet frame from the TAP -> outer IPv4/UDP/VXLAN ----------------------


@njit(cache=True, nogil=True, inline="always")
def _frame_class(b, h, ln, cap):
    """(verdict, reason, out length) of what a TAP frame is before routing: FORWARD/OK for an
    IPv4 unicast frame, else its DROP or SLOW verdict."""
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, 0
    if ln < ETH_HLEN:
        return _DROP, _TRUNCATED, ln
    ethertype = _u16(b, h + ETH_TYPE_AT)
    if ethertype == ETH_P_ARP:
        return _SLOW, _ARP, ln
    if ethertype == ETH_P_IPV6:
        return _SLOW, _IPV6, ln
    if ethertype != ETH_P_IP:
        return _DROP, _UNKNOWN_ETHERTYPE, ln
    if _u8(b, h + ETH_DST_AT) & 1:
        bcast = True
        for k in range(ETH_ALEN):
            if _u8(b, h + ETH_DST_AT + k) != 0xFF:
                bcast = False
        return _DROP, (_BROADCAST if bcast else _MULTICAST), ln
    return _FORWARD, _OK, ln


@njit(cache=True, nogil=True, inline="always")
def _set_inner_macs(b, h, vtep_mac, idx, local_mac):
    """Inner Ethernet: to the peer's VTEP MAC, from ours (a u48 in a config slot)."""
    for k in range(ETH_ALEN):
        b[h + ETH_DST_AT + k] = vtep_mac[idx, k]
    for k in range(ETH_ALEN):
        b[h + ETH_SRC_AT + k] = (local_mac >> (40 - 8 * k)) & 0xFF


@njit(cache=True, nogil=True, inline="always")
def _outer_src_port(b, ip, total):
    """The outer UDP source port from the inner flow, as Linux udp_flow_src_port() picks it:
    the ports count only for an unfragmented TCP/UDP/SCTP packet that holds them."""
    proto = _u8(b, ip + IPV4_PROTO_AT)
    ihl = (_u8(b, ip) & 0x0F) * 4
    sport = 0
    dport = 0
    not_fragment = (_u16(b, ip + IPV4_FRAG_AT) & IP_MF_OFFSET) == 0
    if (not_fragment and (proto == IPPROTO_TCP or proto == IPPROTO_UDP or proto == IPPROTO_SCTP)
            and ihl + L4_PORTS_LEN <= total):
        sport = _u16(b, ip + ihl + L4_SPORT_AT)
        dport = _u16(b, ip + ihl + L4_DPORT_AT)
    fh = _flow_hash(_u32(b, ip + IPV4_SRC_AT), _u32(b, ip + IPV4_DST_AT), proto, sport, dport)
    return ((fh * (SRC_PORT_MAX - SRC_PORT_MIN)) >> 32) + SRC_PORT_MIN


@njit(cache=True, nogil=True, inline="always")
def _vtep_mac_known(vtep_mac, idx):
    """Whether peer idx has a VTEP MAC (all zero: its lease named none)."""
    for k in range(ETH_ALEN):
        if vtep_mac[idx, k] != 0:
            return True
    return False


@njit(cache=True, nogil=True, inline="always")
def _write_vxlan_header(b, x, vni):
    """The 8-byte VXLAN header at b[x:]: flags with I set, the VNI, reserved bytes zero."""
    b[x + VXLAN_FLAGS_AT] = VXLAN_FLAG_I
    b[x + VXLAN_FLAGS_AT + 1] = 0  # reserved
    b[x + VXLAN_FLAGS_AT + 2] = 0
    b[x + VXLAN_FLAGS_AT + 3] = 0
    b[x + VXLAN_VNI_AT] = (vni >> 16) & 0xFF
    b[x + VXLAN_VNI_AT + 1] = (vni >> 8) & 0xFF
    b[x + VXLAN_VNI_AT + 2] = vni & 0xFF
    b[x + VXLAN_VNI_AT + 3] = 0  # reserved


@njit(cache=True, nogil=True)
def _vxlan_egress_one(b, ln, cap, cfg, present, public_ip, vtep_mac, ip_id):
    h = HEADROOM
    v, r, olen = _frame_class(b, h, ln, cap)
    if r != _OK:
        return v, r, h, olen, 0
    ip = h + ETH_HLEN
    r = _ipv4_check(b, ip, ln - ETH_HLEN)
    if r != _OK:
        return _DROP, r, h, ln, 0
    dst = _u32(b, ip + IPV4_DST_AT)
    v, r, idx = _egress_route(dst, cfg, present)
    if r != _OK:
        return v, r, h, ln, 0
    total = _u16(b, ip + IPV4_TOT_LEN_AT)
    flen = ETH_HLEN + total  # Ethernet padding past the IP packet is not carried
    outer_total = VXLAN_ENCAP + flen
    dont_fragment = (_u8(b, ip + IPV4_FRAG_AT) & (IP_DF >> 8)) != 0
    if total > cfg[CFG_MTU] and (dont_fragment or outer_total > IPV4_MAX_LEN):
        return _SLOW, _FRAG_NEEDED, h, ln, 0
    if not _vtep_mac_known(vtep_mac, idx):
        return _DROP, _PEER_LOOKUP_MISS, h, ln, 0

    # Verdict is FORWARD: from here on the buffer is modified.
    peer_ip = np.int64(public_ip[idx])
    _set_inner_macs(b, h, vtep_mac, idx, cfg[CFG_LOCAL_VTEP_MAC])
    src_port = _outer_src_port(b, ip, total)
    # Outer IPv4 + UDP into the headroom, here and not in a helper: the header fields passed to
    # one measured ~10% slower encapsulation (tools/lab/microbench.py).
    o = h - VXLAN_ENCAP
    b[o] = IPV4_VER_IHL
    b[o + IPV4_TOS_AT] = 0
    _w16(b, o + IPV4_TOT_LEN_AT, outer_total)
    _w16(b, o + IPV4_ID_AT, ip_id & 0xFFFF)
    _w16(b, o + IPV4_FRAG_AT, 0)
    b[o + IPV4_TTL_AT] = OUTER_TTL
    b[o + IPV4_PROTO_AT] = IPPROTO_UDP
    _w16(b, o + IPV4_CSUM_AT, 0)
    _w32(b, o + IPV4_SRC_AT, cfg[CFG_LOCAL_PUBLIC_IP])
    _w32(b, o + IPV4_DST_AT, peer_ip)
    _w16(b, o + IPV4_CSUM_AT, _checksum(b, o, IPV4_HLEN))
    u = o + IPV4_HLEN
    _w16(b, u + L4_SPORT_AT, src_port)
    _w16(b, u + L4_DPORT_AT, cfg[CFG_PORT])
    _w16(b, u + UDP_LEN_AT, outer_total - IPV4_HLEN)
    _w16(b, u + UDP_CSUM_AT, 0)
    _write_vxlan_header(b, u + UDP_HLEN, cfg[CFG_VNI])
    return _FORWARD, _OK, o, outer_total, peer_ip


# One frame in a row, nothing counted: (verdict, reason, out offset, out length, peer IP).
# offload.tunnel runs it on the first segment of a super-frame it hands to the kernel whole.
vxlan_egress_one = _vxlan_egress_one


@njit(cache=True, nogil=True)
def vxlan_egress(n: int, b: BatchArrays, peers: PeerArrays, state: PipelineState) -> int:
    """Encapsulate the n Ethernet frames read from the TAP into b's rows; returns how many are
    FORWARD."""
    n, cap = _batch_rows(n, b)
    # Each field once, here, and the arrays to the per-row helper: a field read inside a
    # function called per row costs a reference count increment and decrement per packet
    # (measured 10-30% more ns/packet when the helpers took the groups). So in all four.
    bufs, lens, cfg, counters = b.bufs, b.lens, state.cfg, state.counters
    present, public_ip, vtep_mac = peers.present, peers.public_ip, peers.vtep_mac
    ip_id = np.int64(counters[PATH_VXLAN_EGRESS, SLOT_IP_ID])
    forwarded = 0
    for i in range(n):
        ln = np.int64(lens[i])
        v, r, off, olen, dst = _vxlan_egress_one(bufs[i], ln, cap, cfg, present, public_ip,
                                                 vtep_mac, ip_id)
        if v == _FORWARD:
            ip_id = (ip_id + 1) & 0xFFFF
            forwarded += 1
        _record(b, counters, PATH_VXLAN_EGRESS, i, v, r, off, olen, dst, ln)
    counters[PATH_VXLAN_EGRESS, SLOT_IP_ID] = np.uint64(ip_id)
    return forwarded


# ---- VXLAN ingress: UDP payload from a peer -> inner Ethernet frame -------------------------


@njit(cache=True, nogil=True)
def _vxlan_ingress_one(b, ln, cap, sender, cfg, present, public_ip, sender_keys):
    h = HEADROOM
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, h, 0
    if ln < VXLAN_HLEN + ETH_HLEN + IPV4_HLEN:
        return _DROP, _TRUNCATED, h, ln
    # RFC 7348: only the I bit matters; other flag and reserved bits are ignored on receipt.
    if (_u8(b, h + VXLAN_FLAGS_AT) & VXLAN_FLAG_I) == 0:
        return _DROP, _BAD_VXLAN_FLAGS, h, ln
    if (_u32(b, h + VXLAN_VNI_AT) >> 8) != cfg[CFG_VNI]:
        return _DROP, _WRONG_VNI, h, ln
    if not _sender_known(sender_keys, sender):
        return _DROP, _UNKNOWN_SENDER, h, ln
    e = h + VXLAN_HLEN
    if _u16(b, e + ETH_TYPE_AT) != ETH_P_IP:
        return _DROP, _NOT_IPV4, h, ln
    ip = e + ETH_HLEN
    r = _ipv4_check(b, ip, ln - VXLAN_HLEN - ETH_HLEN)
    if r != _OK:
        return _DROP, r, h, ln
    if not _inner_src_ok(_u32(b, ip + IPV4_SRC_AT), sender, cfg, present, public_ip):
        return _DROP, _SPOOFED_INNER_SRC, h, ln
    if not _is_local(_u32(b, ip + IPV4_DST_AT), cfg, present.shape[0]):
        return _DROP, _NOT_FOR_US, h, ln
    dmac = (_u16(b, e + ETH_DST_AT) << 32) | _u32(b, e + ETH_DST_AT + 2)
    if dmac != cfg[CFG_LOCAL_VTEP_MAC] and dmac != 0xFFFFFFFFFFFF:
        return _DROP, _WRONG_INNER_MAC, h, ln
    return _FORWARD, _OK, e, ln - VXLAN_HLEN


# One payload in a row, nothing counted: (verdict, reason, out offset, out length).
# offload.tunnel runs it on the first segment of a tunnel-GSO packet it writes to the TAP whole.
vxlan_ingress_one = _vxlan_ingress_one


@njit(cache=True, nogil=True)
def _complete_partial_l4_csum(b, ip):
    """Finish an inner TCP/UDP checksum the sender's kernel left for a NIC; True if written.

    A kernel VXLAN device with tx-checksum offload (as flannel leaves flannel.1) hands the inner
    segment on as CHECKSUM_PARTIAL: __tcp_v4_send_check()/udp4_hwcsum() pre-fill the field with
    ~csum_tcpudp_magic(src, dst, len, proto, 0), the folded NON-complemented pseudo-header sum,
    expecting hardware to sum from the L4 header on. Over veth/bridges nothing ever does, and a
    userspace socket gets no csum metadata, so the pod's kernel would drop the frame as corrupt.
    We do what the NIC (or skb_checksum_help) would: only for a packet that does not verify and
    whose field holds exactly that pseudo sum. Anything else that fails stays as it is, so real
    corruption is still dropped by the receiver. Only this one form is accepted: it is the only
    value Linux pre-fills for CHECKSUM_PARTIAL, so any other mismatch is treated as corruption.
    `ip` is the offset of an inner IPv4 header _ipv4_check accepted (whole packet present).
    """
    if (_u16(b, ip + IPV4_FRAG_AT) & IP_MF_OFFSET) != 0:  # a fragment: not all of it is here
        return False
    ihl = (_u8(b, ip) & 0x0F) * 4
    room = _u16(b, ip + IPV4_TOT_LEN_AT) - ihl
    proto = _u8(b, ip + IPV4_PROTO_AT)
    l4 = ip + ihl
    if proto == IPPROTO_TCP:
        if room < TCP_HLEN:
            return False
        l4len = room
        field = l4 + TCP_CSUM_AT
    elif proto == IPPROTO_UDP:
        if room < UDP_HLEN:
            return False
        l4len = _u16(b, l4 + UDP_LEN_AT)  # the pseudo-header and the sum use UDP's own length
        if l4len < UDP_HLEN or l4len > room:
            return False
        field = l4 + UDP_CSUM_AT
        if _u16(b, field) == 0:  # no checksum sent (RFC 768): nothing to complete
            return False
    else:
        return False
    pseudo = _fold16(_u16(b, ip + IPV4_SRC_AT) + _u16(b, ip + IPV4_SRC_AT + 2)
                     + _u16(b, ip + IPV4_DST_AT) + _u16(b, ip + IPV4_DST_AT + 2) + proto + l4len)
    seg = _sum16(b, l4, l4len)
    if _fold16(pseudo + seg) == 0xFFFF:  # verifies already
        return False
    if _u16(b, field) != pseudo:
        return False
    # The field already holds the pseudo sum, so the segment sum is the whole sum, exactly as the
    # NIC computes it from csum_start; 0 is sent as 0xFFFF like skb_checksum_help (for UDP 0
    # would mean "no checksum"; for TCP both encodings verify).
    csum = ~_fold16(seg) & 0xFFFF
    _w16(b, field, csum if csum != 0 else 0xFFFF)
    return True


@njit(cache=True, nogil=True)
def vxlan_ingress(n: int, b: BatchArrays, peers: PeerArrays, state: PipelineState) -> int:
    """Check and decapsulate the n VXLAN payloads in b's rows, row i sent by b.src_ip[i];
    returns how many are FORWARD.

    FORWARD frames whose inner TCP/UDP checksum arrived in the CHECKSUM_PARTIAL form get it
    completed in place, counted in SLOT_CSUM_COMPLETED.
    """
    n, cap = _ingress_rows(n, b)
    bufs, cfg, counters = b.bufs, state.cfg, state.counters
    present, public_ip, sender_keys = peers.present, peers.public_ip, peers.sender_keys
    forwarded = 0
    for i in range(n):
        ln, sender = _ingress_row(b, i)
        v, r, off, olen = _vxlan_ingress_one(bufs[i], ln, cap, sender, cfg, present, public_ip,
                                             sender_keys)
        if v == _FORWARD:
            forwarded += 1
            if _complete_partial_l4_csum(bufs[i], off + ETH_HLEN):
                counters[PATH_VXLAN_INGRESS, SLOT_CSUM_COMPLETED] += np.uint64(1)
        _record(b, counters, PATH_VXLAN_INGRESS, i, v, r, off, olen, 0, ln)
    return forwarded


# ---- udp backend: raw IPv4 packets, TTL decremented at both ends ----------------------------


@njit(cache=True, nogil=True)
def _decrement_ttl(b, ip):
    ttl = _u8(b, ip + IPV4_TTL_AT)
    proto = _u8(b, ip + IPV4_PROTO_AT)
    b[ip + IPV4_TTL_AT] = ttl - 1
    # TTL and protocol are one 16-bit word of the header sum
    new_csum = _ttl_csum(_u16(b, ip + IPV4_CSUM_AT), (ttl << 8) | proto, ((ttl - 1) << 8) | proto)
    _w16(b, ip + IPV4_CSUM_AT, new_csum)


@njit(cache=True, nogil=True)
def _udp_egress_one(b, ln, cap, cfg, present, public_ip):
    h = HEADROOM
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, h, 0, 0
    if ln < 1:
        return _DROP, _TRUNCATED, h, ln, 0
    version = _u8(b, h) >> 4
    if version == 6:
        return _SLOW, _IPV6, h, ln, 0
    if version != 4:
        return _DROP, _NOT_IPV4, h, ln, 0
    r = _ipv4_check(b, h, ln)
    if r != _OK:
        return _DROP, r, h, ln, 0
    v, r, idx = _egress_route(_u32(b, h + IPV4_DST_AT), cfg, present)
    if r != _OK:
        return v, r, h, ln, 0
    if _u8(b, h + IPV4_TTL_AT) <= 1:
        return _SLOW, _TTL_EXCEEDED, h, ln, 0
    total = _u16(b, h + IPV4_TOT_LEN_AT)
    if total > cfg[CFG_MTU] and (_u8(b, h + IPV4_FRAG_AT) & (IP_DF >> 8)) != 0:
        return _SLOW, _FRAG_NEEDED, h, ln, 0
    _decrement_ttl(b, h)
    return _FORWARD, _OK, h, total, np.int64(public_ip[idx])


# One packet in a row, nothing counted (offload.tunnel's probe of a super-frame's first segment).
udp_egress_one = _udp_egress_one


@njit(cache=True, nogil=True)
def udp_egress(n: int, b: BatchArrays, peers: PeerArrays, state: PipelineState) -> int:
    """Route the n IPv4 packets read from the TUN into b's rows to their peers; returns how
    many are FORWARD."""
    n, cap = _batch_rows(n, b)
    bufs, lens, cfg, counters = b.bufs, b.lens, state.cfg, state.counters
    present, public_ip = peers.present, peers.public_ip
    forwarded = 0
    for i in range(n):
        ln = np.int64(lens[i])
        v, r, off, olen, dst = _udp_egress_one(bufs[i], ln, cap, cfg, present, public_ip)
        if v == _FORWARD:
            forwarded += 1
        _record(b, counters, PATH_UDP_EGRESS, i, v, r, off, olen, dst, ln)
    return forwarded


@njit(cache=True, nogil=True)
def _udp_ingress_one(b, ln, cap, sender, cfg, present, public_ip, sender_keys):
    h = HEADROOM
    if ln < 0 or ln > cap:
        return _DROP, _TRUNCATED, h, 0
    if not _sender_known(sender_keys, sender):
        return _DROP, _UNKNOWN_SENDER, h, ln
    if ln < 1:
        return _DROP, _TRUNCATED, h, ln
    if _u8(b, h) >> 4 != 4:
        return _DROP, _NOT_IPV4, h, ln
    r = _ipv4_check(b, h, ln)
    if r != _OK:
        return _DROP, r, h, ln
    if not _inner_src_ok(_u32(b, h + IPV4_SRC_AT), sender, cfg, present, public_ip):
        return _DROP, _SPOOFED_INNER_SRC, h, ln
    if not _is_local(_u32(b, h + IPV4_DST_AT), cfg, present.shape[0]):
        return _DROP, _NOT_FOR_US, h, ln
    # flannel decrements on receive too and drops what reaches 0.
    if _u8(b, h + IPV4_TTL_AT) <= 1:
        return _DROP, _TTL_EXCEEDED, h, ln
    _decrement_ttl(b, h)
    return _FORWARD, _OK, h, _u16(b, h + IPV4_TOT_LEN_AT)


udp_ingress_one = _udp_ingress_one


@njit(cache=True, nogil=True)
def udp_ingress(n: int, b: BatchArrays, peers: PeerArrays, state: PipelineState) -> int:
    """Check the n IPv4 packets in b's rows for the TUN, row i received from b.src_ip[i];
    returns how many are FORWARD."""
    n, cap = _ingress_rows(n, b)
    bufs, cfg, counters = b.bufs, state.cfg, state.counters
    present, public_ip, sender_keys = peers.present, peers.public_ip, peers.sender_keys
    forwarded = 0
    for i in range(n):
        ln, sender = _ingress_row(b, i)
        v, r, off, olen = _udp_ingress_one(bufs[i], ln, cap, sender, cfg, present, public_ip,
                                           sender_keys)
        if v == _FORWARD:
            forwarded += 1
        _record(b, counters, PATH_UDP_INGRESS, i, v, r, off, olen, 0, ln)
    return forwarded
