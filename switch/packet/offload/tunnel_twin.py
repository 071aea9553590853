"""Readable pure-Python twins of the tunnel-GSO kernels (tunnel.py): bytes in, bytes out.

`encap_super(data, cfg, table, ip_id, tx_mac)` is the twin of tunnel.encap_super on the read
data = sup[SUP_HEAD:SUP_HEAD + got]: the frame it writes at sup[0:] with the segment count and
byte counts it reports, or None where the kernel returns 0; `decap_super` likewise for the
receiving end, and the `_udp` twins for the udp backend. Tests hold them byte-identical;
when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from weft.packet.batch import BUFSIZE, HEADROOM
from weft.packet.checksum import inet_checksum
from weft.packet.fastpath import OUTER_TTL
from weft.packet.fastpath_twin import udp_egress, udp_ingress, vxlan_egress, vxlan_ingress
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    IP_DF,
    IPPROTO_UDP,
    IPV4_CSUM_AT,
    IPV4_HLEN,
    IPV4_MAX_LEN,
    IPV4_TOT_LEN_AT,
    IPV4_TTL_AT,
    IPV4_UDP_HLEN,
    IPV4_VER_IHL,
    TCP_CSUM_AT,
    TCP_DOFF_AT,
    TCP_FLAGS_AT,
    TCP_HLEN,
    UDP_HLEN,
    UDP_LEN_AT,
    VXLAN_ENCAP,
    VXLAN_HLEN,
)
from weft.packet.offload.tso_split_twin import split_super
from weft.packet.offload.tso_twin import put_partial_tcp_csum, set_ip_checksum, tso_geometry
from weft.packet.offload.tunnel import FRAME_INNER, FRAME_INNER_UDP, TNL_TTL_EXTRA
from weft.packet.offload.vnet_hdr import (
    GSO_TCPV4,
    GSO_UDP_TUNNEL_IPV4,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHdr,
    tunnel_header,
)
from weft.packet.reasons import Verdict
from weft.packet.table import (
    CFG_LOCAL_PUBLIC_IP,
    CFG_LOCAL_VTEP_MAC,
    CFG_MTU,
    CFG_PORT,
    PeerTable,
)


@dataclass(frozen=True)
class TunnelFrame:
    frame: bytes  # tunnel virtio header + outer Ethernet/IPv4/UDP/VXLAN + inner frame
    segments: int  # datagrams the kernel cuts it into
    rx_bytes: int  # inner bytes of those segments (as the egress kernel counts its input)
    tx_bytes: int  # their outer IPv4 bytes


@dataclass(frozen=True)
class _Super:
    """A TCP super-frame: its packet (from the Ethernet header, if any) and geometry."""

    pkt: bytes
    mss: int
    ihl: int
    doff: int
    tot: int

    @property
    def payload(self) -> int:
        return self.tot - self.ihl - self.doff

    @property
    def segments(self) -> int:
        return -(-self.payload // self.mss)

    def hlen(self, l2: int) -> int:
        """Header bytes per segment, `l2` of them Ethernet."""
        return l2 + self.ihl + self.doff


def _read_super(data: bytes, l2: int, inner: int, row_cap: int) -> _Super | None:
    """The TCP super-frame a device read (virtio header first, `l2` bytes of Ethernet) holds, if
    a tunnel frame with its inner frame at offset `inner` can carry it (kernel: _read_super)."""
    if len(data) < VNET_HDR_LEN:
        return None
    hdr = VnetHdr.unpack(data)
    if hdr.gso_type != GSO_TCPV4:
        return None
    pkt = data[VNET_HDR_LEN:]
    code, ihl, doff, tot = tso_geometry(pkt, l2, hdr.gso_size)
    if code:
        return None
    frame = _Super(pkt, hdr.gso_size, ihl, doff, tot)
    if (frame.segments < 2 or frame.hlen(l2) + frame.mss > row_cap
            or inner - ETH_HLEN + l2 + tot > IPV4_MAX_LEN):
        return None
    return frame


def _tunnel_frame(frame: _Super, l2: int, inner: int, outer: bytes, inner_pkt: bytearray,
                  tx_mac: bytes, cfg: np.ndarray, outer_counted: int) -> TunnelFrame:
    """The tunnel frame around `inner_pkt` (the super-frame from its Ethernet header, if any)
    behind `outer` (outer IPv4/UDP(/VXLAN)); kernel: _finish_frame."""
    put_partial_tcp_csum(inner_pkt, l2, frame.ihl, frame.tot)
    eth = tx_mac + int(cfg[CFG_LOCAL_VTEP_MAC]).to_bytes(6, "big") + ETH_P_IP.to_bytes(2, "big")
    assert len(eth) + len(outer) == inner
    inner_nh = inner + l2
    head = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4,
                   inner_nh + frame.ihl + frame.doff, frame.mss, inner_nh + frame.ihl,
                   TCP_CSUM_AT)
    tnl = tunnel_header(head, ETH_HLEN + IPV4_HLEN, inner_nh)
    nseg, hlen = frame.segments, frame.hlen(l2)
    return TunnelFrame(tnl + eth + outer + bytes(inner_pkt), nseg, nseg * hlen + frame.payload,
                       nseg * (outer_counted + hlen) + frame.payload)


def encap_super(data: bytes, cfg: np.ndarray, table: PeerTable, ip_id: int, tx_mac: bytes,
                row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel.encap_super; `row_cap` is the probe row's room after HEADROOM."""
    frame = _read_super(data, ETH_HLEN, FRAME_INNER, row_cap)
    if frame is None:
        return None
    first = split_super(data, ETH_HLEN)[0]  # what the egress kernel would have seen first
    step = vxlan_egress(first, cfg, table, ip_id)
    if step.verdict != Verdict.FORWARD:
        return None
    # The first segment's outer IPv4/UDP/VXLAN, sized for the whole.
    outer = bytearray(step.out[:VXLAN_ENCAP])
    outer_total = VXLAN_ENCAP + ETH_HLEN + frame.tot
    struct.pack_into("!H", outer, IPV4_TOT_LEN_AT, outer_total)
    outer[IPV4_TTL_AT] += TNL_TTL_EXTRA  # the host's forwarding takes it back
    set_ip_checksum(outer, 0, IPV4_HLEN)
    struct.pack_into("!H", outer, IPV4_HLEN + UDP_LEN_AT, outer_total - IPV4_HLEN)
    # its inner Ethernet header (MACs rewritten), then the super-frame's IPv4 packet
    inner = bytearray(step.out[VXLAN_ENCAP : VXLAN_ENCAP + ETH_HLEN]
                      + frame.pkt[ETH_HLEN : ETH_HLEN + frame.tot])
    return _tunnel_frame(frame, ETH_HLEN, FRAME_INNER, bytes(outer), inner, tx_mac, cfg,
                         VXLAN_ENCAP)


