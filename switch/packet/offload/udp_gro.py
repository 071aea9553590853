"""UDP GRO receive buffers in numba: what a recvmmsg with UDP_GRO on left -> batch rows.

With UDP_GRO on a socket (weft.drivers.udpgso reads the cmsgs, weft.drivers.compiled_loops
receives), one message can hold many datagrams of a flow back to back, all of one segment
size. gro_split copies each datagram into a batch row; a kernel VXLAN's GSO packet that
arrived whole (longer than a row) is cut into rows by split_tunnel_gso. No system calls here:
buffers in, rows out.

Layout of a receive buffer: GRO_PAD spare bytes, then up to GRO_BUF of datagrams. The spare
bytes are the room a virtio_net_hdr needs in front of a bare IPv4 payload (udp backend); a VXLAN
datagram's inner frame has RX_PAD + its VXLAN header in front, so vxlan code works on the buffer
from VX_VIEW on (split_tunnel_gso, and tunnel.decap_super, which writes a virtio header there
and the TAP write starts there).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet.batch import HEADROOM
from weft.packet.encap import VXLAN, Encap
from weft.packet.headers import ETH_HLEN, IPV4_HLEN, TCP_HLEN, VXLAN_HLEN
from weft.packet.offload.tso import ERR_MALFORMED, ERR_NO_ROOM, ipv4_ihl, tcp_doff
from weft.packet.offload.tso_split import split_super
from weft.packet.offload.tunnel import RX_PAD, RX_PAD_UDP
from weft.packet.offload.vnet_hdr import GSO_TCPV4, VNET_GSO_SIZE, VNET_GSO_TYPE, VNET_HDR_LEN
from weft.packet.wirebytes import wle16

__all__ = ["GRO_BUF", "GRO_PAD", "UDP_VIEW", "VX_VIEW", "gro_split", "receive_view",
           "split_tunnel_gso"]

GRO_BUF = 65536  # the largest UDP datagram (GRO never merges past it) fits
GRO_PAD = VNET_HDR_LEN  # 10
VX_VIEW = GRO_PAD - RX_PAD  # 8: a vxlan receive row seen from here has RX_PAD spare bytes
UDP_VIEW = GRO_PAD - RX_PAD_UDP  # 0
_VXLAN = VXLAN.code  # a module int: what numba reads of the row


def receive_view(encap: Encap) -> int:
    """Where an encapsulation's code sees a receive row from (VX_VIEW, UDP_VIEW): RX_PAD spare
    bytes before its header, so a virtio header written there ends where the inner frame
    starts."""
    return GRO_PAD - (VNET_HDR_LEN - encap.header_len)


@njit(cache=True, nogil=True)
def split_tunnel_gso(msg, total, mtu, bufs, lens, first):
    """A kernel VXLAN's GSO packet that reached us whole: VXLAN header + a TCP super-frame.

    A veth with offloads on hands the peer's 64 KiB SKB_GSO_UDP_TUNNEL packet to our socket
    as one datagram without a UDP_GRO cmsg (the kernel only segments unexpected UDP_L4 GSO).
    Its inner frame is what a TSO TAP read gives, so split_super cuts it into segments that
    fit our MTU (computing every checksum, the inner one may be partial) and each row gets the
    VXLAN header back in front. msg is the receive row from VX_VIEW on: RX_PAD spare bytes,
    then the datagram, so the virtio_net_hdr split_super wants is written over the VXLAN
    header (saved and put back). Returns rows written from `first`, or split_super's code.
    """
    hdr = np.int64(0)  # the VXLAN header, kept in a register (no allocation per packet)
    for j in range(VXLAN_HLEN):
        hdr = (hdr << 8) | np.int64(msg[RX_PAD + j])
    ip = RX_PAD + VXLAN_HLEN + ETH_HLEN
    if total < VXLAN_HLEN + ETH_HLEN + IPV4_HLEN + TCP_HLEN or ipv4_ihl(msg, ip) < IPV4_HLEN:
        return ERR_MALFORMED
    ihl = ipv4_ihl(msg, ip)
    doff = tcp_doff(msg, ip + ihl)
    gso_size = mtu - ihl - doff  # any size works for the rows; this one keeps them in the MTU
    if gso_size <= 0:
        return ERR_MALFORMED
    for j in range(VNET_HDR_LEN):  # flags 0, gso TCPV4, hdr_len 0, gso_size, csum 0
        msg[j] = 0
    msg[VNET_GSO_TYPE] = GSO_TCPV4
    wle16(msg, VNET_GSO_SIZE, gso_size)
    r = split_super(msg, VNET_HDR_LEN + total - VXLAN_HLEN, ETH_HLEN, bufs, lens, first)
    for j in range(VXLAN_HLEN):
        msg[RX_PAD + j] = (hdr >> (56 - 8 * j)) & 0xFF
    for i in range(first, first + max(r, 0)):
        row = bufs[i]
        ln = lens[i]
        for j in range(ln - 1, -1, -1):  # make room for the VXLAN header in front
            row[HEADROOM + VXLAN_HLEN + j] = row[HEADROOM + j]
        for j in range(VXLAN_HLEN):
            row[HEADROOM + j] = (hdr >> (56 - 8 * j)) & 0xFF
        lens[i] = ln + VXLAN_HLEN
    return r


@njit(cache=True, nogil=True)
def gro_split(code, io, got, gi, gpos, b, cap, mtu, whole_first=False):
    """Copy the datagrams of received GRO messages gi.. into the rows of batch b; returns
    (n, gi, gpos, tunnel packets split). code: the encapsulation's (weft.packet.encap).

    io holds the messages (drivers.loop_args.IngressIO: gro, gro_len, gro_seg, gro_src). Message
    j holds gro_len[j] bytes, datagrams of gro_seg[j] bytes back to back (the last may be
    shorter); each becomes a row with its sender's address. When the rows run out the cursor
    (gi, gpos) says where the next batch starts, so nothing is dropped for lack of rows.
    A datagram longer than a row is a kernel VXLAN's GSO packet (split_tunnel_gso, counted in
    the fourth value) or else one row of length cap + 1, which the kernel drops as TRUNCATED,
    as the plain path does. whole_first: the loop tries such a packet whole first
    (tunnel.decap_super), so one met after other rows ends the batch and is left for the next
    call (rows keep their order).
    """
    gro, gro_len, gro_seg, gro_src = io.gro, io.gro_len, io.gro_seg, io.gro_src
    bufs, lens, src_ip = b.bufs, b.lens, b.src_ip
    rows = bufs.shape[0]
    n = 0
    tunnels = 0
    while n < rows and gi < got:
        total = gro_len[gi]
        seg = gro_seg[gi]
        take = min(seg, total - gpos)
        if seg > cap:
            if whole_first and n > 0:
                break
            take = total - gpos
            r = -1
            if code == _VXLAN and total <= GRO_BUF:  # the kernel's VXLAN GSO layout
                r = split_tunnel_gso(gro[gi, VX_VIEW:], total, mtu, bufs, lens, n)
                if r == ERR_NO_ROOM and n > 0:
                    break  # the next batch starts with it, from row 0
            if r > 0:
                tunnels += 1
                for i in range(n, n + r):
                    src_ip[i] = gro_src[gi]
                n += r
                gi += 1
                gpos = 0
                continue
            lens[n] = cap + 1
        else:
            row = bufs[n]
            src = gro[gi]
            for j in range(take):
                row[HEADROOM + j] = src[GRO_PAD + gpos + j]
            lens[n] = take
        src_ip[n] = gro_src[gi]
        n += 1
        gpos += take
        if gpos >= total:
            gi += 1
            gpos = 0
    return n, gi, gpos, tunnels
