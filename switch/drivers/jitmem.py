"""Give back the compiler's code pages once the compiled loops are loaded.

Loading numba's cached kernels links them with LLVM, which touches ~50 MB of libllvmlite.so's
code. Those pages are clean (read from the file, never written) and, once the loops run, idle
for the life of the daemon: they only count against its RSS (and its cgroup's memory). MADV_PAGEOUT
(Linux 5.4) asks the kernel to reclaim them now instead of under memory pressure; nothing is
lost, since a clean file page that is needed again (a later compilation) is read back in. The
advice is given for the library's mappings only: private pages the loader wrote (relocations)
have no file copy, so the kernel keeps them resident here, where there is no swap.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

MADV_PAGEOUT = 21
LIBRARIES = ("libllvmlite.so",)


def compiler_mappings(maps_text: str) -> list[tuple[int, int]]:
    """(start, length) of every mapping of the compiler's libraries in /proc/self/maps text."""
    out = []
    for line in maps_text.splitlines():
        fields = line.split()
        if len(fields) < 6 or os.path.basename(fields[5]) not in LIBRARIES:
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        out.append((start, end - start))
    return out


def release_compiler_pages() -> int:
    """Advise the kernel to reclaim the compiler's pages; returns the bytes advised (0 when the
    library is not mapped or the kernel does not know the advice)."""
    with open("/proc/self/maps") as f:
        mappings = compiler_mappings(f.read())
    if not mappings:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    advised = 0
    for start, length in mappings:
        if libc.madvise(start, length, MADV_PAGEOUT) == 0:
            advised += length
        else:  # EINVAL before Linux 5.4: the pages stay, which is only what happens without it
            log.debug("madvise(MADV_PAGEOUT) refused: %s", os.strerror(ctypes.get_errno()))
            return advised
    log.debug("advised %d MB of compiler pages to be reclaimed", advised >> 20)
    return advised
