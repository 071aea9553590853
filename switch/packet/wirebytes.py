"""Big-endian field access on uint8 buffers, for the numba kernels (fastpath, offload).

int64 on purpose: the same code runs under NUMBA_DISABLE_JIT=1 on numpy scalars without
uint8 overflow surprises.
"""

import numpy as np
from numba import njit


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
