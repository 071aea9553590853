"""numba kernels for UDP-tunnel GSO: whole VXLAN super-frames to and from the kernel.

Linux 6.17+ carries UDP-tunnel GSO in the virtio header of a TUN/TAP whose vnet header size is
at least that of struct virtio_net_hdr_v1_hash_tunnel (24 bytes): the 10-byte header fields, the
v1 num_buffers, the hash fields, then u16 outer_th_offset and inner_nh_offset (little-endian),
gso_type TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4, NEEDS_CSUM with csum_start at the inner
TCP header. A frame written so into a TAP is received by the host as one GSO packet and routed
on; where it leaves, the kernel (or the NIC) cuts it into MSS-sized VXLAN datagrams, exactly as
it cuts its own VXLAN device's packets. (AF_PACKET on 6.18 refuses both the 24-byte header and
the tunnel gso_type, so a TAP is the only way in.)

`decap_super` is the receiving end: a tunnel-GSO packet the kernel hands our UDP socket whole
(a veth with offloads passes a kernel VXLAN's or a TX TAP's 64 KiB packet across namespaces as
it is) becomes one TSO write into our TAP, in place, after the ingress kernel passed its first
segment; `count_received` counts its segments.

`encap_super` turns one TSO read of our vxlan TAP into such a frame, in place, in the buffer
the read landed in: it runs the ordinary egress kernel (fastpath) on the first segment, so every
policy decision (peer, MTU, MAC rewrite, outer headers, source port) is the one the segment would
have had, and copies that segment's headers around the whole super-frame. `count_sent` adds the
frame's segments to the pipeline counters once the write succeeded. Layout of `sup`:

    [0, 24)   tunnel virtio header            (written by encap_super)
    [24, 38)  outer Ethernet to the TX TAP    (written by encap_super)
    [38, 74)  outer IPv4 + UDP + VXLAN        (written by encap_super; the read's own
                                               10-byte virtio header sat at [64, 74))
    [74, ...) the inner Ethernet frame as read (MACs rewritten by the egress kernel)

so a TAP read goes to sup[SUP_HEAD:]. The udp backend (flannel's format: the bare IPv4 packet
as the UDP payload, over a TUN) has the `_udp` variants: outer IPv4 + UDP from our port to the
peer's, inner IPv4 at FRAME_INNER_UDP = 42 (the host's GSO cuts it as it cuts FOU/IPIP: the
tunnel header is the UDP header alone), TTL decremented as the udp kernels do, the read at
sup[SUP_HEAD_UDP:], and a received datagram with RX_PAD_UDP spare bytes before it.
tunnel_gso_twin.py holds the readable twins.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.fastpath import (
    HEADROOM,
    OUTER_TTL,
    PATH_UDP_EGRESS,
    PATH_VXLAN_EGRESS,
    SLOT_IP_ID,
    SLOT_RX_BYTES,
    SLOT_RX_PACKETS,
    SLOT_TX_BYTES,
    SLOT_TX_PACKETS,
    SLOT_VERDICT,
    VXLAN_ENCAP,
    VXLAN_HDR,
    udp_egress_one,
    udp_ingress_one,
    vxlan_egress_one,
    vxlan_ingress_one,
)
from weft.packet.offload.gro_coalesce import (
    _copy,
    _fold16,
    _ip_csum,
    _pseudo,
    _segment,
    _tso_geometry,
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
from weft.packet.reasons import Reason, Verdict
from weft.packet.table import CFG_LOCAL_PUBLIC_IP, CFG_LOCAL_VTEP_MAC, CFG_MTU, CFG_PORT
from weft.packet.wirebytes import checksum as _checksum
from weft.packet.wirebytes import w16 as _w16
from weft.packet.wirebytes import w32 as _w32

TNL_HDR_LEN = 24  # sizeof(struct virtio_net_hdr_v1_hash_tunnel): TUNSETVNETHDRSZ for the TX TAP
TNL_OUTER_TH_AT = 20  # u16 LE: offset of the outer UDP header from the frame start
TNL_INNER_NH_AT = 22  # u16 LE: offset of the inner IPv4 header
GSO_UDP_TUNNEL_IPV4 = 0x20  # gso_type bit: the GSO packet is UDP-tunnelled over IPv4
OUTER_ETH = 14
FRAME_INNER = OUTER_ETH + VXLAN_ENCAP  # 50: inner Ethernet offset in the frame
SUP_HEAD = TNL_HDR_LEN + FRAME_INNER - VNET_HDR_LEN  # 64: where a TAP read lands in `sup`
# The TX TAP's frames are routed (forwarded) by the host, which takes one from the TTL: the
# datagrams leave with the TTL the ordinary path writes (fastpath.OUTER_TTL).
TNL_TTL_EXTRA = 1
FRAME_INNER_UDP = OUTER_ETH + 20 + 8  # 42: inner IPv4 offset in a udp-backend frame
SUP_HEAD_UDP = TNL_HDR_LEN + FRAME_INNER_UDP - VNET_HDR_LEN  # 56
OUTER_DF = 0x4000  # udp backend: as a UDP socket's datagrams leave (path MTU discovery on)
INFO_SEGMENTS = 0  # encap_super's `info`: segments the frame carries,
INFO_RX_BYTES = 1  # the inner bytes the egress kernel would have counted for them,
INFO_TX_BYTES = 2  # and the outer bytes
INFO_SIZE = 3

_FORWARD = int(Verdict.FORWARD)
_OK = int(Reason.OK)


def new_sup() -> np.ndarray:
    """The egress read buffer of an offload loop: SUP_HEAD (or SUP_HEAD_UDP) spare bytes,
    then a 64 KiB read."""
    from weft.packet.offload.gro_coalesce import UNIT_ROW

    return np.zeros(max(SUP_HEAD, SUP_HEAD_UDP) + UNIT_ROW, dtype=np.uint8)


@njit(cache=True, nogil=True, inline="always")
def _le16(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(cache=True, nogil=True, inline="always")
def _wle16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


@njit(cache=True, nogil=True)
def encap_super(sup, got, probe, cfg, present, public_ip, vtep_mac, counters, tx_mac, info):
    """Make the TAP read at sup[SUP_HEAD:SUP_HEAD + got] one tunnel-GSO frame at sup[0:].

    Returns the frame's length (tunnel header included), or 0 when the read is not one for
    this path (not a TCPV4 super-frame of 2+ segments whose encapsulation fits 64 KiB, or its
    first segment is not FORWARD for the egress kernel): then sup is unchanged and the read
    is split as usual. `probe` is a scratch row (HEADROOM + a segment) for the first
    segment; `info` gets INFO_*.
    Nothing is counted here (count_sent, after the write).
    """
    got = np.int64(got)
    p = SUP_HEAD
    if got < VNET_HDR_LEN or p + got > sup.shape[0]:
        return 0
    if np.int64(sup[p + VNET_GSO_TYPE]) != GSO_TCPV4:
        return 0
    gso_size = _le16(sup, p + VNET_GSO_SIZE)
    src = sup[p:]
    plen = got - VNET_HDR_LEN
    code, ihl, doff, tot = _tso_geometry(src, VNET_HDR_LEN, plen, 14, gso_size)
    if code != 0:
        return 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = 14 + ihl + doff
    cap = probe.shape[0] - HEADROOM
    if nseg < 2 or hlen + gso_size > cap or VXLAN_ENCAP + 14 + tot > 0xFFFF:
        return 0  # (the outer IPv4 length must hold it: a stack's TSO frames leave the room)
    seglen = _segment(src, VNET_HDR_LEN, 14, ihl, doff, tot, gso_size, 0, nseg, probe, HEADROOM)
    ip_id = np.int64(counters[PATH_VXLAN_EGRESS, SLOT_IP_ID])
    v, _, off, _, _ = vxlan_egress_one(probe, seglen, cap, cfg, present, public_ip, vtep_mac,
                                       ip_id)
    if v != _FORWARD:
        return 0

    f = TNL_HDR_LEN  # the frame
    # outer Ethernet: to the TX TAP's own address, so the host takes it in and routes it
    for k in range(6):
        sup[f + k] = (tx_mac >> (40 - 8 * k)) & 0xFF
    local_mac = cfg[CFG_LOCAL_VTEP_MAC]
    for k in range(6):
        sup[f + 6 + k] = (local_mac >> (40 - 8 * k)) & 0xFF
    sup[f + 12] = 0x08
    sup[f + 13] = 0x00
    # outer IPv4/UDP/VXLAN and the rewritten inner Ethernet header from the first segment
    o = f + OUTER_ETH
    _copy(sup, o, probe, off, VXLAN_ENCAP + 14)
    outer_total = VXLAN_ENCAP + 14 + tot
    _w16(sup, o + 2, outer_total)
    sup[o + 8] = np.int64(probe[off + 8]) + TNL_TTL_EXTRA
    _w16(sup, o + 10, 0)
    _w16(sup, o + 10, _checksum(sup, o, 20))
    _w16(sup, o + 20 + 4, outer_total - 20)
    # inner TCP checksum: the pseudo-header sum of the whole super-frame, for GSO to finish
    ip = f + FRAME_INNER + 14
    _w16(sup, ip + ihl + 16, _fold16(_pseudo(sup, ip, tot - ihl)))
    for k in range(TNL_HDR_LEN):
        sup[k] = 0
    sup[VNET_FLAGS] = VNET_F_NEEDS_CSUM
    sup[VNET_GSO_TYPE] = GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4
    _wle16(sup, VNET_HDR_LEN_AT, FRAME_INNER + hlen)
    _wle16(sup, VNET_GSO_SIZE, gso_size)
    _wle16(sup, VNET_CSUM_START, FRAME_INNER + 14 + ihl)
    _wle16(sup, VNET_CSUM_OFFSET, 16)
    _wle16(sup, TNL_OUTER_TH_AT, OUTER_ETH + 20)
    _wle16(sup, TNL_INNER_NH_AT, FRAME_INNER + 14)
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * hlen + payload
    info[INFO_TX_BYTES] = nseg * (VXLAN_ENCAP + hlen) + payload
    return TNL_HDR_LEN + FRAME_INNER + 14 + tot


@njit(cache=True, nogil=True)
def count_sent(counters, path, info):
    """Count a written tunnel frame's segments as the egress kernel (counters row `path`)
    counts FORWARD packets."""
    nseg = np.uint64(info[INFO_SEGMENTS])
    row = counters[path]
    row[_OK] += nseg
    row[SLOT_VERDICT + _FORWARD] += nseg
    row[SLOT_RX_PACKETS] += nseg
    row[SLOT_RX_BYTES] += np.uint64(info[INFO_RX_BYTES])
    row[SLOT_TX_PACKETS] += nseg
    row[SLOT_TX_BYTES] += np.uint64(info[INFO_TX_BYTES])
    # the kernel numbers the outer IP ids of the segments from the first one on
    row[SLOT_IP_ID] = np.uint64((np.int64(row[SLOT_IP_ID]) + np.int64(nseg)) & 0xFFFF)


@njit(cache=True, nogil=True)
def restore_read(sup):
    """Undo encap_super's header over the read (a refused write): the virtio header the TAP
    read gave back at sup[SUP_HEAD:], so split_super can cut the frame as usual."""
    _restore_vnet(sup, SUP_HEAD, FRAME_INNER)


@njit(cache=True, nogil=True)
def _restore_vnet(sup, p, inner):
    """The read's virtio header at sup[p:], its offsets `inner` bytes shorter again (the outer
    headers the encap put in front are gone with it)."""
    hdr_len = _le16(sup, VNET_HDR_LEN_AT)
    gso_size = _le16(sup, VNET_GSO_SIZE)
    csum_start = _le16(sup, VNET_CSUM_START)
    for k in range(VNET_HDR_LEN):
        sup[p + k] = 0
    sup[p + VNET_FLAGS] = VNET_F_NEEDS_CSUM
    sup[p + VNET_GSO_TYPE] = GSO_TCPV4
    _wle16(sup, p + VNET_HDR_LEN_AT, hdr_len - inner)
    _wle16(sup, p + VNET_GSO_SIZE, gso_size)
    _wle16(sup, p + VNET_CSUM_START, csum_start - inner)
    _wle16(sup, p + VNET_CSUM_OFFSET, 16)


# ---- ingress: a tunnel-GSO packet received whole -> one TSO write ----------------------------

RX_PAD = VNET_HDR_LEN - VXLAN_HDR  # 2: spare bytes before a received VXLAN datagram
RX_PAD_UDP = VNET_HDR_LEN  # 10: before a received udp-backend datagram (its IPv4 packet)


@njit(cache=True, nogil=True)
def _whole_tcp(msg, p, plen, l2, mtu):
    """(gso_size, ihl, doff, total length) of the IPv4/TCP packet in the frame at msg[p:p + plen]
    (after `l2` bytes of Ethernet), to be cut into segments that fit the overlay `mtu`;
    all 0 when it is not one."""
    ip = p + l2
    if (np.int64(msg[ip]) & 0x0F) < 5 or np.int64(msg[ip]) >> 4 != 4:
        return 0, 0, 0, 0
    ihl = (np.int64(msg[ip]) & 0x0F) * 4
    if ip + ihl + 13 >= p + plen:
        return 0, 0, 0, 0
    doff = (np.int64(msg[ip + ihl + 12]) >> 4) * 4
    gso_size = mtu - ihl - doff
    if gso_size <= 0:
        return 0, 0, 0, 0
    code, ihl, doff, tot = _tso_geometry(msg, p, plen, l2, gso_size)
    if code != 0:
        return 0, 0, 0, 0
    return gso_size, ihl, doff, tot


@njit(cache=True, nogil=True)
def decap_super(msg, total, sender, probe, cfg, present, public_ip, sender_keys, info):
    """Make the datagram at msg[RX_PAD:RX_PAD + total] (VXLAN + a TCP super-frame) one TAP
    write at msg[0:]: virtio header over the VXLAN header, the inner frame as it came.

    Returns the write's length, or 0 when it is not one for this path (not a TCP/IPv4
    super-frame of 2+ segments at the overlay MTU, or the ingress kernel does not pass its
    first segment): msg is then unchanged and the datagram is split as usual. Segments are
    gso_size = MTU - headers, so the frame stays within the pods' MTU if it is cut again; its
    TCP checksum goes as the partial sum (NEEDS_CSUM), as a TSO super-frame from a stack
    does, and its IPv4 checksum is made for the whole. Nothing is counted here.
    """
    total = np.int64(total)
    if total < VXLAN_HDR + 14 + 40 or RX_PAD + total > msg.shape[0]:
        return 0
    p = RX_PAD + VXLAN_HDR
    ip = p + 14
    gso_size, ihl, doff, tot = _whole_tcp(msg, p, total - VXLAN_HDR, 14, np.int64(cfg[CFG_MTU]))
    if gso_size == 0:
        return 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = 14 + ihl + doff
    h = HEADROOM
    cap = probe.shape[0] - h
    if nseg < 2 or VXLAN_HDR + hlen + gso_size > cap:
        return 0
    _copy(probe, h, msg, RX_PAD, VXLAN_HDR)
    seglen = _segment(msg, p, 14, ihl, doff, tot, gso_size, 0, nseg, probe, h + VXLAN_HDR)
    v, _, _, _ = vxlan_ingress_one(probe, VXLAN_HDR + seglen, cap, sender, cfg, present,
                                   public_ip, sender_keys)
    if v != _FORWARD:
        return 0
    _ip_csum(msg, ip, ihl)
    _w16(msg, ip + ihl + 16, _fold16(_pseudo(msg, ip, tot - ihl)))
    for k in range(VNET_HDR_LEN):
        msg[k] = 0
    msg[VNET_FLAGS] = VNET_F_NEEDS_CSUM
    msg[VNET_GSO_TYPE] = GSO_TCPV4
    _wle16(msg, VNET_HDR_LEN_AT, hlen)
    _wle16(msg, VNET_GSO_SIZE, gso_size)
    _wle16(msg, VNET_CSUM_START, 14 + ihl)
    _wle16(msg, VNET_CSUM_OFFSET, 16)
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * (VXLAN_HDR + hlen) + payload
    info[INFO_TX_BYTES] = nseg * hlen + payload
    return VNET_HDR_LEN + 14 + tot


@njit(cache=True, nogil=True)
def count_received(counters, path, info):
    """Count a written tunnel-GSO packet's segments as the ingress kernel (counters row
    `path`) counts FORWARD ones."""
    nseg = np.uint64(info[INFO_SEGMENTS])
    row = counters[path]
    row[_OK] += nseg
    row[SLOT_VERDICT + _FORWARD] += nseg
    row[SLOT_RX_PACKETS] += nseg
    row[SLOT_RX_BYTES] += np.uint64(info[INFO_RX_BYTES])
    row[SLOT_TX_PACKETS] += nseg
    row[SLOT_TX_BYTES] += np.uint64(info[INFO_TX_BYTES])


# ---- the udp backend: bare IPv4 in UDP over a TUN ----------------------------------------------


@njit(cache=True, nogil=True)
def encap_super_udp(sup, got, probe, cfg, present, public_ip, counters, tx_mac, info):
    """encap_super for the udp backend: the TUN read at sup[SUP_HEAD_UDP:SUP_HEAD_UDP + got]
    (raw IPv4) becomes one tunnel-GSO frame at sup[0:]; returns its length or 0 (unchanged).

    The udp egress kernel runs on the first segment (route, TTL, MTU); the super-frame gets
    its TTL. Outer IPv4 from our PublicIP (DF, ids counted in the udp egress counters' IP id
    slot), UDP from our port to the peer's, checksum 0.
    """
    got = np.int64(got)
    p = SUP_HEAD_UDP
    if got < VNET_HDR_LEN or p + got > sup.shape[0]:
        return 0
    if np.int64(sup[p + VNET_GSO_TYPE]) != GSO_TCPV4:
        return 0
    gso_size = _le16(sup, p + VNET_GSO_SIZE)
    src = sup[p:]
    code, ihl, doff, tot = _tso_geometry(src, VNET_HDR_LEN, got - VNET_HDR_LEN, 0, gso_size)
    if code != 0:
        return 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = ihl + doff
    cap = probe.shape[0] - HEADROOM
    if nseg < 2 or hlen + gso_size > cap or 28 + tot > 0xFFFF:
        return 0
    seglen = _segment(src, VNET_HDR_LEN, 0, ihl, doff, tot, gso_size, 0, nseg, probe, HEADROOM)
    v, _, off, _, peer_ip = udp_egress_one(probe, seglen, cap, cfg, present, public_ip)
    if v != _FORWARD:
        return 0

    f = TNL_HDR_LEN
    for k in range(6):
        sup[f + k] = (tx_mac >> (40 - 8 * k)) & 0xFF
    local_mac = cfg[CFG_LOCAL_VTEP_MAC]
    for k in range(6):
        sup[f + 6 + k] = (local_mac >> (40 - 8 * k)) & 0xFF
    sup[f + 12] = 0x08
    sup[f + 13] = 0x00
    o = f + OUTER_ETH
    outer_total = 28 + tot
    sup[o] = 0x45
    sup[o + 1] = 0
    _w16(sup, o + 2, outer_total)
    _w16(sup, o + 4, np.int64(counters[PATH_UDP_EGRESS, SLOT_IP_ID]) & 0xFFFF)
    _w16(sup, o + 6, OUTER_DF)
    sup[o + 8] = OUTER_TTL + TNL_TTL_EXTRA
    sup[o + 9] = 17
    _w16(sup, o + 10, 0)
    _w32(sup, o + 12, cfg[CFG_LOCAL_PUBLIC_IP])
    _w32(sup, o + 16, peer_ip)
    _w16(sup, o + 10, _checksum(sup, o, 20))
    u = o + 20
    _w16(sup, u, cfg[CFG_PORT])
    _w16(sup, u + 2, cfg[CFG_PORT])
    _w16(sup, u + 4, outer_total - 20)
    _w16(sup, u + 6, 0)
    ip = f + FRAME_INNER_UDP
    sup[ip + 8] = probe[off + 8]  # the TTL the kernel gave the first segment
    _ip_csum(sup, ip, ihl)
    _w16(sup, ip + ihl + 16, _fold16(_pseudo(sup, ip, tot - ihl)))
    for k in range(TNL_HDR_LEN):
        sup[k] = 0
    sup[VNET_FLAGS] = VNET_F_NEEDS_CSUM
    sup[VNET_GSO_TYPE] = GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4
    _wle16(sup, VNET_HDR_LEN_AT, FRAME_INNER_UDP + hlen)
    _wle16(sup, VNET_GSO_SIZE, gso_size)
    _wle16(sup, VNET_CSUM_START, FRAME_INNER_UDP + ihl)
    _wle16(sup, VNET_CSUM_OFFSET, 16)
    _wle16(sup, TNL_OUTER_TH_AT, OUTER_ETH + 20)
    _wle16(sup, TNL_INNER_NH_AT, FRAME_INNER_UDP)
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * hlen + payload
    info[INFO_TX_BYTES] = nseg * hlen + payload
    return TNL_HDR_LEN + FRAME_INNER_UDP + tot


@njit(cache=True, nogil=True)
def restore_read_udp(sup):
    """restore_read for encap_super_udp's frame: the TUN read's virtio header back."""
    _restore_vnet(sup, SUP_HEAD_UDP, FRAME_INNER_UDP)


@njit(cache=True, nogil=True)
def decap_super_udp(msg, total, sender, probe, cfg, present, public_ip, sender_keys, info):
    """decap_super for the udp backend: the datagram at msg[RX_PAD_UDP:RX_PAD_UDP + total] (a
    TCP/IPv4 super-frame) becomes one TUN write at msg[0:]; returns its length or 0.

    The udp ingress kernel passes the first segment (sender, inner source and destination,
    TTL); the super-frame gets the TTL it gave.
    """
    total = np.int64(total)
    p = RX_PAD_UDP
    if total < 40 or p + total > msg.shape[0]:
        return 0
    gso_size, ihl, doff, tot = _whole_tcp(msg, p, total, 0, np.int64(cfg[CFG_MTU]))
    if gso_size == 0:
        return 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = ihl + doff
    h = HEADROOM
    cap = probe.shape[0] - h
    if nseg < 2 or hlen + gso_size > cap:
        return 0
    seglen = _segment(msg, p, 0, ihl, doff, tot, gso_size, 0, nseg, probe, h)
    v, _, _, _ = udp_ingress_one(probe, seglen, cap, sender, cfg, present, public_ip,
                                 sender_keys)
    if v != _FORWARD:
        return 0
    msg[p + 8] = probe[h + 8]
    _ip_csum(msg, p, ihl)
    _w16(msg, p + ihl + 16, _fold16(_pseudo(msg, p, tot - ihl)))
    for k in range(VNET_HDR_LEN):
        msg[k] = 0
    msg[VNET_FLAGS] = VNET_F_NEEDS_CSUM
    msg[VNET_GSO_TYPE] = GSO_TCPV4
    _wle16(msg, VNET_HDR_LEN_AT, hlen)
    _wle16(msg, VNET_GSO_SIZE, gso_size)
    _wle16(msg, VNET_CSUM_START, ihl)
    _wle16(msg, VNET_CSUM_OFFSET, 16)
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * hlen + payload
    info[INFO_TX_BYTES] = nseg * hlen + payload
    return VNET_HDR_LEN + tot
