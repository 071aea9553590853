"""struct virtio_net_hdr: the 10 bytes before every frame on a TUN/TAP opened with IFF_VNET_HDR.

The one definition of the layout and its constants; the device opener (tundev.py), the offload
kernels (weft.packet.offload, which read and write it in numba) and their twins use these.

    u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset

The u16 fields are little-endian. A tun/tap device uses the legacy virtio layout, whose byte
order is the host's (the kernel's tun_is_little_endian(): TUN_VNET_LE set, or a little-endian
host); weft runs on x86-64 and arm64, both little-endian, so nobody needs TUNSETVNETLE.
"""

from __future__ import annotations

import numpy as np

VNET_HDR = np.dtype([("flags", "u1"), ("gso_type", "u1"), ("hdr_len", "<u2"),
                     ("gso_size", "<u2"), ("csum_start", "<u2"), ("csum_offset", "<u2")])
VNET_HDR_LEN = VNET_HDR.itemsize  # 10, the size TUNSETVNETHDRSZ defaults to


def _offset(field: str) -> int:
    return VNET_HDR.fields[field][1]


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
GSO_ECN = 0x80  # flag bit on gso_type: the super-frame carries ECN CWR
