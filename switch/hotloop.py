"""The compiled IO driver: one numba loop per direction that calls libc itself, without the GIL.

switch/datapath.py pays ~75 us of Python per traversal (select wake-up, os.readv, dispatching a
13-argument kernel, numpy bookkeeping, sendto). Here each direction is one @njit(nogil=True)
function that polls, reads a batch into the Batch rows at HEADROOM, runs the fastpath kernel as a
plain function call, and sends the FORWARD rows itself (sendmmsg on egress, write() into the
device on ingress). It loops over many batches and only comes back to Python when Python has
work: a SLOW row for the scapy slow path, a live-trace observer that wants every batch, a stop
request, or an errno the loop cannot handle.

libc is reached through @intrinsic declarations of the symbols (poll, read, write, sendmmsg,
recvmmsg, __errno_location), not ctypes globals, so cache=True works and a restarted daemon loads
the machine code from __pycache__ instead of compiling for a minute.

Counters stay where `weft status` reads them: the kernels update pipeline.counters, and the loops
add fast-path DROP reasons straight into pipeline.drops[direction], so Pipeline.count_drops is
not called (and must not be, or drops would count twice).

Offload mode (a device opened by switch.tundev with IFF_VNET_HDR + TUNSETOFFLOAD): every device
read and write carries a 10-byte virtio_net_hdr. Egress reads each frame (up to a 64 KiB TSO
super-frame) into one buffer and switch.offload.split_super cuts it into ordinary packets in the
batch rows; ingress runs switch.offload.coalesce over the FORWARD rows and writes each resulting
unit, so one write carries up to 64 segments of a TCP flow. Everything between (kernels, slow
path, observer) still sees one ordinary packet per row.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import caching, cgutils
from numba.extending import intrinsic

from . import fastpath
from .fastpath import HEADROOM, Batch
from .mmsg import enable_udp_gro, probe_udp_offloads
from .offload import (
    ERR_MALFORMED,
    ERR_NO_ROOM,
    GSO_TCPV4,
    UNIT_ROW,
    VNET_HDR_LEN,
    coalesce,
    new_units,
    split_super,
)
from .pipeline import EGRESS, INGRESS, Pipeline
from .reasons import Verdict
from .table import CFG_MTU

log = logging.getLogger(__name__)

BATCH = 64
# Offload mode: a 64 KiB TSO super-frame splits into ~45 MSS-sized rows, so a batch of 64 would
# hold one frame; 128 holds two or three and gives coalesce more segments to merge.
OFFLOAD_BATCH = 128
POLL_MS = 100  # how long a loop sleeps in poll() before it looks at the stop flag again

KIND_VXLAN = 0
KIND_UDP = 1
KINDS = {"vxlan": KIND_VXLAN, "udp": KIND_UDP}

# Why a loop returned to Python (first element of its (code, n, errno) result).
RET_STOP = 0  # ctl[CTL_STOP] was set
RET_SLOW = 1  # the batch in the rows (n of them) has SLOW verdicts for the slow path
RET_BATCH = 2  # ctl[CTL_EACH_BATCH] is set (an observer wants every batch)
RET_ERROR = 3  # a system call failed with an errno the loop does not handle (third element)

# ctl: a uint8 array per loop that Python writes and the loop reads between system calls.
CTL_STOP = 0
CTL_EACH_BATCH = 1
CTL_SIZE = 2

# stats: a uint64 array per loop, written only by that loop's thread.
ST_WAKEUPS = 0  # poll() calls that reported the fd readable
ST_BATCHES = 1  # batches handed to a kernel
ST_PACKETS = 2  # packets read/received
ST_SYSCALLS = 3  # every poll/read/recvmmsg/sendmmsg/write issued
ST_SENT = 4  # egress: datagrams accepted by sendmmsg; ingress: frames written to the device
ST_ERR_AGAIN = 5  # socket buffer full even after waiting for room: dropped
ST_ERR_NOBUFS = 6
ST_ERR_UNREACH = 7  # ENETUNREACH, EHOSTUNREACH, ECONNREFUSED, EPERM (a firewall)
ST_ERR_MSGSIZE = 8
ST_ERR_OTHER = 9
ST_LAST_ERRNO = 10  # errno of the most recent counted send/write error
ST_RETURNS = 11  # returns to Python (slow rows, observer, errors)
ST_DEVICE_IO = 12  # egress: device reads; ingress: device writes (a super-frame counts once)
ST_SPLIT_MALFORMED = 13  # offload egress: reads split_super refused, dropped (by its ERR_* code)
ST_SPLIT_NO_ROOM = 14
ST_SPLIT_UNSUPPORTED = 15
ST_COALESCE_FAILED = 16  # offload ingress: FORWARD rows dropped because coalesce refused them
# Messages of sendmmsg/recvmmsg: with UDP GSO/GRO one message carries several datagrams, so
# ST_SENT / ST_MESSAGES (egress) and ST_PACKETS / ST_MESSAGES (ingress) say how many.
ST_MESSAGES = 17
ST_GSO_REFUSED = 18  # egress: GSO sends the kernel refused (EIO/EINVAL); GSO is then off
ST_TUNNEL_GSO = 19  # ingress: kernel VXLAN GSO packets received whole and split (GRO mode)
ST_SIZE = 20
_ERROR_SLOTS = (ST_ERR_AGAIN, ST_ERR_NOBUFS, ST_ERR_UNREACH, ST_ERR_MSGSIZE, ST_ERR_OTHER)

# Errnos after which retrying cannot help: the thread ends (the others back off and resume).
HARD_ERRNOS = frozenset({errno.EBADF, errno.EBADFD, errno.EFAULT, errno.ENOTSOCK, errno.ENODEV})

_POLLIN = 0x1
_POLLOUT = 0x4
_POLLERR = 0x8
_POLLHUP = 0x10
_POLLNVAL = 0x20
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20
_AF_INET = 2
_EAGAIN = errno.EAGAIN
_EINTR = errno.EINTR
_EBADF = errno.EBADF
_EIO = errno.EIO
_SEND_WAIT_MS = 10  # how long egress waits for socket buffer room before dropping a datagram
_MMSG = 8  # struct mmsghdr is 64 bytes: 8 int64 slots (see DATAPATH-NOTES)
_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_GSO_CMSG = 24  # CMSG_SPACE(sizeof(u16)): the UDP_SEGMENT cmsg of one message
_GRO_CMSG = 64  # control room per received message (the UDP_GRO cmsg is CMSG_SPACE(int) = 24)
GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS on every kernel with UDP GSO (newer ones take 128)
# A GSO message is one UDP datagram to the IP layer until it is cut: its payload must fit the
# 16-bit IPv4 total length with the 20 + 8 header bytes, or the send fails with EMSGSIZE.
_GSO_BYTES = 0xFFFF - 28
# 64 KiB receive buffers per recvmmsg when UDP GRO is on. Where nothing merges datagrams (a
# veth without GRO, a NIC with GRO off) each holds one, so fewer would cut a recvmmsg from 128
# datagrams to a handful; 32 (2 MiB) keeps that cost small where GRO does merge.
GRO_MESSAGES = 32
GRO_BUF = 65536  # the largest UDP datagram (GRO never merges past it) fits
# Spare bytes before each GRO receive buffer: VXLAN header (8) + 2 is the 10-byte room a
# virtio_net_hdr needs in front of the inner frame (see _split_tunnel_gso).
_GRO_PAD = 2
_VXLAN_OUTER = 28  # outer IPv4 + UDP written by the kernel; a UDP socket writes its own
_ONE = np.uint64(1)  # uint64 + an int64 literal would be float64 in numba
_FORWARD = int(Verdict.FORWARD)
_DROP = int(Verdict.DROP)
_SLOW = int(Verdict.SLOW)


# ---- cache invalidation -------------------------------------------------------------------------
# numba decides whether a cached function is stale from its own source file only, but these
# loops compile the fastpath and offload kernels (and the byte helpers both use) into
# themselves: after an edit of one of those files (or of the table/reason constants they
# freeze) the old kernels would keep running. This locator, consulted
# only for functions defined in this file, stamps the cache with all of those files.

_DEPENDS = [os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
            for name in ("hotloop.py", "fastpath.py", "table.py", "reasons.py", "offload.py",
                         "wirebytes.py")]


class _DependentStamp:
    def get_source_stamp(self):
        return tuple((os.stat(path).st_mtime, os.stat(path).st_size) for path in _DEPENDS)

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.abspath(py_file) != _DEPENDS[0]:
            return None
        return super().from_function(py_func, py_file)


class _DependentUserLocator(_DependentStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR set: cache there, as numba would."""


