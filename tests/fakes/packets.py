"""IPv4 packets for the fakes to carry, and what a hop does to one.

Written from RFC 791 and RFC 1071 without weft's code, so a test comparing weft's output with
these compares it with an independent answer (the kernels update the checksum incrementally,
RFC 1624; ttl_decremented recomputes it from scratch).
"""

from __future__ import annotations

import socket
import struct


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(src: str, dst: str, ttl: int = 64, payload: bytes = b"weft" * 4,
             ident: int = 7, sport: int = 1234, dport: int = 5678) -> bytes:
    """An IPv4/UDP packet with a valid header checksum (UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, ttl, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return with_header_checksum(header) + udp


def with_header_checksum(header: bytes) -> bytes:
    """The IPv4 header with its checksum field computed."""
    zeroed = header[:10] + b"\0\0" + header[12:]
    return zeroed[:10] + struct.pack("!H", internet_checksum(zeroed)) + zeroed[12:]


def ttl_decremented(packet: bytes, hops: int = 1) -> bytes:
    """The packet after `hops` routers: TTL lower by that much, header checksum recomputed."""
    ihl = (packet[0] & 0x0F) * 4
    header = bytearray(packet[:ihl])
    header[8] -= hops
    return with_header_checksum(bytes(header)) + packet[ihl:]


def ethernet(dst: bytes, src: bytes, payload: bytes, ethertype: int = 0x0800) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload
