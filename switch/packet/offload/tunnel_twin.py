"""Readable pure-Python twin of the tunnel-GSO kernel (tunnel_gso.py): bytes in, bytes out.

`encap_super(data, cfg, table, ip_id, tx_mac)` is the twin of tunnel_gso.encap_super on the
read data = sup[SUP_HEAD:SUP_HEAD + got]: the frame it writes at sup[0:] with the segment count
and byte counts it reports, or None where the kernel returns 0; `decap_super` likewise for the
receiving end, and the `_udp` twins for the udp backend. Tests hold them byte-identical;
when they disagree, this file is the specification.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from weft.packet.checksum import fold16, inet_checksum
from weft.packet.fastpath import BUFSIZE, HEADROOM, OUTER_TTL, VXLAN_ENCAP, VXLAN_HDR
from weft.packet.offload.gro_coalesce_twin import (
    VnetHdr,
    _tso_geometry,
    split_super,
    tcp_pseudo_sum,
)
from weft.packet.offload.tunnel import (
    FRAME_INNER,
    FRAME_INNER_UDP,
    GSO_UDP_TUNNEL_IPV4,
    OUTER_DF,
    OUTER_ETH,
    TNL_HDR_LEN,
    TNL_TTL_EXTRA,
)
from weft.packet.offload.vnet_hdr import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR_LEN
from weft.packet.reasons import Verdict
from weft.packet.table import (
    CFG_LOCAL_PUBLIC_IP,
    CFG_LOCAL_VTEP_MAC,
    CFG_MTU,
    CFG_PORT,
    PeerTable,
)
from weft.packet.twins import udp_egress, udp_ingress, vxlan_egress, vxlan_ingress


@dataclass(frozen=True)
class TunnelFrame:
    frame: bytes  # tunnel virtio header + outer Ethernet/IPv4/UDP/VXLAN + inner frame
    segments: int  # datagrams the kernel cuts it into
    rx_bytes: int  # inner bytes of those segments (as the egress kernel counts its input)
    tx_bytes: int  # their outer IPv4 bytes


def tunnel_header(hdr_len: int, gso_size: int, csum_start: int, outer_th: int,
                  inner_nh: int) -> bytes:
    """struct virtio_net_hdr_v1_hash_tunnel for a TCPV4 super-frame over UDP/IPv4."""
    head = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, hdr_len, gso_size,
                   csum_start, 16).pack()
    # num_buffers (v1), hash_value, hash_report, padding: unused on a write
    return head + bytes(2 + 4 + 2 + 2) + struct.pack("<HH", outer_th, inner_nh)


def _super_frame(data: bytes, l2: int) -> tuple | None:
    """A TCP super-frame as the device read it (virtio header first, `l2` bytes of Ethernet):
    (packet, mss, ihl, doff, total length, payload, segments, header bytes per segment)."""
    if len(data) < VNET_HDR_LEN:
        return None
    hdr = VnetHdr.unpack(data)
    if hdr.gso_type != GSO_TCPV4:
        return None
    pkt = data[VNET_HDR_LEN:]
    code, ihl, doff, tot = _tso_geometry(pkt, l2, hdr.gso_size)
    if code:
        return None
    payload = tot - ihl - doff
    return (pkt, hdr.gso_size, ihl, doff, tot, payload, -(-payload // hdr.gso_size),
            l2 + ihl + doff)


def encap_super(data: bytes, cfg: np.ndarray, table: PeerTable, ip_id: int, tx_mac: bytes,
                row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel_gso.encap_super; `row_cap` is the probe row's room after HEADROOM."""
    frame = _super_frame(data, 14)
    if frame is None:
        return None
    pkt, mss, ihl, doff, tot, payload, nseg, hlen = frame
    if nseg < 2 or hlen + mss > row_cap or VXLAN_ENCAP + 14 + tot > 0xFFFF:
        return None
    first = split_super(data, 14)[0]  # what the egress kernel would have seen first
    step = vxlan_egress(first, cfg, table, ip_id)
    if step.verdict != Verdict.FORWARD:
        return None

    # The first segment's outer IPv4/UDP/VXLAN and inner Ethernet header, sized for the whole.
    head = bytearray(step.out[: VXLAN_ENCAP + 14])
    outer_total = VXLAN_ENCAP + 14 + tot
    struct.pack_into("!H", head, 2, outer_total)
    head[8] += TNL_TTL_EXTRA  # the host's forwarding takes it back
    head[10:12] = b"\0\0"
    head[10:12] = inet_checksum(bytes(head[:20])).to_bytes(2, "big")
    struct.pack_into("!H", head, 24, outer_total - 20)
    inner_ip = bytearray(pkt[14 : 14 + tot])
    partial = fold16(tcp_pseudo_sum(inner_ip, tot - ihl))
    inner_ip[ihl + 16 : ihl + 18] = partial.to_bytes(2, "big")
    local_mac = int(cfg[CFG_LOCAL_VTEP_MAC]).to_bytes(6, "big")
    eth = tx_mac + local_mac + b"\x08\x00"
    frame = eth + bytes(head) + bytes(inner_ip)
    tnl = tunnel_header(FRAME_INNER + hlen, mss, FRAME_INNER + 14 + ihl, OUTER_ETH + 20,
                        FRAME_INNER + 14)
    assert len(tnl) == TNL_HDR_LEN
    return TunnelFrame(tnl + frame, nseg, nseg * hlen + payload,
                       nseg * (VXLAN_ENCAP + hlen) + payload)


