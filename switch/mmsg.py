"""Batched socket IO over a Batch: one recvmmsg / sendmmsg per batch, UDP GSO and GRO.

The per-packet system call is what limits a userspace switch (DATAPATH-NOTES.md: ~200k
packets/s with one sendto each), so this module moves a whole batch per call. MmsgIO builds the
C arrays the kernel reads (struct mmsghdr, struct iovec, struct sockaddr_in) once, as numpy
structured arrays whose iovecs point straight into the Batch rows; each call then only rewrites
a few columns with vectorised numpy and makes one ctypes call, so no Python object is created per
packet. Errors come back as counts and an errno, never as an exception per packet.

send_gso / recv_gro move up to 64 datagrams of one flow per call with UDP_SEGMENT / UDP_GRO;
they return -errno instead of raising for the same reason.

Layouts are x86-64 / aarch64 Linux (LP64); the asserts below fail loudly anywhere else.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import socket
import struct

import numpy as np

from .fastpath import HEADROOM, Batch

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
# UDP_MAX_SEGMENTS: a UDP_SEGMENT send of more segments fails with EINVAL. It was 64 for years;
# newer kernels (6.18 here) take 128. 64 is the portable figure to batch by.
MAX_GSO_SEGMENTS = 64

_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_sendmsg = _libc.sendmsg
_sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_sendmsg.restype = ctypes.c_ssize_t
_recvmsg = _libc.recvmsg
_recvmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_recvmsg.restype = ctypes.c_ssize_t
_setsockopt = _libc.setsockopt
_setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
_setsockopt.restype = ctypes.c_int

# struct mmsghdr = struct msghdr (56 bytes) + unsigned msg_len, padded to 64.
MMSGHDR = np.dtype([
    ("name", "<u8"), ("namelen", "<u4"), ("_pad0", "<u4"),
    ("iov", "<u8"), ("iovlen", "<u8"),
    ("control", "<u8"), ("controllen", "<u8"),
    ("flags", "<i4"), ("_pad1", "<u4"),
    ("msg_len", "<u4"), ("_pad2", "<u4"),
])
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
# Port and address are big-endian fields, so numpy does the byte swap to host order for us.
SOCKADDR_IN = np.dtype([("family", "<u2"), ("port", ">u2"), ("addr", ">u4"), ("zero", "<u8")])
assert MMSGHDR.itemsize == 64 and IOVEC.itemsize == 16 and SOCKADDR_IN.itemsize == 16
assert ctypes.sizeof(ctypes.c_void_p) == 8, "struct layouts here assume LP64"


def _addr(arr: np.ndarray) -> int:
    return arr.ctypes.data


class MmsgIO:
    """recvmmsg into, and sendmmsg out of, one Batch; keep one per Batch (and per thread).

    recv() and send() use separate header arrays, so one instance may receive into a batch and
    then send replies out of the same batch. After every call `errno` holds the last error (0 if
    none) and `failed` how many packets of that call were not moved.
    """

    def __init__(self, batch: Batch) -> None:
        bufs = batch.bufs
        if not bufs.flags.c_contiguous:
            raise ValueError("batch.bufs must be C-contiguous: iovecs point into its rows")
        self.batch = batch
        size, width = bufs.shape
        self._base = _addr(bufs)
        self._width = width
        self._row_addr = self._base + np.arange(size, dtype=np.uint64) * np.uint64(width)
        self.errno = 0
        self.failed = 0
        self.truncated = 0  # datagrams longer than a row, cumulative

        # Receive side: fixed iovecs at HEADROOM of each row, a sockaddr per row for src_ip.
        self._rx_sa = np.zeros(size, SOCKADDR_IN)
        self._rx_iov = np.zeros(size, IOVEC)
        self._rx_iov["base"] = self._row_addr + np.uint64(HEADROOM)
        self._rx_iov["len"] = width - HEADROOM
        self._rx = np.zeros(size, MMSGHDR)
        self._rx["name"] = _addr(self._rx_sa) + np.arange(size, dtype=np.uint64) * 16
        self._rx["iov"] = _addr(self._rx_iov) + np.arange(size, dtype=np.uint64) * 16
        self._rx["iovlen"] = 1
        self._rx_ptr = _addr(self._rx)

        # Send side: slot k carries the k-th listed row, so iov base and address change per call.
        self._tx_sa = np.zeros(size, SOCKADDR_IN)
        self._tx_sa["family"] = socket.AF_INET
        self._tx_iov = np.zeros(size, IOVEC)
        self._tx = np.zeros(size, MMSGHDR)
        self._tx["name"] = _addr(self._tx_sa) + np.arange(size, dtype=np.uint64) * 16
        self._tx["namelen"] = 16
        self._tx["iov"] = _addr(self._tx_iov) + np.arange(size, dtype=np.uint64) * 16
        self._tx["iovlen"] = 1
        self._tx_ptr = _addr(self._tx)

    def recv(self, fd: int, max_n: int, first: int = 0) -> int:
        """One non-blocking recvmmsg into rows first.. (at HEADROOM); returns the count.

        Fills lens and src_ip (host order) of those rows. MSG_TRUNC makes the kernel report a
        datagram's real length, so one longer than a row gets lens > batch.capacity and the
        fast path drops it as TRUNCATED instead of forwarding a cut packet. 0 means nothing was
        waiting (errno EAGAIN) or an error (errno set).
        """
        max_n = min(max_n, self.batch.size - first)
        if max_n <= 0:
            return 0
        hdr = self._rx[first:first + max_n]
        hdr["namelen"] = 16  # value-result: the kernel overwrites it
        n = _recvmmsg(fd, self._rx_ptr + 64 * first, max_n, MSG_DONTWAIT | MSG_TRUNC, None)
        if n < 0:
            self.errno = ctypes.get_errno()
            self.failed = 0
            return 0
        self.errno = 0
        self.failed = 0
        end = first + n
        got = self._rx["msg_len"][first:end]
        self.batch.lens[first:end] = got
        self.batch.src_ip[first:end] = self._rx_sa["addr"][first:end]
        self.truncated += int(np.count_nonzero(got > self._width - HEADROOM))
        return n

    def send(self, fd: int, rows: np.ndarray, port: int, flags: int = 0) -> int:
        """sendmmsg bufs[i, out_off[i]:+out_len[i]] to (dst_ip[i], port) for i in rows.

        Returns how many were sent. A short sendmmsg is continued; a packet the kernel refuses
        (EMSGSIZE, EHOSTUNREACH, ...) is skipped and counted in `failed`; EAGAIN / ENOBUFS stop
        the call and count the rest as failed (the socket is full; dropping is what a switch
        does). For a raw IP socket the port is ignored; 0 is fine.
        """
        m = len(rows)
        if m == 0:
            self.errno = self.failed = 0
            return 0
        if m > self.batch.size:
            raise ValueError("more rows than the batch holds")
        b = self.batch
        off = b.out_off[rows].astype(np.uint64)
        self._tx_iov["base"][:m] = self._row_addr[rows] + off
        self._tx_iov["len"][:m] = b.out_len[rows]
        self._tx_sa["addr"][:m] = b.dst_ip[rows]
        self._tx_sa["port"][:m] = port
        sent = 0
        failed = 0
        err = 0
        k = 0
        while k < m:
            r = _sendmmsg(fd, self._tx_ptr + 64 * k, m - k, flags)
            if r > 0:
                sent += r
                k += r
                continue
            e = ctypes.get_errno() if r < 0 else errnos.EIO
            if e == errnos.EINTR:
                continue
            err = e
            if e in (errnos.EAGAIN, errnos.ENOBUFS):
                failed += m - k
                break
            failed += 1  # this one packet is bad; the ones after it may be fine
            k += 1
        self.errno = err
        self.failed = failed
        return sent


# -- UDP GSO / GRO --------------------------------------------------------------------------

class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("port", ctypes.c_uint16),
                ("addr", ctypes.c_uint32), ("zero", ctypes.c_uint64)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


_CMSG_HDR = 16  # struct cmsghdr: size_t len; int level; int type
_GSO_CMSG = 24  # CMSG_SPACE(sizeof(uint16_t)): header + data padded to 8
_GRO_CONTROL = 64  # room for the UDP_GRO cmsg (an int) and anything else the kernel adds


def _buffer_address(buf) -> int:
    """Address of a writable contiguous buffer (numpy array, bytearray, ctypes array)."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise ValueError("buffer must be contiguous")
        return buf.ctypes.data
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def send_gso(fd: int, buf, nbytes: int, segment_size: int, dst_ip: int, port: int) -> int:
    """Send buf[:nbytes] as datagrams of segment_size bytes (the last may be shorter).

    One sendmsg with a UDP_SEGMENT cmsg: the kernel (or the NIC) cuts the buffer, so 64
    datagrams cost one system call. dst_ip is host order. Returns bytes sent or -errno:
    -EINVAL for too many segments (see MAX_GSO_SEGMENTS) or a segment over the path MTU,
    -EIO when the route's device cannot checksum (the caller then falls back to MmsgIO.send).
    """
    iov = _IOVec(_buffer_address(buf), nbytes)
    sa = _SockaddrIn(socket.AF_INET, socket.htons(port), socket.htonl(dst_ip), 0)
    control = ctypes.create_string_buffer(_GSO_CMSG)
    struct.pack_into("=QiiH", control, 0, _CMSG_HDR + 2, SOL_UDP, UDP_SEGMENT, segment_size)
    msg = _MsgHdr(ctypes.addressof(sa), 16, ctypes.addressof(iov), 1,
                  ctypes.addressof(control), _GSO_CMSG, 0)
    r = _sendmsg(fd, ctypes.byref(msg), 0)
    return r if r >= 0 else -ctypes.get_errno()