def encap_super_udp(data: bytes, cfg: np.ndarray, table: PeerTable, ip_id: int, tx_mac: bytes,
                    row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel.encap_super_udp on data = sup[SUP_HEAD_UDP:SUP_HEAD_UDP + got]."""
    frame = _read_super(data, 0, FRAME_INNER_UDP, row_cap)
    if frame is None:
        return None
    step = udp_egress(split_super(data, 0)[0], cfg, table)
    if step.verdict != Verdict.FORWARD:
        return None
    inner = bytearray(frame.pkt[: frame.tot])
    inner[IPV4_TTL_AT] = step.out[IPV4_TTL_AT]  # the TTL the udp kernel gave the first segment
    set_ip_checksum(inner, 0, frame.ihl)
    outer = bytearray(struct.pack("!BBHHHBBHII", IPV4_VER_IHL, 0, IPV4_UDP_HLEN + frame.tot,
                                  ip_id & 0xFFFF, IP_DF, OUTER_TTL + TNL_TTL_EXTRA, IPPROTO_UDP,
                                  0, int(cfg[CFG_LOCAL_PUBLIC_IP]), step.dst_ip))
    outer[IPV4_CSUM_AT : IPV4_CSUM_AT + 2] = inet_checksum(bytes(outer)).to_bytes(2, "big")
    port = int(cfg[CFG_PORT])
    udp = struct.pack("!HHHH", port, port, UDP_HLEN + frame.tot, 0)
    return _tunnel_frame(frame, 0, FRAME_INNER_UDP, bytes(outer) + udp, inner, tx_mac, cfg, 0)


def _first_segment(datagram: bytes, tunnel: int, l2: int,
                   cfg: np.ndarray, row_cap: int) -> tuple[_Super, bytes] | None:
    """The super-frame in a received datagram (`tunnel` bytes of tunnel header, then `l2` of
    Ethernet), cut at the overlay MTU, and its first segment behind the tunnel header, as the
    ingress kernel is given it; None when it is not one (kernel: _first_segment)."""
    if len(datagram) < tunnel + l2 + IPV4_HLEN + TCP_HLEN:
        return None
    pkt = datagram[tunnel:]
    ip = pkt[l2:]
    if ip[0] >> 4 != 4 or ip[0] & 0x0F < IPV4_HLEN // 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    if l2 + ihl + TCP_FLAGS_AT >= len(pkt):
        return None
    doff = (ip[ihl + TCP_DOFF_AT] >> 4) * 4
    mss = int(cfg[CFG_MTU]) - ihl - doff
    if mss <= 0:
        return None
    code, ihl, doff, tot = tso_geometry(pkt, l2, mss)
    if code:
        return None
    frame = _Super(pkt, mss, ihl, doff, tot)
    if frame.segments < 2 or tunnel + frame.hlen(l2) + mss > row_cap:
        return None
    first = split_super(VnetHdr(0, GSO_TCPV4, 0, mss).pack() + pkt, l2)[0]
    return frame, datagram[:tunnel] + first


def _tso_write(frame: _Super, l2: int, ttl: int | None, outer_counted: int) -> TunnelFrame:
    """The super-frame as one TSO write (kernel: _tso_write), with the TTL `ttl` if not None."""
    out = bytearray(frame.pkt[: l2 + frame.tot])
    if ttl is not None:
        out[l2 + IPV4_TTL_AT] = ttl
    set_ip_checksum(out, l2, frame.ihl)
    put_partial_tcp_csum(out, l2, frame.ihl, frame.tot)
    hlen = frame.hlen(l2)
    hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, hlen, frame.mss, l2 + frame.ihl, TCP_CSUM_AT)
    nseg = frame.segments
    return TunnelFrame(hdr.pack() + bytes(out), nseg,
                       nseg * (outer_counted + hlen) + frame.payload, nseg * hlen + frame.payload)


def decap_super(datagram: bytes, sender: int, cfg: np.ndarray, table: PeerTable,
                row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel.decap_super on datagram = msg[RX_PAD:RX_PAD + total] (VXLAN header +
    a TCP super-frame): the TAP write it makes at msg[0:], or None where the kernel returns 0.
    rx_bytes/tx_bytes are what the ingress kernel counts for the segments (in and out)."""
    found = _first_segment(datagram, VXLAN_HLEN, ETH_HLEN, cfg, row_cap)
    if found is None:
        return None
    frame, first = found
    if vxlan_ingress(first, sender, cfg, table).verdict != Verdict.FORWARD:
        return None
    return _tso_write(frame, ETH_HLEN, None, VXLAN_HLEN)


def decap_super_udp(datagram: bytes, sender: int, cfg: np.ndarray, table: PeerTable,
                    row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel.decap_super_udp on datagram = msg[RX_PAD_UDP:RX_PAD_UDP + total]."""
    found = _first_segment(datagram, 0, 0, cfg, row_cap)
    if found is None:
        return None
    frame, first = found
    step = udp_ingress(first, sender, cfg, table)
    if step.verdict != Verdict.FORWARD:
        return None
    return _tso_write(frame, 0, step.out[IPV4_TTL_AT], 0)