class _DependentInTreeLocator(_DependentStamp, caching.InTreeCacheLocator):
    """Otherwise next to the source, in __pycache__."""


for _locator in (_DependentInTreeLocator, _DependentUserLocator):  # user dir ends up first
    if _locator not in caching.CacheImpl._locator_classes:
        caching.CacheImpl._locator_classes.insert(0, _locator)


# ---- libc through intrinsics ------------------------------------------------------------------
# Every pointer travels as an int64 address (array.ctypes.data + offset) and is cast in the IR,
# so one codegen helper covers all six functions. The symbols are registered with LLVM's
# resolver explicitly: the JIT then links them no matter how the interpreter loaded libc.

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
for _name in ("poll", "read", "write", "sendmmsg", "recvmmsg", "__errno_location"):
    llvm_binding.add_symbol(_name, ctypes.cast(getattr(_libc, _name), ctypes.c_void_p).value)

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_PTR = ir.IntType(8).as_pointer()
_IR = {"p": _PTR, "i": _I32, "l": _I64}


def _libc_codegen(name: str, ret: str, params: str):
    """Lower a call to libc `name`; params/ret letters: p pointer, i int, l long/size_t."""

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_IR[ret], [_IR[p] for p in params])
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        cargs = []
        for kind, value in zip(params, args, strict=True):
            if kind == "p":
                cargs.append(builder.inttoptr(value, _PTR))
            elif kind == "i":
                cargs.append(builder.trunc(value, _I32))
            else:
                cargs.append(value)
        result = builder.call(fn, cargs)
        return builder.sext(result, _I64) if ret == "i" else result

    return codegen


def _sig(n: int):
    return types.int64(*([types.int64] * n))


@intrinsic
def _poll(typingctx, fds, nfds, timeout):
    return _sig(3), _libc_codegen("poll", "i", "pli")


@intrinsic
def _read(typingctx, fd, buf, count):
    return _sig(3), _libc_codegen("read", "l", "ipl")


@intrinsic
def _write(typingctx, fd, buf, count):
    return _sig(3), _libc_codegen("write", "l", "ipl")


@intrinsic
def _sendmmsg(typingctx, fd, msgs, vlen, flags):
    return _sig(4), _libc_codegen("sendmmsg", "i", "ipii")


@intrinsic
def _recvmmsg(typingctx, fd, msgs, vlen, flags, timeout):
    return _sig(5), _libc_codegen("recvmmsg", "i", "ipiip")


@intrinsic
def _errno(typingctx):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32.as_pointer(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "__errno_location")
        return builder.sext(builder.load(builder.call(fn, [])), _I64)

    return types.int64(), codegen


