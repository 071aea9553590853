"""TUN/TAP with the virtio-net header and TSO, with a plain fallback; batched device reads.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4) the kernel hands a TCP flow to us as super-frames
of up to 64 KiB behind a 10-byte virtio_net_hdr, one read per ~45 packets instead of one each
(DATAPATH-NOTES.md: the way past ~0.3 Mpps is fewer system calls). A kernel or device that
refuses either step gets the plain device (no header, MTU-sized frames) and the reason, so the
daemon always comes up.

The device is persistent like backends/tuntap.py's, so a restarted daemon keeps its MAC and
routes. Linux re-reads IFF_VNET_HDR on every TUNSETIFF of an existing device, so a device made
in one mode reattaches in the other; but the offloads set by TUNSETOFFLOAD stay on the device
after its owner exits. A plain reopen therefore clears them (TUNSETOFFLOAD 0), or the kernel would
keep sending 64 KiB GSO frames to a reader that has no header to learn their segment size from.
Only a device of the wrong type (TUN where a TAP is wanted, or a multiqueue one) refuses the
reattach; that one is deleted and made again.

read_batch drains a non-blocking fd with a numba loop around libc read() (no GIL, no Python
object per packet); read_batch_py is its readable twin.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import fcntl
import logging
import os

import numpy as np
import pytun
from numba import njit

log = logging.getLogger(__name__)

TUNSETOFFLOAD = 0x400454D0
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4
VNET_HDR_LEN = 10  # struct virtio_net_hdr, the size TUNSETVNETHDRSZ defaults to
# virtio_net_hdr fields: u8 flags, u8 gso_type, u16 hdr_len, gso_size, csum_start, csum_offset
VNET_HDR = np.dtype([("flags", "u1"), ("gso_type", "u1"), ("hdr_len", "<u2"),
                     ("gso_size", "<u2"), ("csum_start", "<u2"), ("csum_offset", "<u2")])
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2

OFFLOAD = "offload"
PLAIN = "plain"


class Mode(str):
    """"offload" or "plain", compared as a string; `.reason` says why plain was chosen."""

    reason: str

    def __new__(cls, value: str, reason: str = "") -> Mode:
        mode = super().__new__(cls, value)
        mode.reason = reason
        return mode


def _tun_kind(name: str) -> str | None:
    """The rtnetlink kind of an existing link ("tun" for TUN and TAP), None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        link = ipr.get_links(idx[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else ""


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def _attach(name: str, flags: int) -> pytun.TunTapDevice:
    """TUNSETIFF, replacing a leftover TUN/TAP of the wrong type (never another kind of link)."""
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        if _tun_kind(name) != "tun":
            raise
        log.warning("device %s exists with other TUN/TAP flags (%s); recreating it", name, exc)
        _delete_link(name)
        return pytun.TunTapDevice(name=name, flags=flags)


def open_device(name: str, tap: bool, offload: bool = True,
                offloads: int = DEFAULT_OFFLOADS) -> tuple[pytun.TunTapDevice, Mode]:
    """Open (creating if needed) persistent TUN/TAP `name`; returns (device, mode).

    mode == "offload": every read and write carries a 10-byte virtio_net_hdr and reads may be
    TSO super-frames (up to 64 KiB + header; size the buffers for it). mode == "plain": no
    header, frames of at most the MTU; mode.reason says why offload was not used.
    """
    base = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
    reason = "offload not requested"
    if offload:
        try:
            device = _attach(name, base | IFF_VNET_HDR)
        except (pytun.Error, OSError) as exc:
            reason = f"IFF_VNET_HDR refused: {exc}"
        else:
            try:
                fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, offloads)
            except OSError as exc:
                reason = f"TUNSETOFFLOAD {offloads:#x} refused: {exc.strerror}"
                device.close()
            else:
                device.persist(True)
                return device, Mode(OFFLOAD)
        log.warning("device %s: plain mode, %s", name, reason)
    device = _attach(name, base)
    try:
        # Clear offloads a previous offload-mode owner left on the persistent device.
        fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, 0)
    except OSError as exc:
        log.debug("device %s: clearing offloads failed: %s", name, exc)
    device.persist(True)
    return device, Mode(PLAIN, reason)


