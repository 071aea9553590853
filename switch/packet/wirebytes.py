"""Field access on uint8 buffers and the RFC 1071 checksum, for the numba kernels (fastpath,
offload): big-endian for what is on the wire, little-endian (le16/wle16) for the virtio header.

int64 on purpose: the same code runs under NUMBA_DISABLE_JIT=1 on numpy scalars without
uint8 overflow surprises.
"""

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below


@njit(cache=True, nogil=True, inline="always")
def u8(b, o):
    return np.int64(b[o])


@njit(cache=True, nogil=True, inline="always")
def u16(b, o):
    return (np.int64(b[o]) << 8) | np.int64(b[o + 1])


@njit(cache=True, nogil=True, inline="always")
def u32(b, o):
    return (u16(b, o) << 16) | u16(b, o + 2)


@njit(cache=True, nogil=True, inline="always")
def w16(b, o, v):
    b[o] = (v >> 8) & 0xFF
    b[o + 1] = v & 0xFF


@njit(cache=True, nogil=True, inline="always")
def w32(b, o, v):
    w16(b, o, (v >> 16) & 0xFFFF)
    w16(b, o + 2, v & 0xFFFF)


@njit(cache=True, nogil=True, inline="always")
def le16(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@njit(cache=True, nogil=True, inline="always")
def wle16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


# ---- RFC 1071 one's-complement sums: the one numba implementation fastpath and offload share ----


@njit(cache=True, nogil=True, inline="always")
def sum16(b, o, n):
    """Unfolded one's-complement sum of b[o:o+n] as big-endian words, odd tail zero-padded.

    Speed (each about 10x on 64 KiB super-frames): the loop indexes a view from 0, so LLVM can
    see the index is never negative and drops numba's wraparound handling, which blocks
    vectorizing; high and low bytes go to separate uint32 accumulators (sum = 256*hi + lo),
    with no shifts or int64 widening inside. A block of 65536 pairs adds at most
    255 * 65536 < 2**32 to each accumulator, so neither overflows.
    """
    total = np.int64(0)
    pairs = n >> 1
    done = 0
    while done < pairs:
        m = min(pairs - done, 65536)
        v = b[o + 2 * done : o + 2 * (done + m)]
        hi = np.uint32(0)
        lo = np.uint32(0)
        for k in range(m):
            hi += np.uint32(v[2 * k])
            lo += np.uint32(v[2 * k + 1])
        total += (np.int64(hi) << 8) + np.int64(lo)
        done += m
    if n & 1:
        total += np.int64(b[o + n - 1]) << 8
    return total


@njit(cache=True, nogil=True, inline="always")
def fold16(s):
    """End-around carry until 16 bits remain; a nonzero sum never folds to 0 (it gives 0xFFFF)."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@njit(cache=True, nogil=True, inline="always")
def checksum(b, o, n):
    """The Internet checksum of b[o:o+n]: the complement of the folded sum, as written."""
    return ~fold16(sum16(b, o, n)) & 0xFFFF