# ---- loop helpers -------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _wait(pollfd, fd, events, timeout_ms, stats):
    """poll() one fd; returns revents (0 on timeout), or -errno."""
    pollfd[0] = fd
    pollfd[1] = events  # also clears revents, the high half of this int32
    stats[ST_SYSCALLS] += _ONE
    r = _poll(pollfd.ctypes.data, 1, timeout_ms)
    if r < 0:
        return -_errno()
    if r == 0:
        return 0
    return (np.int64(pollfd[1]) >> 16) & 0xFFFF


@njit(cache=True, nogil=True)
def _count_error(stats, e):
    if e == _EAGAIN:
        stats[ST_ERR_AGAIN] += _ONE
    elif e == errno.ENOBUFS:
        stats[ST_ERR_NOBUFS] += _ONE
    elif (e == errno.ENETUNREACH or e == errno.EHOSTUNREACH or e == errno.ECONNREFUSED
          or e == errno.EPERM):
        stats[ST_ERR_UNREACH] += _ONE
    elif e == errno.EMSGSIZE:
        stats[ST_ERR_MSGSIZE] += _ONE
    else:
        stats[ST_ERR_OTHER] += _ONE
    stats[ST_LAST_ERRNO] = np.uint64(e)


@njit(cache=True, nogil=True)
def _hard(e):
    return e == _EBADF or e == errno.EBADFD or e == errno.EFAULT or e == errno.ENOTSOCK


@njit(cache=True, nogil=True)
def _send_all(fd, msgs, k, m, pollfd, stats):
    """sendmmsg msgs[k:m], retrying after partial sends; returns 0 or a hard errno.

    A failing message is counted and skipped (the kernel reports its errno only when it is the
    first of a call). A full non-blocking socket (the udp backend shares its socket with ingress)
    gets one wait for room, so a burst is paced instead of dropped. ST_SENT counts datagrams:
    a GSO message carries one per iovec (msg_iovlen, slot 3).
    """
    waited = False
    base = msgs.ctypes.data
    while k < m:
        stats[ST_SYSCALLS] += _ONE
        r = _sendmmsg(fd, base + k * 64, m - k, 0)
        if r > 0:
            for q in range(k, k + r):
                stats[ST_SENT] += np.uint64(msgs[q, 3])
            stats[ST_MESSAGES] += np.uint64(r)
            k += r
            waited = False
            continue
        e = _errno()
        if e == _EINTR:
            continue
        if _hard(e):
            return e
        if e == _EAGAIN and not waited:
            waited = True
            _wait(pollfd, fd, _POLLOUT, _SEND_WAIT_MS, stats)
            continue
        if msgs[k, 3] > 1 and (e == _EIO or e == errno.EINVAL):
            # The route's device or this kernel will not segment for us: the loop stops
            # building GSO messages (this one's segments are lost; TCP sends them again).
            stats[ST_GSO_REFUSED] += _ONE
        _count_error(stats, e)
        k += 1
        waited = False
    return 0


@njit(cache=True, nogil=True)
def _tally(n, verdict, reason, drops):
    """Add the batch's DROP reasons to drops (pipeline.drops[direction]); returns # SLOW."""
    slow = 0
    for i in range(n):
        v = verdict[i]
        if v == _DROP:
            drops[reason[i]] += np.uint64(1)
        elif v == _SLOW:
            slow += 1
    return slow


# ---- egress: device -> peers --------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _count_split(stats, code):
    if code == ERR_MALFORMED:
        stats[ST_SPLIT_MALFORMED] += _ONE
    elif code == ERR_NO_ROOM:
        stats[ST_SPLIT_NO_ROOM] += _ONE
    else:
        stats[ST_SPLIT_UNSUPPORTED] += _ONE


@njit(cache=True, nogil=True)
def _put_sockaddr(a, ip, port):
    """struct sockaddr_in for (ip, port) into the 16 bytes of a (network byte order fields)."""
    a[0] = _AF_INET  # sa_family, little-endian u16
    a[1] = 0
    a[2] = (port >> 8) & 0xFF
    a[3] = port & 0xFF
    a[4] = (ip >> 24) & 0xFF
    a[5] = (ip >> 16) & 0xFF
    a[6] = (ip >> 8) & 0xFF
    a[7] = ip & 0xFF