# -- batched reads and writes ---------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
# Pointers travel as size_t: numba passes an integer address to it without casts, and on LP64
# the calling convention is the same as for void *.
_READ = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)(
    ctypes.cast(_libc.read, ctypes.c_void_p).value)
_WRITE = ctypes.CFUNCTYPE(ctypes.c_ssize_t, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t)(
    ctypes.cast(_libc.write, ctypes.c_void_p).value)
_ERRNO = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_int))(
    ctypes.cast(_libc.__errno_location, ctypes.c_void_p).value)
_EINTR = errnos.EINTR


@njit(nogil=True, cache=True)
def _read_rows(read_fn, errno_fn, fd, base, width, lens, first, max_n, offset):
    # The libc functions come in as arguments, not globals, so the compiled code can be cached.
    n = 0
    while n < max_n:
        row = first + n
        r = read_fn(fd, base + row * width + offset, width - offset)
        if r < 0:
            e = errno_fn()[0]
            if e == _EINTR:
                continue
            return n, e
        if r == 0:
            return n, 0
        lens[row] = r
        n += 1
    return n, 0


@njit(nogil=True, cache=True)
def _write_rows(write_fn, errno_fn, fd, base, width, rows, out_off, out_len):
    done = 0
    last = 0
    for k in range(rows.shape[0]):
        i = rows[k]
        while True:
            r = write_fn(fd, base + i * width + out_off[i], out_len[i])
            if r >= 0:
                done += 1
                break
            e = errno_fn()[0]
            if e != _EINTR:
                last = e
                break
    return done, last


def _check(bufs: np.ndarray, first_row: int, max_n: int, offset: int) -> int:
    if bufs.dtype != np.uint8 or bufs.ndim != 2 or not bufs.flags.c_contiguous:
        raise ValueError("bufs must be a C-contiguous uint8[B, W] array")
    if not 0 <= offset < bufs.shape[1]:
        raise ValueError("offset outside the row")
    return max(0, min(max_n, bufs.shape[0] - first_row))


def read_batch(fd: int, bufs: np.ndarray, lens: np.ndarray, first_row: int, max_n: int,
               offset: int) -> int:
    """Read up to max_n packets from non-blocking `fd` into rows first_row.. at column offset.

    Stops at EAGAIN. lens[row] is what read() returned; TUN/TAP returns a packet's full length
    even when it was cut to fit the row, so lens > W - offset means truncated (the fast path
    drops those as TRUNCATED). Raises OSError only when the very first read fails with
    something other than EAGAIN (a broken device, not a packet); after some packets the error
    is left for the next call to meet.
    """
    max_n = _check(bufs, first_row, max_n, offset)
    n, err = _read_rows(_READ, _ERRNO, fd, bufs.ctypes.data, bufs.shape[1], lens, first_row,
                        max_n, offset)
    if n == 0 and err not in (0, errnos.EAGAIN):
        raise OSError(err, os.strerror(err))
    return n


def read_batch_py(fd: int, bufs: np.ndarray, lens: np.ndarray, first_row: int, max_n: int,
                  offset: int) -> int:
    """Readable twin of read_batch with os.readv (one Python call and view per packet)."""
    max_n = _check(bufs, first_row, max_n, offset)
    n = 0
    while n < max_n:
        row = first_row + n
        try:
            size = os.readv(fd, [bufs[row, offset:]])
        except BlockingIOError:
            break
        except OSError:
            if n:
                break
            raise
        if size == 0:
            break
        lens[row] = size
        n += 1
    return n


def write(fd: int, mv) -> int:
    """Write one packet (any buffer); returns bytes written or -errno, never raises."""
    try:
        return os.write(fd, mv)
    except OSError as exc:
        return -(exc.errno or errnos.EIO)


def write_batch(fd: int, bufs: np.ndarray, rows: np.ndarray, out_off: np.ndarray,
                out_len: np.ndarray) -> tuple[int, int]:
    """Write bufs[i, out_off[i]:+out_len[i]] for i in rows, one write() each without the GIL.

    Returns (written, last errno). A failed write is skipped; a TUN/TAP write is one packet, so
    there is nothing partial to continue.
    """
    _check(bufs, 0, 0, 0)
    return _write_rows(_WRITE, _ERRNO, fd, bufs.ctypes.data, bufs.shape[1],
                       np.ascontiguousarray(rows, dtype=np.int64), out_off, out_len)
