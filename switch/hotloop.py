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
from collections.abc import Callable

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import caching, cgutils
from numba.extending import intrinsic

from . import fastpath
from .fastpath import HEADROOM, Batch
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
def _send_all(fd, msgs, m, pollfd, stats):
    """sendmmsg msgs[:m], retrying after partial sends; returns 0 or a hard errno.

    A failing datagram is counted and skipped (the kernel reports its errno only when it is the
    first of a call). A full non-blocking socket (the udp backend shares its socket with ingress)
    gets one wait for room, so a burst is paced instead of dropped.
    """
    k = 0
    waited = False
    base = msgs.ctypes.data
    while k < m:
        stats[ST_SYSCALLS] += _ONE
        r = _sendmmsg(fd, base + k * 64, m - k, 0)
        if r > 0:
            k += r
            stats[ST_SENT] += np.uint64(r)
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
def egress_loop(kind, dev_fd, tx_fd, port, timeout_ms, ctl, stats, drops,
                bufs, lens, out_off, out_len, verdict, reason, dst_ip,
                cfg, present, public_ip, vtep_mac, counters,
                pollfd, msgs, iovs, addrs, l3_off, sup):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno).

    l3_off < 0: a plain device, each read is one packet straight into a row. l3_off >= 0 (14
    for a TAP, 0 for a TUN): an offload device; each read lands in `sup` (virtio_net_hdr +
    frame) and split_super spreads it over as many rows as it has segments.
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
        m = 0
        for i in range(n):
            if verdict[i] != _FORWARD:
                continue
            a = addrs[m]
            a[0] = _AF_INET  # sa_family, little-endian u16
            a[1] = 0
            a[2] = (dport >> 8) & 0xFF  # sin_port, network order
            a[3] = dport & 0xFF
            ip = np.int64(dst_ip[i])
            a[4] = (ip >> 24) & 0xFF
            a[5] = (ip >> 16) & 0xFF
            a[6] = (ip >> 8) & 0xFF
            a[7] = ip & 0xFF
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
        if m:
            e = _send_all(tx_fd, msgs, m, pollfd, stats)
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
def ingress_loop(kind, rx_fd, dev_fd, timeout_ms, ctl, stats, drops,
                 bufs, lens, src_ip, out_off, out_len, verdict, reason, dst_ip,
                 cfg, present, public_ip, sender_keys, counters,
                 pollfd, msgs, iovs, addrs, l3_off, out, out_lens):
    """recvmmsg batches, check/decapsulate, write the FORWARD rows; returns (code, rows, errno).

    l3_off < 0: a plain device, one write() per FORWARD row. l3_off >= 0: an offload device;
    coalesce turns the FORWARD rows into units in `out` (virtio_net_hdr + packet, consecutive
    segments of a TCP flow merged into one super-frame) and each unit is one write().
    Ingress kernels never say SLOW (nothing from a peer is answered), so only stop, observer
    and errors come back to Python.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    out_base = out.ctypes.data
    out_stride = out.strides[0]
    for i in range(rows):  # the iovecs never move; only msg_namelen is reset per call
        iovs[i, 0] = base + i * stride + HEADROOM
        iovs[i, 1] = cap
        msgs[i, 0] = addrs.ctypes.data + i * 16
        msgs[i, 2] = iovs.ctypes.data + i * 16
        msgs[i, 3] = 1
        msgs[i, 4] = 0
        msgs[i, 5] = 0
    full = False
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
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
        for i in range(rows):
            msgs[i, 1] = 16
            msgs[i, 6] = 0
            msgs[i, 7] = 0
        stats[ST_SYSCALLS] += _ONE
        n = _recvmmsg(rx_fd, msgs.ctypes.data, rows, _MSG_DONTWAIT, 0)
        if n < 0:
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
        full = n == rows
        if n == 0:
            continue
        for i in range(n):
            ln = msgs[i, 7] & 0xFFFFFFFF
            if (msgs[i, 6] & 0xFFFFFFFF) & _MSG_TRUNC:
                ln = cap + 1  # larger than a row: the kernel drops it as TRUNCATED
            lens[i] = ln
            a = addrs[i]
            src_ip[i] = ((np.uint32(a[4]) << 24) | (np.uint32(a[5]) << 16)
                         | (np.uint32(a[6]) << 8) | np.uint32(a[7]))
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
    """

    def __init__(self, name: str, rows: int, offload: bool) -> None:
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


class HotLoop:
    """Drop-in for switch.datapath.Datapath: same start/stop/errors/observer, compiled loops.

    device_fd is the TUN/TAP, rx_fd the socket bound to the backend port, tx_fd the socket
    that sends (the raw IP socket for vxlan, the same UDP socket for udp), port the UDP port
    peers listen on. The fds stay owned by the caller (close them after stop()). offload=True
    when the device was opened in switch.tundev's "offload" mode (IFF_VNET_HDR, TSO): the loops
    then split and coalesce super-frames, and every write into the device carries a
    virtio_net_hdr, the slow path's answers included.
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int | None = None, poll_ms: int = POLL_MS, offload: bool = False,
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
        self.egress = _Side("egress", self.batch, offload)
        self.ingress = _Side("ingress", self.batch, offload)
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
            }
        return out

    # -- threads ----------------------------------------------------------------------------
    def _call(self, side: _Side, direction: int, ctl: np.ndarray) -> tuple[int, int, int]:
        p, b, t = self.pipeline, side.batch, self.pipeline.table
        if direction == EGRESS:
            return egress_loop(self.kind, self.fd, self.tx_fd, self.port, self.poll_ms, ctl,
                               side.stats, p.drops[EGRESS], b.bufs, b.lens, b.out_off,
                               b.out_len, b.verdict, b.reason, b.dst_ip, p.cfg, t.present,
                               t.public_ip, t.vtep_mac, p.counters, side.pollfd, side.msgs,
                               side.iovs, side.addrs, self.l3_off, side.sup)
        return ingress_loop(self.kind, self.rx_fd, self.fd, self.poll_ms, ctl, side.stats,
                            p.drops[INGRESS], b.bufs, b.lens, b.src_ip, b.out_off, b.out_len,
                            b.verdict, b.reason, b.dst_ip, p.cfg, t.present, t.public_ip,
                            t.sender_keys, p.counters, side.pollfd, side.msgs, side.iovs,
                            side.addrs, self.l3_off, side.out, side.out_lens)

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