@njit(cache=True, nogil=True)
def _row_messages(n, bufs, out_off, out_len, verdict, dst_ip, dport, msgs, iovs, addrs):
    """One message per FORWARD row (its encapsulated packet to its peer); returns how many."""
    stride = bufs.strides[0]
    base = bufs.ctypes.data
    m = 0
    for i in range(n):
        if verdict[i] != _FORWARD:
            continue
        _put_sockaddr(addrs[m], np.int64(dst_ip[i]), dport)
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
def _gso_messages(kind, n, bufs, out_off, out_len, verdict, dst_ip, port, gso_fds,
                  msgs, iovs, addrs, ctrl, msg_fd):
    """Group the FORWARD rows into UDP GSO messages; returns how many (msgs[:m], msg_fd[:m]).

    A message collects consecutive rows for the same peer and socket whose UDP payloads are
    all one size (the last may be shorter, which closes it), up to GSO_SEGMENTS and _GSO_BYTES.
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
            off += _VXLAN_OUTER
            ln -= _VXLAN_OUTER
        else:
            fd = gso_fds[0]
        dst = np.int64(dst_ip[i])
        iovs[k, 0] = base + i * stride + off
        iovs[k, 1] = ln
        if (can_grow and fd == msg_fd[m - 1] and dst == last_dst and ln <= seg
                and segs < GSO_SEGMENTS and total + ln <= _GSO_BYTES):
            msgs[m - 1, 3] += 1
            segs += 1
            total += ln
            can_grow = ln == seg
        else:
            _put_sockaddr(addrs[m], dst, port)
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
        c = q * _GSO_CMSG
        for j in range(_GSO_CMSG):
            ctrl[c + j] = 0
        ctrl[c] = 18  # cmsg_len = CMSG_LEN(sizeof(u16)), a little-endian size_t
        ctrl[c + 8] = _SOL_UDP  # cmsg_level
        ctrl[c + 12] = _UDP_SEGMENT  # cmsg_type
        size = iovs[(msgs[q, 2] - iovs.ctypes.data) // 16, 1]  # the first payload's length
        ctrl[c + 16] = size & 0xFF
        ctrl[c + 17] = (size >> 8) & 0xFF
        msgs[q, 4] = ctrl.ctypes.data + c
        msgs[q, 5] = _GSO_CMSG
    return m


@njit(cache=True, nogil=True)
def _send_by_socket(msgs, msg_fd, m, pollfd, stats):
    """_send_all for each run of messages that leave by the same socket; 0 or a hard errno."""
    q = 0
    while q < m:
        end = q + 1
        while end < m and msg_fd[end] == msg_fd[q]:
            end += 1
        e = _send_all(msg_fd[q], msgs, q, end, pollfd, stats)
        if e != 0:
            return e
        q = end
    return 0


@njit(cache=True, nogil=True)
def egress_loop(kind, dev_fd, tx_fd, port, timeout_ms, ctl, stats, drops,
                bufs, lens, out_off, out_len, verdict, reason, dst_ip,
                cfg, present, public_ip, vtep_mac, counters,
                pollfd, msgs, iovs, addrs, l3_off, sup, gso_fds, ctrl, msg_fd):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno).

    l3_off < 0: a plain device, each read is one packet straight into a row. l3_off >= 0 (14
    for a TAP, 0 for a TUN): an offload device; each read lands in `sup` (virtio_net_hdr +
    frame) and split_super spreads it over as many rows as it has segments.
    gso_fds not empty: UDP sockets that take UDP_SEGMENT (see _gso_messages); the FORWARD rows
    leave as GSO messages on them until the kernel refuses one, then one datagram per row on
    tx_fd as without them.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    offload = l3_off >= 0
    sup_base = sup.ctypes.data
    sup_cap = sup.shape[0]
    pending = 0  # length of a frame waiting in sup: it did not fit the rows the batch had left
    full = False  # the last batch filled every row: more is likely queued, skip poll()
    rev = 0
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        rev = 0
        if not full and pending == 0:
            rev = _wait(pollfd, dev_fd, _POLLIN, timeout_ms, stats)
            if rev < 0:
                if -rev == _EINTR:
                    continue
                return RET_ERROR, 0, -rev
            if rev == 0:
                continue
            if rev & _POLLNVAL:
                return RET_ERROR, 0, _EBADF
            stats[ST_WAKEUPS] += _ONE
        n = 0
        err = 0
        while n < rows:
            if offload and pending:
                got = pending
                pending = 0
            else:
                stats[ST_SYSCALLS] += _ONE
                if offload:
                    got = _read(dev_fd, sup_base, sup_cap)
                else:
                    got = _read(dev_fd, base + n * stride + HEADROOM, cap)
                if got <= 0:
                    e = _errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
                    if e == _EINTR:
                        continue
                    if e != _EAGAIN:
                        err = e
                    break
                stats[ST_DEVICE_IO] += _ONE
            if not offload:
                lens[n] = got
                n += 1
                continue
            r = split_super(sup, got, l3_off, bufs, lens, n)
            if r > 0:
                n += r
            elif r == ERR_NO_ROOM and n > 0:
                pending = got  # send what the rows hold, then split this frame from row 0
                break
            else:
                _count_split(stats, r)
        full = n == rows or pending > 0
        if n == 0:
            if err != 0:
                return RET_ERROR, 0, err
            if rev & (_POLLERR | _POLLHUP):  # readable by error, nothing to read: detached
                return RET_ERROR, 0, _EIO
            continue
        stats[ST_BATCHES] += _ONE
        stats[ST_PACKETS] += np.uint64(n)
        if kind == KIND_VXLAN:
            fastpath.vxlan_egress(bufs, lens, n, out_off, out_len, verdict, reason, dst_ip,
                                  cfg, present, public_ip, vtep_mac, counters)
            dport = 0  # a raw IP socket: the port is in the header the kernel wrote
        else:
            fastpath.udp_egress(bufs, lens, n, out_off, out_len, verdict, reason, dst_ip,
                                cfg, present, public_ip, counters)
            dport = port
        slow = _tally(n, verdict, reason, drops)
        if gso_fds.shape[0] > 0 and stats[ST_GSO_REFUSED] == 0:
            m = _gso_messages(kind, n, bufs, out_off, out_len, verdict, dst_ip, port, gso_fds,
                              msgs, iovs, addrs, ctrl, msg_fd)
            e = _send_by_socket(msgs, msg_fd, m, pollfd, stats)
        else:
            m = _row_messages(n, bufs, out_off, out_len, verdict, dst_ip, dport, msgs, iovs,
                              addrs)
            e = _send_all(tx_fd, msgs, 0, m, pollfd, stats)
        if e != 0:
            return RET_ERROR, n, e
        if slow:
            stats[ST_RETURNS] += _ONE
            return RET_SLOW, n, 0
        if err != 0:
            return RET_ERROR, n, err
        if ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += _ONE
            return RET_BATCH, n, 0


# ---- ingress: peers -> device -------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _write_one(dev_fd, addr, length, stats):
    """write() one frame into the device; returns 1 if written, 0 if counted as failed, or
    -errno for an errno that ends the loop."""
    while True:
        stats[ST_SYSCALLS] += _ONE
        w = _write(dev_fd, addr, length)
        if w >= 0:
            stats[ST_DEVICE_IO] += _ONE
            return 1
        e = _errno()
        if e == _EINTR:
            continue
        if _hard(e):
            return -e
        _count_error(stats, e)
        return 0


@njit(cache=True, nogil=True)
def _unit_segments(u, ulen):
    """How many packets a coalesce unit carries (its header says TCPV4 when it merged some)."""
    if u[1] != GSO_TCPV4:
        return 1
    hdr_len = np.int64(u[2]) | (np.int64(u[3]) << 8)
    gso_size = np.int64(u[4]) | (np.int64(u[5]) << 8)
    payload = np.int64(ulen) - VNET_HDR_LEN - hdr_len
    if gso_size <= 0 or payload <= 0:
        return 1
    return (payload + gso_size - 1) // gso_size


@njit(cache=True, nogil=True)
def _src_of(a):
    """The IPv4 address (host order) of a struct sockaddr_in."""
    return ((np.uint32(a[4]) << 24) | (np.uint32(a[5]) << 16) | (np.uint32(a[6]) << 8)
            | np.uint32(a[7]))


@njit(cache=True, nogil=True)
def _gro_size(ctrl, controllen):
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
        if level == _SOL_UDP and kind == _UDP_GRO and pos + 20 <= controllen:
            return (np.int64(ctrl[pos + 16]) | (np.int64(ctrl[pos + 17]) << 8)
                    | (np.int64(ctrl[pos + 18]) << 16))
        pos += (clen + 7) & ~7
    return 0


@njit(cache=True, nogil=True)
def _split_tunnel_gso(msg, total, mtu, bufs, lens, first):
    """A kernel VXLAN's GSO packet that reached us whole: VXLAN header + a TCP super-frame.

    A veth with offloads on hands the peer's 64 KiB SKB_GSO_UDP_TUNNEL packet to our socket
    as one datagram without a UDP_GRO cmsg (the kernel only segments unexpected UDP_L4 GSO).
    Its inner frame is what a TSO TAP read gives, so split_super cuts it into segments that
    fit our MTU (computing every checksum, the inner one may be partial) and each row gets the
    VXLAN header back in front. msg is the receive row: _GRO_PAD spare bytes, then the
    datagram, so the virtio_net_hdr split_super wants is written over the VXLAN header (saved
    and put back). Returns rows written from `first`, or split_super's negative code.
    """
    hdr = np.empty(8, dtype=np.uint8)
    for j in range(8):
        hdr[j] = msg[_GRO_PAD + j]
    ip = _GRO_PAD + 8 + 14
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
        msg[_GRO_PAD + j] = hdr[j]
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
def _gro_split(kind, gro, gro_len, gro_seg, gro_src, got, gi, gpos, bufs, lens, src_ip, cap,
               mtu, stats):
    """Copy the datagrams of received GRO messages gi.. into rows; returns (n, gi, gpos).

    Message j holds gro_len[j] bytes, datagrams of gro_seg[j] bytes back to back (the last may
    be shorter); each becomes a row with its sender's address. When the rows run out the
    cursor (gi, gpos) says where the next batch starts, so nothing is dropped for lack of rows.
    A datagram longer than a row is a kernel VXLAN's GSO packet (_split_tunnel_gso) or else
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
                r = _split_tunnel_gso(gro[gi], total, mtu, bufs, lens, n)
                if r == ERR_NO_ROOM and n > 0:
                    break  # the next batch starts with it, from row 0
            if r > 0:
                stats[ST_TUNNEL_GSO] += _ONE
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
                row[HEADROOM + j] = src[_GRO_PAD + gpos + j]
            lens[n] = take
        src_ip[n] = gro_src[gi]
        n += 1
        gpos += take
        if gpos >= total:
            gi += 1
            gpos = 0
    return n, gi, gpos


