"""UDP-tunnel GSO in numba: whole VXLAN (and udp-backend) super-frames to and from the kernel.

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
Both encapsulations share everything but their own outer headers and kernel: reading the
super-frame and cutting its first segment (_read_super), the outer Ethernet and the tunnel
virtio header (_finish_frame), taking a received one apart (_first_segment) and making it one
TSO write (_tso_write). tunnel_twin.py holds the readable twins.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.batch import HEADROOM
from weft.packet.counters import (
    PATH_UDP_EGRESS,
    PATH_VXLAN_EGRESS,
    SLOT_IP_ID,
    SLOT_RX_BYTES,
    SLOT_RX_PACKETS,
    SLOT_TX_BYTES,
    SLOT_TX_PACKETS,
    SLOT_VERDICT,
)
from weft.packet.encap import Encap
from weft.packet.fastpath import (
    OUTER_TTL,
    udp_egress_one,
    udp_ingress_one,
    vxlan_egress_one,
    vxlan_ingress_one,
)
from weft.packet.headers import (
    ETH_ALEN,
    ETH_HLEN,
    ETH_P_IP,
    ETH_TYPE_AT,
    IP_DF,
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
    IPV4_UDP_HLEN,
    IPV4_VER_IHL,
    L4_DPORT_AT,
    L4_SPORT_AT,
    TCP_FLAGS_AT,
    TCP_HLEN,
    UDP_CSUM_AT,
    UDP_LEN_AT,
    VXLAN_ENCAP,
    VXLAN_HLEN,
)
from weft.packet.offload.tso import (
    UNIT_ROW,
    copy_bytes,
    ipv4_ihl,
    put_partial_tcp_csum,
    put_tso_header,
    set_ip_checksum,
    tcp_doff,
    tso_geometry,
    write_segment,
)
from weft.packet.offload.vnet_hdr import (
    GSO_TCPV4,
    GSO_UDP_TUNNEL_IPV4,
    TNL_HDR_LEN,
    TNL_INNER_NH_AT,
    TNL_OUTER_TH_AT,
    VNET_CSUM_START,
    VNET_GSO_SIZE,
    VNET_GSO_TYPE,
    VNET_HDR_LEN,
    VNET_HDR_LEN_AT,
)
from weft.packet.reasons import Reason, Verdict
from weft.packet.table import CFG_LOCAL_PUBLIC_IP, CFG_LOCAL_VTEP_MAC, CFG_MTU, CFG_PORT
from weft.packet.wirebytes import checksum, le16, w16, w32, wle16

__all__ = ["FRAME_INNER", "FRAME_INNER_UDP", "INFO_RX_BYTES", "INFO_SEGMENTS", "INFO_SIZE",
           "INFO_TX_BYTES", "RX_PAD", "RX_PAD_UDP", "SUP_HEAD", "SUP_HEAD_UDP", "TNL_TTL_EXTRA",
           "count_received", "count_sent", "decap_super", "decap_super_udp", "encap_super",
           "encap_super_udp", "new_sup", "restore_read", "restore_read_udp", "super_head"]

# Where the inner frame starts in a tunnel frame (after the tunnel virtio header):
FRAME_INNER = ETH_HLEN + VXLAN_ENCAP  # 50: vxlan, the inner Ethernet frame
FRAME_INNER_UDP = ETH_HLEN + IPV4_UDP_HLEN  # 42: udp backend, the inner IPv4 packet
# Where a device read lands in `sup`: its virtio header ends where the inner frame starts.
SUP_HEAD = TNL_HDR_LEN + FRAME_INNER - VNET_HDR_LEN  # 64
SUP_HEAD_UDP = TNL_HDR_LEN + FRAME_INNER_UDP - VNET_HDR_LEN  # 56


def super_head(encap: Encap) -> int:
    """Where a device read lands in `sup` for an encapsulation (SUP_HEAD for vxlan,
    SUP_HEAD_UDP for udp): the tunnel virtio header, outer Ethernet, IPv4, UDP and the
    encapsulation's own header fit before it, less the read's own virtio header."""
    return TNL_HDR_LEN + ETH_HLEN + IPV4_UDP_HLEN + encap.header_len - VNET_HDR_LEN


# The TX TAP's frames are routed (forwarded) by the host, which takes one from the TTL: the
# datagrams leave with the TTL the ordinary path writes (fastpath.OUTER_TTL).
TNL_TTL_EXTRA = 1
INFO_SEGMENTS = 0  # encap_super's `info`: segments the frame carries,
INFO_RX_BYTES = 1  # the inner bytes the egress kernel would have counted for them,
INFO_TX_BYTES = 2  # and the outer bytes
INFO_SIZE = 3

_FORWARD = int(Verdict.FORWARD)
_OK = int(Reason.OK)


def new_sup() -> np.ndarray:
    """The egress read buffer of an offload loop: SUP_HEAD (or SUP_HEAD_UDP) spare bytes,
    then a 64 KiB read."""
    return np.zeros(max(SUP_HEAD, SUP_HEAD_UDP) + UNIT_ROW, dtype=np.uint8)


# ---- egress: one TSO read -> one tunnel-GSO frame --------------------------------------------


@njit(cache=True, nogil=True)
def _read_super(sup, head, got, l2, inner, probe):
    """The TCP super-frame read at sup[head:head + got] (virtio header, `l2` bytes of Ethernet,
    IPv4), if a tunnel frame with its inner frame at offset `inner` can carry it whole:
    (segments, ihl, doff, tot, gso_size, first segment's length) with that first segment
    written to probe[HEADROOM:]; all 0 when not (not a TCPV4 super-frame of 2+ segments whose
    encapsulation fits 64 KiB). sup is only read."""
    got = np.int64(got)
    if got < VNET_HDR_LEN or head + got > sup.shape[0]:
        return 0, 0, 0, 0, 0, 0
    if np.int64(sup[head + VNET_GSO_TYPE]) != GSO_TCPV4:
        return 0, 0, 0, 0, 0, 0
    gso_size = le16(sup, head + VNET_GSO_SIZE)
    src = sup[head:]
    code, ihl, doff, tot = tso_geometry(src, VNET_HDR_LEN, got - VNET_HDR_LEN, l2, gso_size)
    if code != 0:
        return 0, 0, 0, 0, 0, 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = l2 + ihl + doff
    cap = probe.shape[0] - HEADROOM
    # (the outer IPv4 length must hold it: a stack's TSO frames leave the room)
    if nseg < 2 or hlen + gso_size > cap or inner - ETH_HLEN + l2 + tot > IPV4_MAX_LEN:
        return 0, 0, 0, 0, 0, 0
    seglen = write_segment(src, VNET_HDR_LEN, l2, ihl, doff, tot, gso_size, 0, nseg, probe,
                           HEADROOM)
    return nseg, ihl, doff, tot, gso_size, seglen


@njit(cache=True, nogil=True)
def _finish_frame(sup, tx_mac, local_mac, l2, inner, nseg, ihl, doff, tot, gso_size,
                  outer_counted, info):
    """What every tunnel frame gets once its outer IPv4/UDP(/VXLAN) headers are in place: an
    outer Ethernet header to the TX TAP's own address (so the host takes it in and routes it),
    the inner TCP checksum as the partial sum of the whole super-frame (for GSO to finish),
    the tunnel virtio header, and `info`. Returns the frame's length."""
    f = TNL_HDR_LEN
    for k in range(ETH_ALEN):
        sup[f + k] = (tx_mac >> (40 - 8 * k)) & 0xFF
    for k in range(ETH_ALEN):
        sup[f + ETH_ALEN + k] = (local_mac >> (40 - 8 * k)) & 0xFF
    w16(sup, f + ETH_TYPE_AT, ETH_P_IP)
    inner_nh = inner + l2  # the inner IPv4 header, from the frame start
    put_partial_tcp_csum(sup, f + inner_nh, ihl, tot)
    put_tso_header(sup, 0, inner_nh + ihl + doff, gso_size, inner_nh + ihl)
    for k in range(VNET_HDR_LEN, TNL_HDR_LEN):
        sup[k] = 0
    sup[VNET_GSO_TYPE] = GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4
    wle16(sup, TNL_OUTER_TH_AT, ETH_HLEN + IPV4_HLEN)
    wle16(sup, TNL_INNER_NH_AT, inner_nh)
    payload = tot - ihl - doff
    hlen = l2 + ihl + doff
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * hlen + payload
    info[INFO_TX_BYTES] = nseg * (outer_counted + hlen) + payload
    return TNL_HDR_LEN + inner_nh + tot


@njit(cache=True, nogil=True)
def encap_super(sup, got, probe, cfg, peers, counters, tx_mac, info):
    """Make the TAP read at sup[SUP_HEAD:SUP_HEAD + got] one tunnel-GSO frame at sup[0:].

    Returns the frame's length (tunnel header included), or 0 when the read is not one for
    this path (not a TCPV4 super-frame of 2+ segments whose encapsulation fits 64 KiB, or its
    first segment is not FORWARD for the egress kernel): then sup is unchanged and the read
    is split as usual. `probe` is a scratch row (HEADROOM + a segment) for the first
    segment; `info` gets INFO_*.
    Nothing is counted here (count_sent, after the write).
    """
    nseg, ihl, doff, tot, gso_size, seglen = _read_super(sup, SUP_HEAD, got, ETH_HLEN,
                                                         FRAME_INNER, probe)
    if nseg == 0:
        return 0
    ip_id = np.int64(counters[PATH_VXLAN_EGRESS, SLOT_IP_ID])
    v, _, off, _, _ = vxlan_egress_one(probe, seglen, probe.shape[0] - HEADROOM, cfg,
                                       peers.present, peers.public_ip, peers.vtep_mac, ip_id)
    if v != _FORWARD:
        return 0
    # outer IPv4/UDP/VXLAN and the rewritten inner Ethernet header from the first segment,
    # sized for the whole
    o = TNL_HDR_LEN + ETH_HLEN
    copy_bytes(sup, o, probe, off, VXLAN_ENCAP + ETH_HLEN)
    outer_total = VXLAN_ENCAP + ETH_HLEN + tot
    w16(sup, o + IPV4_TOT_LEN_AT, outer_total)
    sup[o + IPV4_TTL_AT] = np.int64(probe[off + IPV4_TTL_AT]) + TNL_TTL_EXTRA
    w16(sup, o + IPV4_CSUM_AT, 0)
    w16(sup, o + IPV4_CSUM_AT, checksum(sup, o, IPV4_HLEN))
    w16(sup, o + IPV4_HLEN + UDP_LEN_AT, outer_total - IPV4_HLEN)
    return _finish_frame(sup, tx_mac, cfg[CFG_LOCAL_VTEP_MAC], ETH_HLEN, FRAME_INNER, nseg, ihl,
                         doff, tot, gso_size, VXLAN_ENCAP, info)


@njit(cache=True, nogil=True)
def encap_super_udp(sup, got, probe, cfg, peers, counters, tx_mac, info):
    """encap_super for the udp backend: the TUN read at sup[SUP_HEAD_UDP:SUP_HEAD_UDP + got]
    (raw IPv4) becomes one tunnel-GSO frame at sup[0:]; returns its length or 0 (unchanged).

    The udp egress kernel runs on the first segment (route, TTL, MTU); the super-frame gets
    its TTL. Outer IPv4 from our PublicIP (DF, as a UDP socket's datagrams leave with path MTU
    discovery on; ids counted in the udp egress counters' IP id slot), UDP from our port to
    the peer's, checksum 0.
    """
    nseg, ihl, doff, tot, gso_size, seglen = _read_super(sup, SUP_HEAD_UDP, got, 0,
                                                         FRAME_INNER_UDP, probe)
    if nseg == 0:
        return 0
    v, _, off, _, peer_ip = udp_egress_one(probe, seglen, probe.shape[0] - HEADROOM, cfg,
                                           peers.present, peers.public_ip)
    if v != _FORWARD:
        return 0
    o = TNL_HDR_LEN + ETH_HLEN
    outer_total = IPV4_UDP_HLEN + tot
    sup[o] = IPV4_VER_IHL
    sup[o + IPV4_TOS_AT] = 0
    w16(sup, o + IPV4_TOT_LEN_AT, outer_total)
    w16(sup, o + IPV4_ID_AT, np.int64(counters[PATH_UDP_EGRESS, SLOT_IP_ID]) & 0xFFFF)
    w16(sup, o + IPV4_FRAG_AT, IP_DF)
    sup[o + IPV4_TTL_AT] = OUTER_TTL + TNL_TTL_EXTRA
    sup[o + IPV4_PROTO_AT] = IPPROTO_UDP
    w16(sup, o + IPV4_CSUM_AT, 0)
    w32(sup, o + IPV4_SRC_AT, cfg[CFG_LOCAL_PUBLIC_IP])
    w32(sup, o + IPV4_DST_AT, peer_ip)
    w16(sup, o + IPV4_CSUM_AT, checksum(sup, o, IPV4_HLEN))
    u = o + IPV4_HLEN
    w16(sup, u + L4_SPORT_AT, cfg[CFG_PORT])
    w16(sup, u + L4_DPORT_AT, cfg[CFG_PORT])
    w16(sup, u + UDP_LEN_AT, outer_total - IPV4_HLEN)
    w16(sup, u + UDP_CSUM_AT, 0)
    ip = TNL_HDR_LEN + FRAME_INNER_UDP
    sup[ip + IPV4_TTL_AT] = probe[off + IPV4_TTL_AT]  # the TTL the kernel gave the first segment
    set_ip_checksum(sup, ip, ihl)
    return _finish_frame(sup, tx_mac, cfg[CFG_LOCAL_VTEP_MAC], 0, FRAME_INNER_UDP, nseg, ihl,
                         doff, tot, gso_size, 0, info)


@njit(cache=True, nogil=True)
def _count_segments(counters, path, info):
    """Count the segments of a tunnel frame written whole (`info`) in counters row `path` as
    its kernel counts FORWARD packets."""
    nseg = np.uint64(info[INFO_SEGMENTS])
    row = counters[path]
    row[_OK] += nseg
    row[SLOT_VERDICT + _FORWARD] += nseg
    row[SLOT_RX_PACKETS] += nseg
    row[SLOT_RX_BYTES] += np.uint64(info[INFO_RX_BYTES])
    row[SLOT_TX_PACKETS] += nseg
    row[SLOT_TX_BYTES] += np.uint64(info[INFO_TX_BYTES])
    return nseg


@njit(cache=True, nogil=True)
def count_sent(counters, path, info):
    """Count a written tunnel frame's segments as the egress kernel (counters row `path`)
    counts FORWARD packets."""
    nseg = _count_segments(counters, path, info)
    # the kernel numbers the outer IP ids of the segments from the first one on
    row = counters[path]
    row[SLOT_IP_ID] = np.uint64((np.int64(row[SLOT_IP_ID]) + np.int64(nseg)) & 0xFFFF)


@njit(cache=True, nogil=True)
def _restore_vnet(sup, p, inner):
    """The read's virtio header at sup[p:], its offsets `inner` bytes shorter again (the outer
    headers the encap put in front are gone with it)."""
    put_tso_header(sup, p, le16(sup, VNET_HDR_LEN_AT) - inner, le16(sup, VNET_GSO_SIZE),
                   le16(sup, VNET_CSUM_START) - inner)


@njit(cache=True, nogil=True)
def restore_read(sup):
    """Undo encap_super's header over the read (a refused write): the virtio header the TAP
    read gave back at sup[SUP_HEAD:], so split_super can cut the frame as usual."""
    _restore_vnet(sup, SUP_HEAD, FRAME_INNER)


@njit(cache=True, nogil=True)
def restore_read_udp(sup):
    """restore_read for encap_super_udp's frame: the TUN read's virtio header back."""
    _restore_vnet(sup, SUP_HEAD_UDP, FRAME_INNER_UDP)


# ---- ingress: a tunnel-GSO packet received whole -> one TSO write ----------------------------

RX_PAD = VNET_HDR_LEN - VXLAN_HLEN  # 2: spare bytes before a received VXLAN datagram
RX_PAD_UDP = VNET_HDR_LEN  # 10: before a received udp-backend datagram (its IPv4 packet)


@njit(cache=True, nogil=True)
def _whole_tcp(msg, p, plen, l2, mtu):
    """(gso_size, ihl, doff, total length) of the IPv4/TCP packet in the frame at msg[p:p + plen]
    (after `l2` bytes of Ethernet), to be cut into segments that fit the overlay `mtu`;
    all 0 when it is not one."""
    ip = p + l2
    ihl = ipv4_ihl(msg, ip)
    if ihl < IPV4_HLEN or np.int64(msg[ip]) >> 4 != 4:
        return 0, 0, 0, 0
    if ip + ihl + TCP_FLAGS_AT >= p + plen:  # the TCP data offset must be there
        return 0, 0, 0, 0
    doff = tcp_doff(msg, ip + ihl)
    gso_size = mtu - ihl - doff
    if gso_size <= 0:
        return 0, 0, 0, 0
    code, ihl, doff, tot = tso_geometry(msg, p, plen, l2, gso_size)
    if code != 0:
        return 0, 0, 0, 0
    return gso_size, ihl, doff, tot


@njit(cache=True, nogil=True)
def _first_segment(msg, at, total, tunnel, l2, mtu, probe):
    """The datagram at msg[at:at + total]: `tunnel` bytes of tunnel header, then a frame with
    `l2` bytes of Ethernet and a TCP/IPv4 super-frame to be cut at the overlay `mtu`.
    (segments, gso_size, ihl, doff, tot, length in probe) with the tunnel header and the first
    segment written to probe[HEADROOM:] for the ingress kernel; all 0 when it is not one of
    2+ segments. msg is only read."""
    total = np.int64(total)
    if total < tunnel + l2 + IPV4_HLEN + TCP_HLEN or at + total > msg.shape[0]:
        return 0, 0, 0, 0, 0, 0
    p = at + tunnel
    gso_size, ihl, doff, tot = _whole_tcp(msg, p, total - tunnel, l2, np.int64(mtu))
    if gso_size == 0:
        return 0, 0, 0, 0, 0, 0
    payload = tot - ihl - doff
    nseg = (payload + gso_size - 1) // gso_size
    hlen = l2 + ihl + doff
    h = HEADROOM
    if nseg < 2 or tunnel + hlen + gso_size > probe.shape[0] - h:
        return 0, 0, 0, 0, 0, 0
    copy_bytes(probe, h, msg, at, tunnel)
    seglen = write_segment(msg, p, l2, ihl, doff, tot, gso_size, 0, nseg, probe, h + tunnel)
    return nseg, gso_size, ihl, doff, tot, tunnel + seglen


@njit(cache=True, nogil=True)
def _tso_write(msg, l2, nseg, gso_size, ihl, doff, tot, outer_counted, info):
    """The frame at msg[VNET_HDR_LEN:] as one TSO write at msg[0:]: IPv4 checksum for the whole,
    the TCP checksum as the partial sum (NEEDS_CSUM, as a TSO super-frame from a stack), the
    virtio header over what was in front, and `info`. Returns the write's length."""
    ip = VNET_HDR_LEN + l2
    set_ip_checksum(msg, ip, ihl)
    put_partial_tcp_csum(msg, ip, ihl, tot)
    put_tso_header(msg, 0, l2 + ihl + doff, gso_size, l2 + ihl)
    payload = tot - ihl - doff
    hlen = l2 + ihl + doff
    info[INFO_SEGMENTS] = nseg
    info[INFO_RX_BYTES] = nseg * (outer_counted + hlen) + payload
    info[INFO_TX_BYTES] = nseg * hlen + payload
    return VNET_HDR_LEN + l2 + tot


@njit(cache=True, nogil=True)
def decap_super(msg, total, sender, probe, cfg, peers, info):
    """Make the datagram at msg[RX_PAD:RX_PAD + total] (VXLAN + a TCP super-frame) one TAP
    write at msg[0:]: virtio header over the VXLAN header, the inner frame as it came.

    Returns the write's length, or 0 when it is not one for this path (not a TCP/IPv4
    super-frame of 2+ segments at the overlay MTU, or the ingress kernel does not pass its
    first segment): msg is then unchanged and the datagram is split as usual. Segments are
    gso_size = MTU - headers, so the frame stays within the pods' MTU if it is cut again; its
    TCP checksum goes as the partial sum (NEEDS_CSUM), as a TSO super-frame from a stack
    does, and its IPv4 checksum is made for the whole. Nothing is counted here.
    """
    nseg, gso_size, ihl, doff, tot, ln = _first_segment(msg, RX_PAD, total, VXLAN_HLEN,
                                                        ETH_HLEN, cfg[CFG_MTU], probe)
    if nseg == 0:
        return 0
    v, _, _, _ = vxlan_ingress_one(probe, ln, probe.shape[0] - HEADROOM, sender, cfg,
                                   peers.present, peers.public_ip, peers.sender_keys)
    if v != _FORWARD:
        return 0
    return _tso_write(msg, ETH_HLEN, nseg, gso_size, ihl, doff, tot, VXLAN_HLEN, info)


@njit(cache=True, nogil=True)
def decap_super_udp(msg, total, sender, probe, cfg, peers, info):
    """decap_super for the udp backend: the datagram at msg[RX_PAD_UDP:RX_PAD_UDP + total] (a
    TCP/IPv4 super-frame) becomes one TUN write at msg[0:]; returns its length or 0.

    The udp ingress kernel passes the first segment (sender, inner source and destination,
    TTL); the super-frame gets the TTL it gave.
    """
    nseg, gso_size, ihl, doff, tot, ln = _first_segment(msg, RX_PAD_UDP, total, 0, 0,
                                                        cfg[CFG_MTU], probe)
    if nseg == 0:
        return 0
    v, _, _, _ = udp_ingress_one(probe, ln, probe.shape[0] - HEADROOM, sender, cfg,
                                 peers.present, peers.public_ip, peers.sender_keys)
    if v != _FORWARD:
        return 0
    msg[RX_PAD_UDP + IPV4_TTL_AT] = probe[HEADROOM + IPV4_TTL_AT]
    return _tso_write(msg, 0, nseg, gso_size, ihl, doff, tot, 0, info)


@njit(cache=True, nogil=True)
def count_received(counters, path, info):
    """Count a written tunnel-GSO packet's segments as the ingress kernel (counters row
    `path`) counts FORWARD ones."""
    _count_segments(counters, path, info)
