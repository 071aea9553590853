"""TSO split in numba: one device read (virtio_net_hdr + frame) -> the ordinary packets in it.

A device opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4) prefixes every
read with a virtio_net_hdr (vnet_hdr.py). `split_super` turns one such read (an Ethernet frame
or raw IPv4 packet at `l3_off`) into the packets the rest of the datapath handles, one per batch
row: a TCP super-frame into its segments, anything else copied with its partial checksum, if
any, completed. It never raises, never reads outside the given lengths and never writes
outside the rows it returns. tso_split_twin.py holds the readable twin; tests keep them
byte-identical.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.batch import HEADROOM
from weft.packet.offload.tso import (
    ERR_MALFORMED,
    ERR_NO_ROOM,
    ERR_UNSUPPORTED,
    copy_bytes,
    tso_geometry,
    write_segment,
)
from weft.packet.offload.vnet_hdr import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    VNET_CSUM_OFFSET,
    VNET_CSUM_START,
    VNET_F_NEEDS_CSUM,
    VNET_FLAGS,
    VNET_GSO_SIZE,
    VNET_GSO_TYPE,
    VNET_HDR_LEN,
)
from weft.packet.wirebytes import fold16, le16, sum16, w16

__all__ = ["split_super"]


@njit(cache=True, nogil=True)
def split_super(src, src_len, l3_off, bufs, lens, first_row):
    """Split one device read into ordinary packets at bufs[row, HEADROOM:], lens[row].

    `src[:src_len]` is a virtio_net_hdr followed by the packet (Ethernet frame for l3_off=14,
    raw IPv4 for l3_off=0). Returns the number of rows written from `first_row` on, or
    ERR_MALFORMED / ERR_NO_ROOM / ERR_UNSUPPORTED, in which case no row was touched.
    gso NONE: copied, with the partial checksum completed if NEEDS_CSUM is set. gso TCPV4:
    gso_size-byte TCP segments with their own IP length/id/checksum and TCP seq/flags/checksum.
    """
    src_len = np.int64(src_len)
    l3_off = np.int64(l3_off)
    first_row = np.int64(first_row)
    if src_len < VNET_HDR_LEN or src_len > src.shape[0] or l3_off < 0:
        return ERR_MALFORMED
    flags = np.int64(src[VNET_FLAGS])
    gso = np.int64(src[VNET_GSO_TYPE])
    gso_size = le16(src, VNET_GSO_SIZE)
    csum_start = le16(src, VNET_CSUM_START)
    csum_offset = le16(src, VNET_CSUM_OFFSET)
    if gso & GSO_ECN or (gso != GSO_NONE and gso != GSO_TCPV4):
        return ERR_UNSUPPORTED
    p = VNET_HDR_LEN
    plen = src_len - p
    rows = min(bufs.shape[0], lens.shape[0])
    cap = bufs.shape[1] - HEADROOM
    h = HEADROOM

    if gso == GSO_NONE:
        needs_csum = (flags & VNET_F_NEEDS_CSUM) != 0
        if plen <= 0 or (needs_csum and csum_start + csum_offset + 2 > plen):
            return ERR_MALFORMED
        if first_row < 0 or first_row >= rows or plen > cap:
            return ERR_NO_ROOM
        row = bufs[first_row]
        copy_bytes(row, h, src, p, plen)
        if needs_csum:
            # The field holds the pseudo-header sum already (what the stack leaves for the NIC),
            # so summing from csum_start to the end gives the full checksum. 0 goes out as
            # 0xFFFF like skb_checksum_help (for UDP 0 would mean "no checksum").
            field = h + csum_start + csum_offset
            csum = ~fold16(sum16(row, h + csum_start, plen - csum_start)) & 0xFFFF
            w16(row, field, csum if csum != 0 else 0xFFFF)
        lens[first_row] = plen
        return 1

    code, ihl, doff, tot = tso_geometry(src, p, plen, l3_off, gso_size)
    if code != 0:
        return code
    payload = tot - ihl - doff
    nseg = max(1, (payload + gso_size - 1) // gso_size)
    hlen = l3_off + ihl + doff
    if first_row < 0 or first_row + nseg > rows or hlen + min(gso_size, payload) > cap:
        return ERR_NO_ROOM
    for i in range(nseg):
        lens[first_row + i] = write_segment(src, p, l3_off, ihl, doff, tot, gso_size, i, nseg,
                                            bufs[first_row + i], h)
    return nseg