@njit(cache=True, nogil=True)
def ingress_loop(kind, rx_fd, dev_fd, timeout_ms, ctl, stats, drops,
                 bufs, lens, src_ip, out_off, out_len, verdict, reason, dst_ip,
                 cfg, present, public_ip, sender_keys, counters,
                 pollfd, msgs, iovs, addrs, l3_off, out, out_lens,
                 gro_n, gro, gro_ctrl, gro_len, gro_seg, gro_src):
    """recvmmsg batches, check/decapsulate, write the FORWARD rows; returns (code, rows, errno).

    l3_off < 0: a plain device, one write() per FORWARD row. l3_off >= 0: an offload device;
    coalesce turns the FORWARD rows into units in `out` (virtio_net_hdr + packet, consecutive
    segments of a TCP flow merged into one super-frame) and each unit is one write().
    gro_n > 0: rx_fd has UDP_GRO on, so one message can hold many datagrams of a flow; each
    recvmmsg takes gro_n of them into the 64 KiB rows of `gro` and _gro_split cuts them into
    batch rows by the segment size of their UDP_GRO cmsg.
    Ingress kernels never say SLOW (nothing from a peer is answered), so only stop, observer
    and errors come back to Python.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    out_base = out.ctypes.data
    out_stride = out.strides[0]
    slots = gro_n if gro_n > 0 else rows  # messages per recvmmsg
    for i in range(slots):  # the iovecs never move; only the value-result fields are reset
        if gro_n > 0:
            iovs[i, 0] = gro.ctypes.data + i * gro.strides[0] + _GRO_PAD
            iovs[i, 1] = gro.shape[1] - _GRO_PAD
            msgs[i, 4] = gro_ctrl.ctypes.data + i * gro_ctrl.strides[0]
        else:
            iovs[i, 0] = base + i * stride + HEADROOM
            iovs[i, 1] = cap
            msgs[i, 4] = 0
        msgs[i, 0] = addrs.ctypes.data + i * 16
        msgs[i, 2] = iovs.ctypes.data + i * 16
        msgs[i, 3] = 1
        msgs[i, 5] = 0
    full = False
    got = 0  # GRO messages received by the last recvmmsg, gi/gpos: how far they are split
    gi = 0
    gpos = 0
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        if gi >= got:  # nothing carried over from the last call: receive
            if not full:
                rev = _wait(pollfd, rx_fd, _POLLIN, timeout_ms, stats)
                if rev < 0:
                    if -rev == _EINTR:
                        continue
                    return RET_ERROR, 0, -rev
                if rev == 0:
                    continue
                if rev & _POLLNVAL:
                    return RET_ERROR, 0, _EBADF
                stats[ST_WAKEUPS] += _ONE
            for i in range(slots):
                msgs[i, 1] = 16
                msgs[i, 5] = _GRO_CMSG if gro_n > 0 else 0
                msgs[i, 6] = 0
                msgs[i, 7] = 0
            stats[ST_SYSCALLS] += _ONE
            got = _recvmmsg(rx_fd, msgs.ctypes.data, slots, _MSG_DONTWAIT, 0)
            gi = 0
            gpos = 0
            if got < 0:
                got = 0
                full = False
                e = _errno()
                if e == _EAGAIN or e == _EINTR:
                    continue
                if _hard(e):
                    return RET_ERROR, 0, e
                # A pending ICMP error on the socket (ECONNREFUSED and kin) is consumed by this
                # call; count it and go on receiving.
                _count_error(stats, e)
                continue
            full = got == slots
            if got == 0:
                continue
            stats[ST_MESSAGES] += np.uint64(got)
            for i in range(got):
                ln = msgs[i, 7] & 0xFFFFFFFF
                truncated = ((msgs[i, 6] & 0xFFFFFFFF) & _MSG_TRUNC) != 0
                if gro_n > 0:
                    seg = _gro_size(gro_ctrl[i], msgs[i, 5])
                    gro_len[i] = ln
                    gro_seg[i] = seg if 0 < seg < ln else ln  # no cmsg: one datagram
                    if truncated or ln == 0:  # over 64 KiB cannot be; empty is one row too
                        gro_len[i] = cap + 1
                        gro_seg[i] = cap + 1
                    gro_src[i] = _src_of(addrs[i])
                else:
                    lens[i] = cap + 1 if truncated else ln  # too long: dropped as TRUNCATED
                    src_ip[i] = _src_of(addrs[i])
        if gro_n > 0:
            n, gi, gpos = _gro_split(kind, gro, gro_len, gro_seg, gro_src, got, gi, gpos, bufs,
                                     lens, src_ip, cap, cfg[CFG_MTU], stats)
        else:
            n = got
            got = 0
        stats[ST_BATCHES] += _ONE
        stats[ST_PACKETS] += np.uint64(n)
        if kind == KIND_VXLAN:
            fastpath.vxlan_ingress(bufs, lens, src_ip, n, out_off, out_len, verdict, reason,
                                   dst_ip, cfg, present, public_ip, sender_keys, counters)
        else:
            fastpath.udp_ingress(bufs, lens, src_ip, n, out_off, out_len, verdict, reason,
                                 dst_ip, cfg, present, public_ip, sender_keys, counters)
        _tally(n, verdict, reason, drops)
        if l3_off >= 0:
            units = coalesce(bufs, out_off, out_len, verdict, n, l3_off, out, out_lens)
            if units < 0:
                # Cannot happen with `out` sized by new_units(rows); counted, not hidden.
                for i in range(n):
                    if verdict[i] == _FORWARD:
                        stats[ST_COALESCE_FAILED] += _ONE
                units = 0
            for m in range(units):
                r = _write_one(dev_fd, out_base + m * out_stride, out_lens[m], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                if r:
                    stats[ST_SENT] += np.uint64(_unit_segments(out[m], out_lens[m]))
        else:
            for i in range(n):
                if verdict[i] != _FORWARD:
                    continue
                r = _write_one(dev_fd, base + i * stride + out_off[i], out_len[i], stats)
                if r < 0:
                    return RET_ERROR, n, -r
                stats[ST_SENT] += np.uint64(r)
        if ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += _ONE
            return RET_BATCH, n, 0


# ---- the Python side ----------------------------------------------------------------------------


class _Side:
    """One direction's Batch, control/stat arrays and system-call scratch (owned by its thread).

    In offload mode egress also owns `sup`, the buffer one device read (virtio_net_hdr + up to
    64 KiB) lands in, and ingress owns `out`/`out_lens`, the write units of coalesce. In plain
    mode they are 1-element placeholders, so both modes share one compiled loop per direction.
    Egress keeps one UDP_SEGMENT cmsg slot and socket per message (`ctrl`, `msg_fd`); ingress
    with UDP GRO owns the 64 KiB receive buffers (`gro`), their control data and what each
    message held (length, segment size, sender).
    """

    def __init__(self, name: str, rows: int, offload: bool, gro: bool = False) -> None:
        self.name = name
        self.batch = Batch(rows)
        self.ctl = np.zeros(CTL_SIZE, dtype=np.uint8)
        self.stats = np.zeros(ST_SIZE, dtype=np.uint64)
        self.pollfd = np.zeros(2, dtype=np.int32)  # struct pollfd {int fd; short ev, rev}
        self.msgs = np.zeros((rows, _MMSG), dtype=np.int64)  # struct mmsghdr
        self.iovs = np.zeros((rows, 2), dtype=np.int64)  # struct iovec
        self.addrs = np.zeros((rows, 16), dtype=np.uint8)  # struct sockaddr_in
        wants_sup = offload and name == "egress"
        self.sup = np.zeros(UNIT_ROW if wants_sup else 1, dtype=np.uint8)
        if offload and name == "ingress":
            self.out, self.out_lens = new_units(rows)
        else:
            self.out, self.out_lens = np.zeros((1, 1), np.uint8), np.zeros(1, np.int32)
        self.ctrl = np.zeros(rows * _GSO_CMSG, dtype=np.uint8)
        self.msg_fd = np.zeros(rows, dtype=np.int64)
        self.gso_fds = np.zeros(0, dtype=np.int64)  # HotLoop sets the sockets when GSO is on
        slots = min(GRO_MESSAGES, rows) if gro else 1
        self.gro_n = slots if gro else 0
        self.gro = np.zeros((slots, GRO_BUF + _GRO_PAD if gro else 1), dtype=np.uint8)
        self.gro_ctrl = np.zeros((slots, _GRO_CMSG), dtype=np.uint8)
        self.gro_len = np.zeros(slots, dtype=np.int64)
        self.gro_seg = np.zeros(slots, dtype=np.int64)
        self.gro_src = np.zeros(slots, dtype=np.int64)


class HotLoop:
    """Drop-in for switch.datapath.Datapath: same start/stop/errors/observer, compiled loops.

    device_fd is the TUN/TAP, rx_fd the socket bound to the backend port, tx_fd the socket
    that sends (the raw IP socket for vxlan, the same UDP socket for udp), port the UDP port
    peers listen on. The fds stay owned by the caller (close them after stop()). offload=True
    when the device was opened in switch.tundev's "offload" mode (IFF_VNET_HDR, TSO): the loops
    then split and coalesce super-frames, and every write into the device carries a
    virtio_net_hdr, the slow path's answers included.

    gso_fds: UDP sockets to send with UDP GSO (switch.datapath.Transport.gso_sockets); used
    only if this kernel takes UDP_SEGMENT, else egress stays on tx_fd. gro=True turns UDP_GRO
    on for rx_fd at start(), if the kernel takes it. `udp_offloads` says what is in use.
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int | None = None, poll_ms: int = POLL_MS, offload: bool = False,
                 gso_fds: Sequence[int] = (), gro: bool = False,
                 observer: Callable[..., None] | None = None) -> None:
        if pipeline.kind not in KINDS:
            raise ValueError(f"no hot loop for backend {pipeline.kind!r}")
        self.pipeline = pipeline
        self.kind = KINDS[pipeline.kind]
        self.fd = device_fd
        self.rx_fd = rx_fd
        self.tx_fd = tx_fd
        self.port = port
        self.poll_ms = poll_ms
        self.offload = offload
        # Where IPv4 starts in a device packet: after Ethernet on the vxlan TAP, at 0 on the udp
        # TUN; -1 tells the loops the device has no virtio_net_hdr.
        self.l3_off = (14 if self.kind == KIND_VXLAN else 0) if offload else -1
        self.batch = batch or (OFFLOAD_BATCH if offload else BATCH)
        kernel = probe_udp_offloads() if (gso_fds or gro) else {}
        # What the kernel refused is said, not hidden: status shows it next to the mode.
        self.udp_offloads = {
            "gso": ("on" if kernel.get("udp_segment") else "refused by the kernel")
            if gso_fds else "off",
            "gro": ("on" if kernel.get("udp_gro") else "refused by the kernel")
            if gro else "off",
        }
        gso = np.array(list(gso_fds) if self.udp_offloads["gso"] == "on" else [],
                       dtype=np.int64)
        self.egress = _Side("egress", self.batch, offload)
        self.egress.gso_fds = gso
        self.ingress = _Side("ingress", self.batch, offload,
                             gro=self.udp_offloads["gro"] == "on")
        self._observer: Callable[..., None] | None = None
        self.observer = observer
        self.slow_write_errors = 0  # slow-path answers the device refused
        self.fatal: dict[str, int] = {}  # direction -> errno that ended its thread
        self.compile_seconds = 0.0
        os.set_blocking(device_fd, False)
        os.set_blocking(rx_fd, False)
        self.threads = [
            threading.Thread(target=self._run, args=(self.egress, EGRESS), name="weft-egress",
                             daemon=True),
            threading.Thread(target=self._run, args=(self.ingress, INGRESS),
                             name="weft-ingress", daemon=True),
        ]

    # Trace hook, observer(direction, batch, n), as on Datapath. Setting it makes both loops
    # come back after every batch; None lets them run free again. In offload mode the rows are
    # still ordinary packets: after split_super on egress, before coalesce on ingress.
    @property
    def observer(self) -> Callable[..., None] | None:
        return self._observer

    @observer.setter
    def observer(self, fn: Callable[..., None] | None) -> None:
        self._observer = fn
        for side in (self.egress, self.ingress):
            side.ctl[CTL_EACH_BATCH] = 1 if fn is not None else 0

    def compile(self) -> float:
        """Load (or compile) both loops for these argument types; returns seconds taken.

        Each loop is called once with its stop flag already set, which returns before any
        system call, so the first real packet does not wait for the compiler.
        """
        t0 = time.perf_counter()
        for side, direction in ((self.egress, EGRESS), (self.ingress, INGRESS)):
            ctl = side.ctl.copy()
            ctl[CTL_STOP] = 1
            self._call(side, direction, ctl)
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds

    def start(self) -> None:
        self.compile()
        # GRO only once the loop that reads 64 KiB messages is sure to run: a loop with
        # row-sized buffers would get merged datagrams cut short.
        if self.ingress.gro_n and not enable_udp_gro(self.rx_fd):
            raise OSError(f"UDP_GRO refused on fd {self.rx_fd}")
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        for side in (self.egress, self.ingress):
            side.ctl[CTL_STOP] = 1
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=timeout)

    @property
    def errors(self) -> dict[str, int]:
        """Datapath's {"send", "write"} plus the hot loop's breakdown by kind."""
        e, i = self.egress.stats, self.ingress.stats
        out = {
            "send": int(sum(int(e[s]) for s in _ERROR_SLOTS)),
            "write": int(sum(int(i[s]) for s in _ERROR_SLOTS)) + self.slow_write_errors,
            "send_full": int(e[ST_ERR_AGAIN]),
            "send_nobufs": int(e[ST_ERR_NOBUFS]),
            "send_unreachable": int(e[ST_ERR_UNREACH]),
            "send_msgsize": int(e[ST_ERR_MSGSIZE]),
        }
        out.update({f"fatal_{k}": v for k, v in self.fatal.items()})
        return out

    def offload_drops(self) -> dict[str, int]:
        """Packets the offload step dropped, by cause, under names for `weft status` drops.

        A refused device read never became rows, so the fast path never counted it; without
        these the drop report would miss them.
        """
        e, i = self.egress.stats, self.ingress.stats
        counts = {
            "offload_split_malformed": int(e[ST_SPLIT_MALFORMED]),
            "offload_split_no_room": int(e[ST_SPLIT_NO_ROOM]),
            "offload_split_unsupported": int(e[ST_SPLIT_UNSUPPORTED]),
            "offload_coalesce_failed": int(i[ST_COALESCE_FAILED]),
        }
        return {k: v for k, v in counts.items() if v}

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-direction loop figures for status: wake-ups, batches, packets, system calls.

        `device_io` is device reads (egress) or writes (ingress); in offload mode packets/
        device_io is how many packets one super-frame carried on average.
        """
        out = {}
        for side in (self.egress, self.ingress):
            s = side.stats
            out[side.name] = {
                "wakeups": int(s[ST_WAKEUPS]), "batches": int(s[ST_BATCHES]),
                "packets": int(s[ST_PACKETS]), "syscalls": int(s[ST_SYSCALLS]),
                "sent": int(s[ST_SENT]), "device_io": int(s[ST_DEVICE_IO]),
                "returns": int(s[ST_RETURNS]), "last_errno": int(s[ST_LAST_ERRNO]),
                "messages": int(s[ST_MESSAGES]),
                **({"tunnel_gso": int(s[ST_TUNNEL_GSO])} if side is self.ingress else {}),
            }
        return out

    def offloads(self) -> dict[str, str]:
        """UDP GSO / GRO for status: "on", "off", or why not (refused by kernel or at a send)."""
        out = dict(self.udp_offloads)
        if self.egress.stats[ST_GSO_REFUSED]:
            errno_ = int(self.egress.stats[ST_LAST_ERRNO])
            out["gso"] = f"refused at a send ({os.strerror(errno_)}): one datagram per packet"
        return out

    # -- threads ----------------------------------------------------------------------------
    def _call(self, side: _Side, direction: int, ctl: np.ndarray) -> tuple[int, int, int]:
        p, b, t = self.pipeline, side.batch, self.pipeline.table
        if direction == EGRESS:
            return egress_loop(self.kind, self.fd, self.tx_fd, self.port, self.poll_ms, ctl,
                               side.stats, p.drops[EGRESS], b.bufs, b.lens, b.out_off,
                               b.out_len, b.verdict, b.reason, b.dst_ip, p.cfg, t.present,
                               t.public_ip, t.vtep_mac, p.counters, side.pollfd, side.msgs,
                               side.iovs, side.addrs, self.l3_off, side.sup, side.gso_fds,
                               side.ctrl, side.msg_fd)
        return ingress_loop(self.kind, self.rx_fd, self.fd, self.poll_ms, ctl, side.stats,
                            p.drops[INGRESS], b.bufs, b.lens, b.src_ip, b.out_off, b.out_len,
                            b.verdict, b.reason, b.dst_ip, p.cfg, t.present, t.public_ip,
                            t.sender_keys, p.counters, side.pollfd, side.msgs, side.iovs,
                            side.addrs, self.l3_off, side.out, side.out_lens, side.gro_n,
                            side.gro, side.gro_ctrl, side.gro_len, side.gro_seg, side.gro_src)

    def _run(self, side: _Side, direction: int) -> None:
        try:
            while True:
                code, n, err = self._call(side, direction, side.ctl)
                if code == RET_STOP:
                    return
                if code == RET_SLOW or (code == RET_ERROR and n and direction == EGRESS):
                    self._slow(side.batch, n)
                observer = self._observer
                if observer is not None and n:
                    observer(side.name, side.batch, n)
                if code == RET_ERROR:
                    if err in HARD_ERRNOS:
                        log.error("%s loop ends: %s", side.name, os.strerror(err))
                        self.fatal[side.name] = err
                        return
                    log.warning("%s loop: %s; resuming", side.name, os.strerror(err))
                    time.sleep(self.poll_ms / 1000)  # do not spin on a persistent error
        except Exception:  # noqa: BLE001 - a datapath bug must be loud, not silent
            log.exception("hot loop thread %s died", side.name)

    def _slow(self, batch: Batch, n: int) -> None:
        """Run the scapy slow path for the SLOW rows and write its answers into the device."""
        # An offload device reads a virtio_net_hdr before every frame; all zeros says "no
        # GSO, checksums complete", which is what the slow path builds.
        prefix = bytes(VNET_HDR_LEN) if self.offload else b""
        for i in np.flatnonzero(batch.verdict[:n] == _SLOW):
            packet = batch.bufs[i, HEADROOM:HEADROOM + batch.lens[i]].tobytes()
            for answer in self.pipeline.slow(packet, int(batch.reason[i])).writes:
                try:
                    os.write(self.fd, prefix + answer)
                except OSError as exc:
                    self.slow_write_errors += 1
                    log.debug("device write failed: %s", exc)
