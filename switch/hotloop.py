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
from .pipeline import EGRESS, INGRESS, Pipeline
from .reasons import Verdict

log = logging.getLogger(__name__)

BATCH = 64
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
ST_SIZE = 16
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
# loops compile the fastpath kernels into themselves: after an edit of fastpath.py (or of the
# table/reason constants it freezes) the old kernels would keep running. This locator, consulted
# only for functions defined in this file, stamps the cache with all of those files.

_DEPENDS = [os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
            for name in ("hotloop.py", "fastpath.py", "table.py", "reasons.py")]


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
def egress_loop(kind, dev_fd, tx_fd, port, timeout_ms, ctl, stats, drops,
                bufs, lens, out_off, out_len, verdict, reason, dst_ip,
                cfg, present, public_ip, vtep_mac, counters,
                pollfd, msgs, iovs, addrs):
    """Read batches from the device, encapsulate, sendmmsg; returns (code, rows, errno)."""
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
    full = False  # the last batch filled every row: more is likely queued, skip poll()
    rev = 0
    while True:
        if ctl[CTL_STOP]:
            return RET_STOP, 0, 0
        rev = 0
        if not full:
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
            stats[ST_SYSCALLS] += _ONE
            got = _read(dev_fd, base + n * stride + HEADROOM, cap)
            if got <= 0:
                e = _errno() if got < 0 else errno.ENODEV  # EOF: a TUN never reads 0 bytes
                if e == _EINTR:
                    continue
                if e != _EAGAIN:
                    err = e
                break
            lens[n] = got
            n += 1
        full = n == rows
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
def ingress_loop(kind, rx_fd, dev_fd, timeout_ms, ctl, stats, drops,
                 bufs, lens, src_ip, out_off, out_len, verdict, reason, dst_ip,
                 cfg, present, public_ip, sender_keys, counters,
                 pollfd, msgs, iovs, addrs):
    """recvmmsg batches, check/decapsulate, write() each FORWARD row; returns (code, rows, errno).

    Ingress kernels never say SLOW (nothing from a peer is answered), so only stop, observer
    and errors come back to Python.
    """
    rows = bufs.shape[0]
    stride = bufs.strides[0]
    cap = bufs.shape[1] - HEADROOM
    base = bufs.ctypes.data
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
        for i in range(n):
            if verdict[i] != _FORWARD:
                continue
            while True:
                stats[ST_SYSCALLS] += _ONE
                w = _write(dev_fd, base + i * stride + out_off[i], out_len[i])
                if w >= 0:
                    stats[ST_SENT] += _ONE
                    break
                e = _errno()
                if e == _EINTR:
                    continue
                if _hard(e):
                    return RET_ERROR, n, e
                _count_error(stats, e)
                break
        if ctl[CTL_EACH_BATCH]:
            stats[ST_RETURNS] += _ONE
            return RET_BATCH, n, 0


# ---- the Python side ----------------------------------------------------------------------------


class _Side:
    """One direction's Batch, control/stat arrays and system-call scratch (owned by its thread)."""

    def __init__(self, name: str, rows: int) -> None:
        self.name = name
        self.batch = Batch(rows)
        self.ctl = np.zeros(CTL_SIZE, dtype=np.uint8)
        self.stats = np.zeros(ST_SIZE, dtype=np.uint64)
        self.pollfd = np.zeros(2, dtype=np.int32)  # struct pollfd {int fd; short ev, rev}
        self.msgs = np.zeros((rows, _MMSG), dtype=np.int64)  # struct mmsghdr
        self.iovs = np.zeros((rows, 2), dtype=np.int64)  # struct iovec
        self.addrs = np.zeros((rows, 16), dtype=np.uint8)  # struct sockaddr_in


class HotLoop:
    """Drop-in for switch.datapath.Datapath: same start/stop/errors/observer, compiled loops.

    device_fd is the TUN/TAP, rx_fd the socket bound to the backend port, tx_fd the socket
    that sends (the raw IP socket for vxlan, the same UDP socket for udp), port the UDP port
    peers listen on. The fds stay owned by the caller (close them after stop()).
    """

    def __init__(self, pipeline: Pipeline, device_fd: int, rx_fd: int, tx_fd: int, port: int,
                 *, batch: int = BATCH, poll_ms: int = POLL_MS,
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
        self.egress = _Side("egress", batch)
        self.ingress = _Side("ingress", batch)
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
    # come back after every batch; None lets them run free again.
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

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-direction loop figures for status: wake-ups, batches, packets, system calls."""
        out = {}
        for side in (self.egress, self.ingress):
            s = side.stats
            out[side.name] = {
                "wakeups": int(s[ST_WAKEUPS]), "batches": int(s[ST_BATCHES]),
                "packets": int(s[ST_PACKETS]), "syscalls": int(s[ST_SYSCALLS]),
                "sent": int(s[ST_SENT]), "returns": int(s[ST_RETURNS]),
                "last_errno": int(s[ST_LAST_ERRNO]),
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
                               side.iovs, side.addrs)
        return ingress_loop(self.kind, self.rx_fd, self.fd, self.poll_ms, ctl, side.stats,
                            p.drops[INGRESS], b.bufs, b.lens, b.src_ip, b.out_off, b.out_len,
                            b.verdict, b.reason, b.dst_ip, p.cfg, t.present, t.public_ip,
                            t.sender_keys, p.counters, side.pollfd, side.msgs, side.iovs,
                            side.addrs)

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
        for i in np.flatnonzero(batch.verdict[:n] == _SLOW):
            packet = batch.bufs[i, HEADROOM:HEADROOM + batch.lens[i]].tobytes()
            for answer in self.pipeline.slow(packet, int(batch.reason[i])).writes:
                try:
                    os.write(self.fd, answer)
                except OSError as exc:
                    self.slow_write_errors += 1
                    log.debug("device write failed: %s", exc)
