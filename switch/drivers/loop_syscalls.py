"""What the two compiled loops share: codes, stats slots, and the system calls they count.

A loop (compiled_loops.py) talks to its Python thread through a ctl array (Python writes, the
loop reads between system calls), a stats array (written only by the loop's thread) and the
(code, rows, errno) it returns. Kernel choice and drop counting are the pipeline's
(weft.packet.pipeline_steps), not the loops'. The helpers here poll, send and write for both
directions and count every call, and every failure by kind, into stats.
"""

from __future__ import annotations

import errno

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.drivers.libc import (
    EAGAIN,
    EBADF,
    EINTR,
    EIO,
    MH_IOVLEN,
    MMSGHDR_SIZE,
    PFD_EVENTS,
    PFD_FD,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    get_errno,
    poll,
    sendmmsg,
    write,
)
from weft.packet.offload.tso import ERR_MALFORMED, ERR_NO_ROOM

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
ST_TUNNEL_SENT = 20  # egress: super-frames written whole to the TX TAP (UDP-tunnel GSO)
ST_TUNNEL_REFUSED = 21  # egress: tunnel-GSO writes the kernel refused; tunnel GSO is then off
ST_TUNNEL_WRITTEN = 22  # ingress: of ST_TUNNEL_GSO, those written to the TAP whole (one TSO write)
ST_SIZE = 23
ERROR_SLOTS = (ST_ERR_AGAIN, ST_ERR_NOBUFS, ST_ERR_UNREACH, ST_ERR_MSGSIZE, ST_ERR_OTHER)

# Errnos after which retrying cannot help: the thread ends (the others back off and resume).
HARD_ERRNOS = frozenset({errno.EBADF, errno.EBADFD, errno.EFAULT, errno.ENOTSOCK, errno.ENODEV})

_SEND_WAIT_MS = 10  # how long egress waits for socket buffer room before dropping a datagram
ONE = np.uint64(1)  # uint64 + an int64 literal would be float64 in numba


@njit(cache=True, nogil=True)
def wait(pollfd, fd, events, timeout_ms, stats):
    """poll() one fd; returns revents (0 on timeout), or -errno."""
    pollfd[PFD_FD] = fd
    pollfd[PFD_EVENTS] = events  # also clears revents, the high half of this int32
    stats[ST_SYSCALLS] += ONE
    r = poll(pollfd.ctypes.data, 1, timeout_ms)
    if r < 0:
        return -get_errno()
    if r == 0:
        return 0
    return (np.int64(pollfd[PFD_EVENTS]) >> 16) & 0xFFFF


@njit(cache=True, nogil=True)
def wait_readable(pollfd, fd, timeout_ms, stats):
    """wait() for input on fd: revents (> 0, a wake-up counted), 0 when the loop should just
    go round again (timeout, EINTR), or -errno that ends the loop's call (EBADF for POLLNVAL)."""
    rev = wait(pollfd, fd, POLLIN, timeout_ms, stats)
    if rev < 0:
        return 0 if -rev == EINTR else rev
    if rev == 0:
        return 0
    if rev & POLLNVAL:
        return -EBADF
    stats[ST_WAKEUPS] += ONE
    return rev


@njit(cache=True, nogil=True)
def count_error(stats, e):
    if e == EAGAIN:
        stats[ST_ERR_AGAIN] += ONE
    elif e == errno.ENOBUFS:
        stats[ST_ERR_NOBUFS] += ONE
    elif (e == errno.ENETUNREACH or e == errno.EHOSTUNREACH or e == errno.ECONNREFUSED
          or e == errno.EPERM):
        stats[ST_ERR_UNREACH] += ONE
    elif e == errno.EMSGSIZE:
        stats[ST_ERR_MSGSIZE] += ONE
    else:
        stats[ST_ERR_OTHER] += ONE
    stats[ST_LAST_ERRNO] = np.uint64(e)


@njit(cache=True, nogil=True)
def is_hard(e):
    return e == EBADF or e == errno.EBADFD or e == errno.EFAULT or e == errno.ENOTSOCK


@njit(cache=True, nogil=True)
def send_all(fd, msgs, k, m, pollfd, stats):
    """sendmmsg msgs[k:m], retrying after partial sends; returns 0 or a hard errno.

    A failing message is counted and skipped (the kernel reports its errno only when it is the
    first of a call). A full non-blocking socket (the udp backend shares its socket with ingress)
    gets one wait for room, so a burst is paced instead of dropped. ST_SENT counts datagrams:
    a GSO message carries one per iovec (msg_iovlen).
    """
    waited = False
    base = msgs.ctypes.data
    while k < m:
        stats[ST_SYSCALLS] += ONE
        r = sendmmsg(fd, base + k * MMSGHDR_SIZE, m - k, 0)
        if r > 0:
            for q in range(k, k + r):
                stats[ST_SENT] += np.uint64(msgs[q, MH_IOVLEN])
            stats[ST_MESSAGES] += np.uint64(r)
            k += r
            waited = False
            continue
        e = get_errno()
        if e == EINTR:
            continue
        if is_hard(e):
            return e
        if e == EAGAIN and not waited:
            waited = True
            wait(pollfd, fd, POLLOUT, _SEND_WAIT_MS, stats)
            continue
        if msgs[k, MH_IOVLEN] > 1 and (e == EIO or e == errno.EINVAL):
            # The route's device or this kernel will not segment for us: the loop stops
            # building GSO messages (this one's segments are lost; TCP sends them again).
            stats[ST_GSO_REFUSED] += ONE
        count_error(stats, e)
        k += 1
        waited = False
    return 0


@njit(cache=True, nogil=True)
def send_by_socket(msgs, msg_fd, m, pollfd, stats):
    """send_all for each run of messages that leave by the same socket; 0 or a hard errno."""
    q = 0
    while q < m:
        end = q + 1
        while end < m and msg_fd[end] == msg_fd[q]:
            end += 1
        e = send_all(msg_fd[q], msgs, q, end, pollfd, stats)
        if e != 0:
            return e
        q = end
    return 0


@njit(cache=True, nogil=True)
def write_one(dev_fd, addr, length, stats):
    """write() one frame into the device; returns 1 if written, 0 if counted as failed, or
    -errno for an errno that ends the loop."""
    while True:
        stats[ST_SYSCALLS] += ONE
        w = write(dev_fd, addr, length)
        if w >= 0:
            stats[ST_DEVICE_IO] += ONE
            return 1
        e = get_errno()
        if e == EINTR:
            continue
        if is_hard(e):
            return -e
        count_error(stats, e)
        return 0


@njit(cache=True, nogil=True)
def count_split(stats, code):
    if code == ERR_MALFORMED:
        stats[ST_SPLIT_MALFORMED] += ONE
    elif code == ERR_NO_ROOM:
        stats[ST_SPLIT_NO_ROOM] += ONE
    else:
        stats[ST_SPLIT_UNSUPPORTED] += ONE
