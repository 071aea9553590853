"""A UDP packet flood from Python at 100k+ packets per second: the rogue sender of the tests.

One sendto() per packet costs a system call and Python's per-call overhead each time, which tops
out well below 100k pps on a small machine that is also running the switch. sendmmsg(2) sends a
whole batch per call; every message of the batch points at the same payload, so building a batch
costs nothing per packet. The socket is connected, so messages carry no address either.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from typing import Any

BATCH = 256


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MMsgHdr), ctypes.c_uint, ctypes.c_int]
_libc.sendmmsg.restype = ctypes.c_int


def udp_flood(dst: str, port: int, payload: bytes, seconds: float,
              rate: float | None = None, nice: int = 0) -> dict[str, Any]:
    """Send `payload` to dst:port as fast as possible (or at `rate` pps) for `seconds`.

    Returns {"sent": datagrams the kernel accepted, "seconds": elapsed, "pps": achieved}.
    Run it inside a namespace with netns.call_in / spawn_in, in a child of its own: `nice`
    (negative: more CPU, as root) changes the calling process's priority for good. An attacker
    does not share the CPU fairly, and on a small machine a fair share may not reach the rate.
    """
    if nice:
        os.nice(nice)
    buf = ctypes.create_string_buffer(payload, len(payload))
    iov = _IoVec(ctypes.cast(buf, ctypes.c_void_p), len(payload))
    msgs = (_MMsgHdr * BATCH)()
    for m in msgs:
        m.msg_hdr.msg_iov = ctypes.pointer(iov)
        m.msg_hdr.msg_iovlen = 1
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((dst, port))
        fd = sock.fileno()
        start = time.perf_counter()
        end = start + seconds
        while (now := time.perf_counter()) < end:
            if rate is not None and sent > (now - start) * rate:
                time.sleep(BATCH / rate / 4)  # ahead of schedule: let the clock catch up
                continue
            n = _libc.sendmmsg(fd, msgs, BATCH, 0)
            if n > 0:
                sent += n
                continue
            err = ctypes.get_errno()
            if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ECONNREFUSED):
                raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
        elapsed = time.perf_counter() - start
    return {"sent": sent, "seconds": elapsed, "pps": sent / elapsed if elapsed else 0.0}