def decap_super(datagram: bytes, sender: int, cfg: np.ndarray, table: PeerTable,
                row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel_gso.decap_super on datagram = msg[RX_PAD:RX_PAD + total] (VXLAN header +
    a TCP super-frame): the TAP write it makes at msg[0:], or None where the kernel returns 0.
    rx_bytes/tx_bytes are what the ingress kernel counts for the segments (in and out)."""
    if len(datagram) < VXLAN_HDR + 14 + 40:
        return None
    frame = datagram[VXLAN_HDR:]
    if frame[14] >> 4 != 4 or frame[14] & 0x0F < 5:
        return None
    ihl = (frame[14] & 0x0F) * 4
    if 14 + ihl + 13 >= len(frame):
        return None
    doff = (frame[14 + ihl + 12] >> 4) * 4
    mss = int(cfg[CFG_MTU]) - ihl - doff
    if mss <= 0:
        return None
    code, ihl, doff, tot = _tso_geometry(frame, 14, mss)
    if code:
        return None
    payload = tot - ihl - doff
    nseg = -(-payload // mss)
    hlen = 14 + ihl + doff
    if nseg < 2 or VXLAN_HDR + hlen + mss > row_cap:
        return None
    first = split_super(VnetHdr(0, GSO_TCPV4, 0, mss).pack() + frame, 14)[0]
    step = vxlan_ingress(datagram[:VXLAN_HDR] + first, sender, cfg, table)
    if step.verdict != Verdict.FORWARD:
        return None
    out = bytearray(frame[: 14 + tot])
    out[24:26] = b"\0\0"
    out[24:26] = inet_checksum(bytes(out[14 : 14 + ihl])).to_bytes(2, "big")
    partial = fold16(tcp_pseudo_sum(out[14:], tot - ihl))
    out[14 + ihl + 16 : 14 + ihl + 18] = partial.to_bytes(2, "big")
    hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, hlen, mss, 14 + ihl, 16).pack()
    return TunnelFrame(hdr + bytes(out), nseg, nseg * (VXLAN_HDR + hlen) + payload,
                       nseg * hlen + payload)


# ---- the udp backend ---------------------------------------------------------------------------


def encap_super_udp(data: bytes, cfg: np.ndarray, table: PeerTable, ip_id: int, tx_mac: bytes,
                    row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel_gso.encap_super_udp on data = sup[SUP_HEAD_UDP:SUP_HEAD_UDP + got]."""
    frame = _super_frame(data, 0)
    if frame is None:
        return None
    pkt, mss, ihl, doff, tot, payload, nseg, hlen = frame
    if nseg < 2 or hlen + mss > row_cap or 28 + tot > 0xFFFF:
        return None
    step = udp_egress(split_super(data, 0)[0], cfg, table)
    if step.verdict != Verdict.FORWARD:
        return None
    inner = bytearray(pkt[:tot])
    inner[8] = step.out[8]  # the TTL the udp kernel gave the first segment
    inner[10:12] = b"\0\0"
    inner[10:12] = inet_checksum(bytes(inner[:ihl])).to_bytes(2, "big")
    partial = fold16(tcp_pseudo_sum(inner, tot - ihl))
    inner[ihl + 16 : ihl + 18] = partial.to_bytes(2, "big")
    outer = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 28 + tot, ip_id & 0xFFFF, OUTER_DF,
                                  OUTER_TTL + TNL_TTL_EXTRA, 17, 0,
                                  int(cfg[CFG_LOCAL_PUBLIC_IP]), step.dst_ip))
    outer[10:12] = inet_checksum(bytes(outer)).to_bytes(2, "big")
    port = int(cfg[CFG_PORT])
    udp = struct.pack("!HHHH", port, port, 8 + tot, 0)
    eth = tx_mac + int(cfg[CFG_LOCAL_VTEP_MAC]).to_bytes(6, "big") + b"\x08\x00"
    tnl = tunnel_header(FRAME_INNER_UDP + hlen, mss, FRAME_INNER_UDP + ihl, OUTER_ETH + 20,
                        FRAME_INNER_UDP)
    size = nseg * hlen + payload
    return TunnelFrame(tnl + eth + bytes(outer) + udp + bytes(inner), nseg, size, size)


def decap_super_udp(datagram: bytes, sender: int, cfg: np.ndarray, table: PeerTable,
                    row_cap: int = BUFSIZE - HEADROOM) -> TunnelFrame | None:
    """Twin of tunnel_gso.decap_super_udp on datagram = msg[RX_PAD_UDP:RX_PAD_UDP + total]."""
    if len(datagram) < 40 or datagram[0] >> 4 != 4 or datagram[0] & 0x0F < 5:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    if ihl + 13 >= len(datagram):
        return None
    doff = (datagram[ihl + 12] >> 4) * 4
    mss = int(cfg[CFG_MTU]) - ihl - doff
    if mss <= 0:
        return None
    code, ihl, doff, tot = _tso_geometry(datagram, 0, mss)
    if code:
        return None
    payload = tot - ihl - doff
    nseg = -(-payload // mss)
    hlen = ihl + doff
    if nseg < 2 or hlen + mss > row_cap:
        return None
    first = split_super(VnetHdr(0, GSO_TCPV4, 0, mss).pack() + datagram, 0)[0]
    step = udp_ingress(first, sender, cfg, table)
    if step.verdict != Verdict.FORWARD:
        return None
    out = bytearray(datagram[:tot])
    out[8] = step.out[8]
    out[10:12] = b"\0\0"
    out[10:12] = inet_checksum(bytes(out[:ihl])).to_bytes(2, "big")
    partial = fold16(tcp_pseudo_sum(out, tot - ihl))
    out[ihl + 16 : ihl + 18] = partial.to_bytes(2, "big")
    hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, hlen, mss, ihl, 16).pack()
    size = nseg * hlen + payload
    return TunnelFrame(hdr + bytes(out), nseg, size, size)
