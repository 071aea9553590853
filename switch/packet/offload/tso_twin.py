"""Readable pure-Python twins of tso.py: what a TCP/IPv4 super-frame is, and its checksums.

tso_split_twin, gro_coalesce_twin and tunnel_twin build on these as the kernels build on tso.py.
"""

from __future__ import annotations

import struct

from weft.packet.checksum import fold16, sum16
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_TYPE_AT,
    IP_MF_OFFSET,
    IPPROTO_TCP,
    IPV4_ADDRS,
    IPV4_CSUM_AT,
    IPV4_HLEN,
    IPV4_PROTO_AT,
    IPV4_TOT_LEN_AT,
    TCP_CSUM_AT,
    TCP_DOFF_AT,
    TCP_HLEN,
)
from weft.packet.offload.tso import ERR_MALFORMED, ERR_UNSUPPORTED


def tcp_pseudo_sum(ip: bytes, tcp_len: int) -> int:
    """Unfolded IPv4 pseudo-header sum for TCP (addresses, protocol 6, TCP length)."""
    return sum16(ip[IPV4_ADDRS]) + IPPROTO_TCP + tcp_len


def set_ip_checksum(pkt: bytearray, ip: int, ihl: int) -> None:
    """Zero and rewrite the checksum of the IPv4 header at pkt[ip:]."""
    field = ip + IPV4_CSUM_AT
    pkt[field : field + 2] = b"\0\0"
    csum = ~fold16(sum16(pkt[ip : ip + ihl])) & 0xFFFF
    pkt[field : field + 2] = csum.to_bytes(2, "big")


def put_partial_tcp_csum(pkt: bytearray, ip: int, ihl: int, tot: int) -> None:
    """The folded pseudo-header sum of the whole packet at pkt[ip:] in its TCP checksum field
    (CHECKSUM_PARTIAL), for whoever cuts it to complete per segment."""
    field = ip + ihl + TCP_CSUM_AT
    pkt[field : field + 2] = fold16(tcp_pseudo_sum(pkt[ip:], tot - ihl)).to_bytes(2, "big")


def tso_geometry(pkt: bytes, l3_off: int, gso_size: int) -> tuple[int, int, int, int]:
    """(code, ihl, doff, tot) of a TCPV4 super-frame; code 0 when usable. hdr_len is a hint
    (tun writes skb_headlen() there), so header lengths come from IHL and the data offset."""
    if len(pkt) < l3_off + IPV4_HLEN:
        return ERR_MALFORMED, 0, 0, 0
    if l3_off == ETH_HLEN and pkt[ETH_TYPE_AT : ETH_TYPE_AT + 2] != ETH_P_IP.to_bytes(2, "big"):
        return ERR_UNSUPPORTED, 0, 0, 0
    ip = pkt[l3_off:]
    if ip[0] >> 4 != 4:
        return ERR_UNSUPPORTED, 0, 0, 0
    ihl = (ip[0] & 0x0F) * 4
    if ihl < IPV4_HLEN:
        return ERR_MALFORMED, 0, 0, 0
    if ip[IPV4_PROTO_AT] != IPPROTO_TCP:
        return ERR_UNSUPPORTED, 0, 0, 0
    tot, frag = struct.unpack_from("!H2xH", ip, IPV4_TOT_LEN_AT)
    if tot < ihl + TCP_HLEN or l3_off + tot > len(pkt):
        return ERR_MALFORMED, 0, 0, 0
    if frag & IP_MF_OFFSET:
        return ERR_MALFORMED, 0, 0, 0
    doff = (ip[ihl + TCP_DOFF_AT] >> 4) * 4
    if doff < TCP_HLEN or ihl + doff > tot or gso_size <= 0:
        return ERR_MALFORMED, 0, 0, 0
    return 0, ihl, doff, tot
