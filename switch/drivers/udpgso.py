"""UDP GSO and GRO for the compiled loops: rows into sendmmsg messages, GRO messages into rows.

Egress: row_messages makes one message per FORWARD row; gso_messages groups rows for the same
peer and socket into UDP GSO messages (a UDP_SEGMENT cmsg makes the kernel cut them back into
one datagram per row), pointing at the payloads in the rows, so nothing is copied.
Ingress with UDP_GRO on: gro_size reads a message's segment size from its cmsg and gro_split
copies each datagram into a row; a kernel VXLAN's GSO packet that arrived whole is cut into
rows by split_tunnel_gso.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft.drivers import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.drivers.libc import SOL_UDP, UDP_GRO, UDP_SEGMENT, put_sockaddr
from weft.drivers.loopio import KIND_VXLAN, ONE, ST_TUNNEL_GSO
from weft.packet.fastpath import HEADROOM
from weft.packet.offload import ERR_MALFORMED, ERR_NO_ROOM, GSO_TCPV4, VNET_HDR_LEN, split_super
from weft.packet.reasons import Verdict

GSO_CMSG = 24  # CMSG_SPACE(sizeof(u16)): the UDP_SEGMENT cmsg of one message
GRO_CMSG = 64  # control room per received message (the UDP_GRO cmsg is CMSG_SPACE(int) = 24)
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS on every kernel with UDP GSO (newer ones take 128)
# A GSO message is one UDP datagram to the IP layer until it is cut: its payload must fit the
# 16-bit IPv4 total length with the 20 + 8 header bytes, or the send fails with EMSGSIZE.
GSO_BYTES = 0xFFFF - 28
# 64 KiB receive buffers per recvmmsg when UDP GRO is on. Where nothing merges datagrams (a
# veth without GRO, a NIC with GRO off) each holds one, so fewer would cut a recvmmsg from 128
# datagrams to a handful; 32 (2 MiB) keeps that cost small where GRO does merge.
GRO_MESSAGES = 32
GRO_BUF = 65536  # the largest UDP datagram (GRO never merges past it) fits
# Spare bytes before each GRO receive buffer: VXLAN header (8) + 2 is the 10-byte room a
# virtio_net_hdr needs in front of the inner frame (see split_tunnel_gso).
GRO_PAD = 2
VXLAN_OUTER = 28  # outer IPv4 + UDP written by the kernel; a UDP socket writes its own
_FORWARD = int(Verdict.FORWARD)


@njit(cache=True, nogil=True)
def row_messages(n, bufs, out_off, out_len, verdict, dst_ip, dport, msgs, iovs, addrs):
    """One message per FORWARD row (its encapsulated packet to its peer); returns how many."""
    stride = bufs.strides[0]
    base = bufs.ctypes.data
    m = 0
    for i in range(n):
        if verdict[i] != _FORWARD:
            continue
        put_sockaddr(addrs[m], np.int64(dst_ip[i]), dport)
        iovs[m, 0] = base + i * stride + out_off[i]
        iovs[m, 1] = out_len[i]
        msgs[m, 0] = addrs.ctypes.data + m * 16
        msgs[m, 1] = 16
        msgs[m, 2] = iovs.ctypes.data + m * 16
        msgs[m, 3] = 1
        msgs[m, 4] = 0
        msgs[m, 5] = 0
        msgs[m, 6] = 0
        msgs[m, 7] = 0
        m += 1
    return m


@njit(cache=True, nogil=True)
def gso_messages(kind, n, bufs, out_off, out_len, verdict, dst_ip, port, gso_fds,
                  msgs, iovs, addrs, ctrl, msg_fd):
    """Group the FORWARD rows into UDP GSO messages; returns how many (msgs[:m], msg_fd[:m]).

    A message collects consecutive rows for the same peer and socket whose UDP payloads are
    all one size (the last may be shorter, which closes it), up to GSO_SEGMENTS and GSO_BYTES.
    Its iovecs point at the payloads in the rows, so nothing is copied; a UDP_SEGMENT cmsg
    with that size makes the kernel cut it back into one datagram per row. vxlan rows carry
    the outer IPv4+UDP the kernel wrote: the payload starts after it, and the flow-hashed
    source port it chose picks the socket of the pool, so one flow always leaves from one port.
    """
    stride = bufs.strides[0]
    base = bufs.ctypes.data
    pool = gso_fds.shape[0]
    m = 0
    k = 0  # iovecs used; a message's iovecs are consecutive
    seg = 0  # the open message's segment size, its segment count and bytes
    segs = 0
    total = 0
    can_grow = False
    last_dst = np.int64(-1)
    for i in range(n):
        if verdict[i] != _FORWARD:
            continue
        off = np.int64(out_off[i])
        ln = np.int64(out_len[i])
        if kind == KIND_VXLAN:
            sport = (np.int64(bufs[i, off + 20]) << 8) | np.int64(bufs[i, off + 21])
            fd = gso_fds[sport % pool]
            off += VXLAN_OUTER
            ln -= VXLAN_OUTER
        else:
            fd = gso_fds[0]
        dst = np.int64(dst_ip[i])
        iovs[k, 0] = base + i * stride + off
        iovs[k, 1] = ln
        if (can_grow and fd == msg_fd[m - 1] and dst == last_dst and ln <= seg
                and segs < GSO_SEGMENTS and total + ln <= GSO_BYTES):
            msgs[m - 1, 3] += 1
            segs += 1
            total += ln
            can_grow = ln == seg
        else:
            put_sockaddr(addrs[m], dst, port)
            msgs[m, 0] = addrs.ctypes.data + m * 16
            msgs[m, 1] = 16
            msgs[m, 2] = iovs.ctypes.data + k * 16
            msgs[m, 3] = 1
            msgs[m, 4] = 0
            msgs[m, 5] = 0
            msgs[m, 6] = 0
            msgs[m, 7] = 0
            msg_fd[m] = fd
            m += 1
            last_dst = dst
            seg = ln
            segs = 1
            total = ln
            can_grow = True
        k += 1
    for q in range(m):
        if msgs[q, 3] < 2:
            continue  # one datagram: no cmsg, the plain send it always was
        c = q * GSO_CMSG
        for j in range(GSO_CMSG):
            ctrl[c + j] = 0
        ctrl[c] = 18  # cmsg_len = CMSG_LEN(sizeof(u16)), a little-endian size_t
        ctrl[c + 8] = SOL_UDP  # cmsg_level
        ctrl[c + 12] = UDP_SEGMENT  # cmsg_type
        size = iovs[(msgs[q, 2] - iovs.ctypes.data) // 16, 1]  # the first payload's length
        ctrl[c + 16] = size & 0xFF
        ctrl[c + 17] = (size >> 8) & 0xFF
        msgs[q, 4] = ctrl.ctypes.data + c
        msgs[q, 5] = GSO_CMSG
    return m


# ---- receive: UDP GRO ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def gro_size(ctrl, controllen):
    """The UDP_GRO cmsg's segment size among a message's control data, or 0 if it has none."""
    pos = 0
    while pos + 16 <= controllen:
        clen = 0
        for j in range(8):
            clen |= np.int64(ctrl[pos + j]) << (8 * j)
        level = np.int64(ctrl[pos + 8]) | (np.int64(ctrl[pos + 9]) << 8)
        kind = np.int64(ctrl[pos + 12]) | (np.int64(ctrl[pos + 13]) << 8)
        if clen < 16:
            return 0
        if level == SOL_UDP and kind == UDP_GRO and pos + 20 <= controllen:
            return (np.int64(ctrl[pos + 16]) | (np.int64(ctrl[pos + 17]) << 8)
                    | (np.int64(ctrl[pos + 18]) << 16))
        pos += (clen + 7) & ~7
    return 0


@njit(cache=True, nogil=True)
def split_tunnel_gso(msg, total, mtu, bufs, lens, first):
    """A kernel VXLAN's GSO packet that reached us whole: VXLAN header + a TCP super-frame.

    A veth with offloads on hands the peer's 64 KiB SKB_GSO_UDP_TUNNEL packet to our socket
    as one datagram without a UDP_GRO cmsg (the kernel only segments unexpected UDP_L4 GSO).
    Its inner frame is what a TSO TAP read gives, so split_super cuts it into segments that
    fit our MTU (computing every checksum, the inner one may be partial) and each row gets the
    VXLAN header back in front. msg is the receive row: GRO_PAD spare bytes, then the
    datagram, so the virtio_net_hdr split_super wants is written over the VXLAN header (saved
    and put back). Returns rows written from `first`, or split_super's negative code.
    """
    hdr = np.empty(8, dtype=np.uint8)
    for j in range(8):
        hdr[j] = msg[GRO_PAD + j]
    ip = GRO_PAD + 8 + 14
    if total < 8 + 14 + 40 or (msg[ip] & 0x0F) < 5:
        return ERR_MALFORMED
    ihl = (np.int64(msg[ip]) & 0x0F) * 4
    doff = (np.int64(msg[ip + ihl + 12]) >> 4) * 4
    gso_size = mtu - ihl - doff  # any size works for the rows; this one keeps them in the MTU
    if gso_size <= 0:
        return ERR_MALFORMED
    for j in range(VNET_HDR_LEN):  # flags 0, gso TCPV4, hdr_len 0, gso_size, csum 0
        msg[j] = 0
    msg[1] = GSO_TCPV4
    msg[4] = gso_size & 0xFF
    msg[5] = (gso_size >> 8) & 0xFF
    r = split_super(msg, VNET_HDR_LEN + total - 8, 14, bufs, lens, first)
    for j in range(8):
        msg[GRO_PAD + j] = hdr[j]
    for i in range(first, first + max(r, 0)):
        row = bufs[i]
        ln = lens[i]
        for j in range(ln - 1, -1, -1):  # make room for the VXLAN header in front
            row[HEADROOM + 8 + j] = row[HEADROOM + j]
        for j in range(8):
            row[HEADROOM + j] = hdr[j]
        lens[i] = ln + 8
    return r


@njit(cache=True, nogil=True)
def gro_split(kind, gro, gro_len, gro_seg, gro_src, got, gi, gpos, bufs, lens, src_ip, cap,
               mtu, stats):
    """Copy the datagrams of received GRO messages gi.. into rows; returns (n, gi, gpos).

    Message j holds gro_len[j] bytes, datagrams of gro_seg[j] bytes back to back (the last may
    be shorter); each becomes a row with its sender's address. When the rows run out the
    cursor (gi, gpos) says where the next batch starts, so nothing is dropped for lack of rows.
    A datagram longer than a row is a kernel VXLAN's GSO packet (split_tunnel_gso) or else
    one row of length cap + 1, which the kernel drops as TRUNCATED, as the plain path does.
    """
    rows = bufs.shape[0]
    n = 0
    while n < rows and gi < got:
        total = gro_len[gi]
        seg = gro_seg[gi]
        take = min(seg, total - gpos)
        if seg > cap:
            take = total - gpos
            r = -1
            if kind == KIND_VXLAN and total <= GRO_BUF:
                r = split_tunnel_gso(gro[gi], total, mtu, bufs, lens, n)
                if r == ERR_NO_ROOM and n > 0:
                    break  # the next batch starts with it, from row 0
            if r > 0:
                stats[ST_TUNNEL_GSO] += ONE
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
    return n, gi, gpos
