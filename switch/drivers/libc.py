"""libc for the compiled loops: poll, read, write, sendmmsg, recvmmsg and errno in numba.

The symbols are reached through @intrinsic declarations, not ctypes globals, so the loops can
use cache=True and a restarted daemon loads their machine code from __pycache__ instead of
compiling for a minute. Every pointer travels as an int64 address (array.ctypes.data + offset)
and is cast in the IR, so one codegen helper covers all six functions. The symbols are
registered with LLVM's resolver explicitly: the JIT then links them no matter how the
interpreter loaded libc.

Also here: the constants those calls take (poll events, MSG_* flags, errnos) and the C struct
layouts the loops fill in as plain integer arrays, each field by a name below: struct pollfd,
struct mmsghdr (a row of MMSG int64 slots), struct iovec (a row of IOVEC int64 slots),
struct sockaddr_in (16 bytes: put_sockaddr / sockaddr_ip) and struct cmsghdr (bytes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.drivers.driver import CompiledLoopUnavailable

POLLIN = 0x1
POLLOUT = 0x4
POLLERR = 0x8
POLLHUP = 0x10
POLLNVAL = 0x20
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
AF_INET = 2
EAGAIN = errno.EAGAIN
EINTR = errno.EINTR
EBADF = errno.EBADF
EIO = errno.EIO

# struct pollfd {int fd; short events; short revents} as two int32: [PFD_FD] and
# [PFD_EVENTS] = events | revents << 16 (little-endian), so writing events clears revents.
PFD_FD = 0
PFD_EVENTS = 1
POLLFD = 2

# struct mmsghdr on x86-64 and arm64 is 64 bytes, every field in its own 8-byte slot (the
# 4-byte ones padded): a row of MMSG int64 slots, MMSGHDR_SIZE bytes apart.
MH_NAME = 0  # void *msg_name: the row's struct sockaddr_in
MH_NAMELEN = 1  # socklen_t msg_namelen (value-result on receive)
MH_IOV = 2  # struct iovec *msg_iov
MH_IOVLEN = 3  # size_t msg_iovlen: with UDP GSO, the datagrams the message carries
MH_CONTROL = 4  # void *msg_control
MH_CONTROLLEN = 5  # size_t msg_controllen (value-result on receive)
MH_FLAGS = 6  # int msg_flags (low 32 bits; MSG_TRUNC on receive)
MH_LEN = 7  # unsigned msg_len (low 32 bits): bytes sent or received
MMSG = 8
MMSGHDR_SIZE = 8 * MMSG

# struct iovec {void *iov_base; size_t iov_len}
IOV_BASE = 0
IOV_LEN = 1
IOVEC = 2
IOVEC_SIZE = 8 * IOVEC

SOCKADDR_IN_SIZE = 16  # struct sockaddr_in

# struct cmsghdr {size_t cmsg_len; int cmsg_level; int cmsg_type}, data at CMSG_DATA_AT.
CMSG_LEN_AT = 0
CMSG_LEVEL_AT = 8
CMSG_TYPE_AT = 12
CMSG_DATA_AT = 16  # CMSG_LEN(n) = CMSG_DATA_AT + n; CMSG_SPACE(n) rounds n up to 8 bytes


def cmsg_space(data_len: int) -> int:
    """CMSG_SPACE: room one cmsg with data_len bytes of data takes in the control buffer."""
    return CMSG_DATA_AT + ((data_len + 7) & ~7)


# A libc without one of these calls cannot run the compiled loops: the import fails with
# CompiledLoopUnavailable, which (alone) moves the driver ladder down to the Python loop.
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for _name in ("poll", "read", "write", "sendmmsg", "recvmmsg", "__errno_location"):
        llvm_binding.add_symbol(_name, ctypes.cast(getattr(_libc, _name), ctypes.c_void_p).value)
except (OSError, AttributeError) as _exc:  # no libc found / a call missing from it
    raise CompiledLoopUnavailable(f"libc for the compiled loops: {_exc}") from _exc

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
def poll(typingctx, fds, nfds, timeout):
    return _sig(3), _libc_codegen("poll", "i", "pli")


@intrinsic
def read(typingctx, fd, buf, count):
    return _sig(3), _libc_codegen("read", "l", "ipl")


@intrinsic
def write(typingctx, fd, buf, count):
    return _sig(3), _libc_codegen("write", "l", "ipl")


@intrinsic
def sendmmsg(typingctx, fd, msgs, vlen, flags):
    return _sig(4), _libc_codegen("sendmmsg", "i", "ipii")


@intrinsic
def recvmmsg(typingctx, fd, msgs, vlen, flags, timeout):
    return _sig(5), _libc_codegen("recvmmsg", "i", "ipiip")


@intrinsic
def get_errno(typingctx):
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32.as_pointer(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "__errno_location")
        return builder.sext(builder.load(builder.call(fn, [])), _I64)

    return types.int64(), codegen


# ---- struct sockaddr_in -------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def put_sockaddr(a, ip, port):
    """struct sockaddr_in for (ip, port) into the 16 bytes of a (network byte order fields)."""
    a[0] = AF_INET  # sin_family, little-endian u16
    a[1] = 0
    a[2] = (port >> 8) & 0xFF  # sin_port
    a[3] = port & 0xFF
    a[4] = (ip >> 24) & 0xFF  # sin_addr
    a[5] = (ip >> 16) & 0xFF
    a[6] = (ip >> 8) & 0xFF
    a[7] = ip & 0xFF


@njit(cache=True, nogil=True)
def sockaddr_ip(a):
    """The IPv4 address (host order) of a struct sockaddr_in."""
    return ((np.uint32(a[4]) << 24) | (np.uint32(a[5]) << 16) | (np.uint32(a[6]) << 8)
            | np.uint32(a[7]))
