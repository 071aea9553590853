"""UDP GSO and GRO messages for the compiled loops: rows into sendmmsg messages, and the segment
size of a received GRO message.

Egress: row_messages makes one message per FORWARD row; gso_messages groups rows for the same
peer and socket into UDP GSO messages (a UDP_SEGMENT cmsg makes the kernel cut them back into
one datagram per row), pointing at the payloads in the rows, so nothing is copied.
Ingress with UDP_GRO on: gro_size reads a message's segment size from its cmsg; cutting the
messages into rows is a buffer transform without IO, weft.packet.offload.udp_gro.gro_split.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.dev.udpopts import SOL_UDP, UDP_GRO, UDP_SEGMENT
from weft.drivers.libc import (
    CMSG_DATA_AT,
    CMSG_LEN_AT,
    CMSG_LEVEL_AT,
    CMSG_TYPE_AT,
    IOV_BASE,
    IOV_LEN,
    IOVEC_SIZE,
    MH_CONTROL,
    MH_CONTROLLEN,
    MH_FLAGS,
    MH_IOV,
    MH_IOVLEN,
    MH_LEN,
    MH_NAME,
    MH_NAMELEN,
    SOCKADDR_IN_SIZE,
    cmsg_space,
    put_sockaddr,
)
from weft.packet.headers import IPV4_HLEN, IPV4_MAX_LEN, IPV4_UDP_HLEN, L4_SPORT_AT
from weft.packet.reasons import Verdict
from weft.packet.wirebytes import wle16

UDP_SEGMENT_DATA = 2  # the UDP_SEGMENT cmsg carries a u16 segment size
GSO_CMSG = cmsg_space(UDP_SEGMENT_DATA)  # 24: the UDP_SEGMENT cmsg of one message
GSO_CMSG_LEN = CMSG_DATA_AT + UDP_SEGMENT_DATA  # 18: its cmsg_len, CMSG_LEN(sizeof(u16))
UDP_GRO_DATA = 4  # the UDP_GRO cmsg carries an int segment size
GRO_CMSG = 64  # control room per received message (the UDP_GRO cmsg is CMSG_SPACE(int) = 24)
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS on every kernel with UDP GSO (newer ones take 128)
# A GSO message is one UDP datagram to the IP layer until it is cut: its payload must fit the
# 16-bit IPv4 total length with the IPv4 and UDP headers, or the send fails with EMSGSIZE.
GSO_BYTES = IPV4_MAX_LEN - IPV4_UDP_HLEN
# 64 KiB receive buffers per recvmmsg when UDP GRO is on. Where nothing merges datagrams (a
# veth without GRO, a NIC with GRO off) each holds one, and a batch is one recvmmsg: coalesce
# merges only within a batch, so the buffers bound the segments per TSO write. 64 (4 MiB, pages
# touched only as far as datagrams reach): wire-like weft vxlan 2.62 -> 2.77 Gbit/s (medians of
# 6, 20 -> 30 segments a write) against 32; with veth offloads no change (8.63 -> 8.76); 128 gave
# 2.89 wire-like but 8.47 with offloads.
GRO_MESSAGES = 64
_FORWARD = int(Verdict.FORWARD)


@njit(cache=True, nogil=True)
def _message(msgs, m, addrs, iovs, k, iovlen):
    """Point message m at sockaddr m and iovecs k..k+iovlen-1; no control data."""
    msgs[m, MH_NAME] = addrs.ctypes.data + m * SOCKADDR_IN_SIZE
    msgs[m, MH_NAMELEN] = SOCKADDR_IN_SIZE
    msgs[m, MH_IOV] = iovs.ctypes.data + k * IOVEC_SIZE
    msgs[m, MH_IOVLEN] = iovlen
    msgs[m, MH_CONTROL] = 0
    msgs[m, MH_CONTROLLEN] = 0
    msgs[m, MH_FLAGS] = 0
    msgs[m, MH_LEN] = 0


@njit(cache=True, nogil=True)
def row_messages(n, b, dport, io):
    """One message per FORWARD row of batch b (its encapsulated packet to its peer), in the
    scratch of io (EgressIO); returns how many."""
    stride = b.bufs.strides[0]
    base = b.bufs.ctypes.data
    m = 0
    for i in range(n):
        if b.verdict[i] != _FORWARD:
            continue
        put_sockaddr(io.addrs[m], np.int64(b.dst_ip[i]), dport)
        io.iovs[m, IOV_BASE] = base + i * stride + b.out_off[i]
        io.iovs[m, IOV_LEN] = b.out_len[i]
        _message(io.msgs, m, io.addrs, io.iovs, m, 1)
        m += 1
    return m


@njit(cache=True, nogil=True)
def _udp_segment_cmsg(ctrl, c, size):
    """A UDP_SEGMENT cmsg with segment size `size` at ctrl[c:c + GSO_CMSG]."""
    for j in range(GSO_CMSG):
        ctrl[c + j] = 0
    ctrl[c + CMSG_LEN_AT] = GSO_CMSG_LEN  # size_t, little-endian
    ctrl[c + CMSG_LEVEL_AT] = SOL_UDP
    ctrl[c + CMSG_TYPE_AT] = UDP_SEGMENT
    wle16(ctrl, c + CMSG_DATA_AT, size)  # u16, host order (little-endian)


@njit(cache=True, nogil=True)
def gso_messages(outer_len, n, b, port, io):
    """Group the FORWARD rows of batch b into UDP GSO messages in the scratch of io (EgressIO);
    returns how many (io.msgs[:m], each leaving by io.msg_fd[:m]).

    A message collects consecutive rows for the same peer and socket whose UDP payloads are
    all one size (the last may be shorter, which closes it), up to GSO_SEGMENTS and GSO_BYTES.
    Its iovecs point at the payloads in the rows, so nothing is copied; a UDP_SEGMENT cmsg
    with that size makes the kernel cut it back into one datagram per row. outer_len > 0: the
    rows carry the outer IPv4+UDP (outer_len bytes) the fast path wrote (Encap.builds_outer:
    vxlan); the payload starts after it, and the flow-hashed source port it chose picks the
    socket of the pool, so one flow always leaves from one port. 0: the row is the payload.
    """
    msgs, iovs, msg_fd, gso_fds = io.msgs, io.iovs, io.msg_fd, io.gso_fds
    stride = b.bufs.strides[0]
    base = b.bufs.ctypes.data
    pool = gso_fds.shape[0]
    m = 0
    k = 0  # iovecs used; a message's iovecs are consecutive
    seg = 0  # the open message's segment size, its segment count and bytes
    segs = 0
    total = 0
    can_grow = False
    last_dst = np.int64(-1)
    for i in range(n):
        if b.verdict[i] != _FORWARD:
            continue
        off = np.int64(b.out_off[i])
        ln = np.int64(b.out_len[i])
        if outer_len > 0:
            # the outer IPv4 + UDP the fast path wrote: a UDP socket writes its own
            at = off + IPV4_HLEN + L4_SPORT_AT
            sport = (np.int64(b.bufs[i, at]) << 8) | np.int64(b.bufs[i, at + 1])
            fd = gso_fds[sport % pool]
            off += outer_len
            ln -= outer_len
        else:
            fd = gso_fds[0]
        dst = np.int64(b.dst_ip[i])
        iovs[k, IOV_BASE] = base + i * stride + off
        iovs[k, IOV_LEN] = ln
        if (can_grow and fd == msg_fd[m - 1] and dst == last_dst and ln <= seg
                and segs < GSO_SEGMENTS and total + ln <= GSO_BYTES):
            msgs[m - 1, MH_IOVLEN] += 1
            segs += 1
            total += ln
            can_grow = ln == seg
        else:
            put_sockaddr(io.addrs[m], dst, port)
            _message(msgs, m, io.addrs, iovs, k, 1)
            msg_fd[m] = fd
            m += 1
            last_dst = dst
            seg = ln
            segs = 1
            total = ln
            can_grow = True
        k += 1
    for q in range(m):
        if msgs[q, MH_IOVLEN] < 2:
            continue  # one datagram: no cmsg, the plain send it always was
        c = q * GSO_CMSG
        first_iov = (msgs[q, MH_IOV] - iovs.ctypes.data) // IOVEC_SIZE
        _udp_segment_cmsg(io.ctrl, c, iovs[first_iov, IOV_LEN])  # the first payload's size
        msgs[q, MH_CONTROL] = io.ctrl.ctypes.data + c
        msgs[q, MH_CONTROLLEN] = GSO_CMSG
    return m


# ---- receive: UDP GRO ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def gro_size(ctrl, controllen):
    """The UDP_GRO cmsg's segment size among a message's control data, or 0 if it has none."""
    pos = 0
    while pos + CMSG_DATA_AT <= controllen:
        clen = 0
        for j in range(8):  # size_t cmsg_len, little-endian
            clen |= np.int64(ctrl[pos + CMSG_LEN_AT + j]) << (8 * j)
        level = (np.int64(ctrl[pos + CMSG_LEVEL_AT])
                 | (np.int64(ctrl[pos + CMSG_LEVEL_AT + 1]) << 8))
        kind = np.int64(ctrl[pos + CMSG_TYPE_AT]) | (np.int64(ctrl[pos + CMSG_TYPE_AT + 1]) << 8)
        if clen < CMSG_DATA_AT:
            return 0
        data = pos + CMSG_DATA_AT
        if level == SOL_UDP and kind == UDP_GRO and data + UDP_GRO_DATA <= controllen:
            # an int segment size; a datagram is < 64 KiB, so three bytes hold it
            return (np.int64(ctrl[data]) | (np.int64(ctrl[data + 1]) << 8)
                    | (np.int64(ctrl[data + 2]) << 16))
        pos += (clen + 7) & ~7  # CMSG_NXTHDR: the next header is 8-byte aligned
    return 0
