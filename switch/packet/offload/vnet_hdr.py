"""struct virtio_net_hdr: the 10 bytes before every frame on a TUN/TAP opened with IFF_VNET_HDR,
and struct virtio_net_hdr_v1_hash_tunnel, the 24 bytes before a frame on the TX TAP.

The one definition of both layouts and their constants: the device opener (weft.dev.tundev),
the offload kernels (which read and write the header in place, in numba), their twins and the
tests use these. Standard library only, so opening a device loads neither numpy nor numba.

    u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset

The u16 fields are little-endian. A tun/tap device uses the legacy virtio layout, whose byte
order is the host's (the kernel's tun_is_little_endian(): TUN_VNET_LE set, or a little-endian
host); weft runs on x86-64 and arm64, both little-endian, so nobody needs TUNSETVNETLE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["GSO_ECN", "GSO_NONE", "GSO_TCPV4", "GSO_TCPV6", "GSO_UDP", "GSO_UDP_L4",
           "GSO_UDP_TUNNEL_IPV4", "TNL_HDR_LEN", "TNL_INNER_NH_AT", "TNL_OUTER_TH_AT",
           "VNET_CSUM_OFFSET", "VNET_CSUM_START", "VNET_FLAGS", "VNET_F_DATA_VALID",
           "VNET_F_NEEDS_CSUM", "VNET_GSO_SIZE", "VNET_GSO_TYPE", "VNET_HDR", "VNET_HDR_LEN",
           "VNET_HDR_LEN_AT", "VnetHdr", "tunnel_header"]

_FIELDS = (("flags", "B"), ("gso_type", "B"), ("hdr_len", "H"), ("gso_size", "H"),
           ("csum_start", "H"), ("csum_offset", "H"))
VNET_HDR = struct.Struct("<" + "".join(code for _, code in _FIELDS))
VNET_HDR_LEN = VNET_HDR.size  # 10, the size TUNSETVNETHDRSZ defaults to


def _offset(field: str) -> int:
    names = [name for name, _ in _FIELDS]
    return struct.calcsize("<" + "".join(code for _, code in _FIELDS[: names.index(field)]))


# Byte offsets of the fields, for the numba kernels that read and write the header in place.
VNET_FLAGS = _offset("flags")
VNET_GSO_TYPE = _offset("gso_type")
VNET_HDR_LEN_AT = _offset("hdr_len")  # the field hdr_len (VNET_HDR_LEN is the header's size)
VNET_GSO_SIZE = _offset("gso_size")
VNET_CSUM_START = _offset("csum_start")
VNET_CSUM_OFFSET = _offset("csum_offset")

# flags
VNET_F_NEEDS_CSUM = 1  # checksum at csum_start + csum_offset holds only the pseudo-header sum
VNET_F_DATA_VALID = 2
# gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_UDP_TUNNEL_IPV4 = 0x20  # bit: the GSO packet is UDP-tunnelled over IPv4 (Linux 6.17+)
GSO_ECN = 0x80  # flag bit on gso_type: the super-frame carries ECN CWR

# struct virtio_net_hdr_v1_hash_tunnel: the fields above, then u16 num_buffers (v1), u32
# hash_value, u16 hash_report, u16 padding, and the two offsets UDP-tunnel GSO needs (u16 LE).
TNL_HDR_LEN = 24  # its size: TUNSETVNETHDRSZ for the TX TAP, so tun parses tunnel GSO
TNL_OUTER_TH_AT = 20  # offset of the outer UDP header from the frame start
TNL_INNER_NH_AT = 22  # offset of the inner IPv4 header


@dataclass(frozen=True)
class VnetHdr:
    """A virtio_net_hdr as Python values (twins, tests, probes); pack() gives its 10 bytes."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                             self.csum_start, self.csum_offset)

    @classmethod
    def unpack(cls, data: bytes) -> VnetHdr:
        return cls(*VNET_HDR.unpack_from(data))


def tunnel_header(head: VnetHdr, outer_th: int, inner_nh: int) -> bytes:
    """struct virtio_net_hdr_v1_hash_tunnel: `head`, the v1 and hash fields (unused on a write)
    zero, and the offsets of the outer UDP header and the inner IPv4 header."""
    out = head.pack() + bytes(TNL_OUTER_TH_AT - VNET_HDR_LEN) + struct.pack("<HH", outer_th,
                                                                           inner_nh)
    assert len(out) == TNL_HDR_LEN
    return out