def enable_udp_gro(fd: int) -> bool:
    """Turn UDP_GRO on for a UDP socket; False if the kernel refuses."""
    one = ctypes.c_int(1)
    return _setsockopt(fd, SOL_UDP, UDP_GRO, ctypes.byref(one), 4) == 0


def recv_gro(fd: int, buf) -> tuple[int, int, int]:
    """One non-blocking recvmsg on a UDP_GRO socket: (nbytes, segment_size, src_ip).

    With GRO the kernel may hand back several datagrams of one flow back to back; segment_size
    (from the UDP_GRO cmsg) is the size of each but the last. Without that cmsg the read is a
    single datagram and segment_size == nbytes. src_ip is host order. On error nbytes is
    -errno (-EAGAIN when nothing is waiting) and the rest are 0. A read that did not fit buf
    is reported as -EMSGSIZE, as the kernel drops the rest of it.
    """
    size = len(buf) if not isinstance(buf, np.ndarray) else buf.nbytes
    iov = _IOVec(_buffer_address(buf), size)
    sa = _SockaddrIn()
    control = ctypes.create_string_buffer(_GRO_CONTROL)
    msg = _MsgHdr(ctypes.addressof(sa), 16, ctypes.addressof(iov), 1,
                  ctypes.addressof(control), _GRO_CONTROL, 0)
    r = _recvmsg(fd, ctypes.byref(msg), MSG_DONTWAIT)
    if r < 0:
        return -ctypes.get_errno(), 0, 0
    if msg.flags & MSG_TRUNC:
        return -errnos.EMSGSIZE, 0, 0
    segment = r
    pos = 0
    while pos + _CMSG_HDR <= msg.controllen:
        length, level, kind = struct.unpack_from("=Qii", control, pos)
        if length < _CMSG_HDR:
            break
        if level == SOL_UDP and kind == UDP_GRO:
            segment = struct.unpack_from("=i", control, pos + _CMSG_HDR)[0]
        pos += (length + 7) & ~7
    return r, segment, socket.ntohl(sa.addr)


def probe_udp_offloads() -> dict[str, bool]:
    """Whether this kernel takes UDP_SEGMENT and UDP_GRO on a UDP socket (both from Linux 5.0).

    Only the socket options are probed; a send can still fail per route with -EIO (see
    send_gso), which is why send_gso reports instead of raising.
    """
    result = {"udp_segment": False, "udp_gro": False}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for key, opt, value in (("udp_segment", UDP_SEGMENT, 1400), ("udp_gro", UDP_GRO, 1)):
            try:
                sock.setsockopt(SOL_UDP, opt, value)
                result[key] = True
            except OSError:
                pass
    return result
