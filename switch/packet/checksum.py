"""The Internet checksum (RFC 1071) in plain Python: the one copy every Python caller uses.

The numba kernels (fastpath, offload) carry their own compiled copies (wirebytes.py); tests hold
them equal to this one. No numpy or numba here, so tools and lab probes can import it cheaply.
"""

from __future__ import annotations

import struct

from weft.packet.headers import IPPROTO_UDP


def sum16(data: bytes) -> int:
    """Unfolded one's-complement sum of big-endian 16-bit words; an odd last byte is padded
    with zero (RFC 1071)."""
    padded = bytes(data) + b"\0" * (len(data) & 1)
    return sum(struct.unpack(f"!{len(padded) // 2}H", padded))


def fold16(total: int) -> int:
    """Fold the carries of an unfolded sum back in until it fits 16 bits."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum; 0 when verifying data that includes a correct checksum."""
    return ~fold16(sum16(data)) & 0xFFFF


def udp_checksum(src: int, dst: int, udp: bytes) -> int:
    """The UDP checksum of a whole datagram (its checksum field 0) from IPv4 `src` to `dst`.

    A sum of 0 goes out as 0xFFFF: 0 in the field means "no checksum" (RFC 768).
    """
    pseudo = struct.pack("!IIBBH", src, dst, 0, IPPROTO_UDP, len(udp))
    return inet_checksum(pseudo + udp) or 0xFFFF
