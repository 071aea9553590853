"""Handing LLVM's code pages back once the kernels are linked (weft.drivers.jitmem)."""

from __future__ import annotations

import json
import subprocess
import sys

from weft.drivers.jitmem import compiler_mappings

MAPS = """\
7f0000000000-7f0000100000 r--p 00000000 08:01 123 /venv/llvmlite/binding/libllvmlite.so
7f0000100000-7f0003100000 r-xp 00100000 08:01 123 /venv/llvmlite/binding/libllvmlite.so
7f0004000000-7f0004001000 rw-p 00000000 00:00 0
7f0005000000-7f0005100000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0006000000-7f0006001000 rw-p 00000000 08:01 78 /tmp/libllvmlite.so.bak
"""


def test_only_the_compiler_library_is_selected():
    assert compiler_mappings(MAPS) == [(0x7F0000000000, 0x100000), (0x7F0000100000, 0x3000000)]


_CHILD = """
import json
from ipaddress import IPv4Network
from weft.drivers.jitmem import release_compiler_pages
from weft.packet.batch import Batch
from weft.packet.pipeline import Pipeline

def llvm_kib():
    # (private, shared) resident KiB of libllvmlite.so in this process
    private = shared = 0
    in_lib = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            in_lib = len(fields) > 5 and fields[5].endswith("libllvmlite.so")
        elif in_lib and fields[0] in ("Private_Clean:", "Private_Dirty:"):
            private += int(fields[1])
        elif in_lib and fields[0] in ("Shared_Clean:", "Shared_Dirty:"):
            shared += int(fields[1])
    return private, shared

pipeline = Pipeline("vxlan", IPv4Network("10.1.0.0/16"), 24)
pipeline.egress(Batch(8), 0)  # loads (or compiles) a kernel: LLVM runs
before = llvm_kib()
advised = release_compiler_pages()
print(json.dumps({"before": before, "after": llvm_kib(), "advised": advised}))
"""


def test_release_hands_back_the_linked_compilers_pages():
    """In a fresh interpreter, after loading a kernel: every page of LLVM that this process
    alone maps goes back. (Pages that another process maps too, such as this pytest process
    once it has run a kernel, stay: the kernel does not take a page from under another
    process. The daemon runs alone, so there all of them go.)"""
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         timeout=300, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    (private, shared), (private_after, _) = figures["before"], figures["after"]
    assert figures["advised"] > 0
    assert private + shared > 20_000, figures  # KiB: linking touches tens of MB of LLVM
    assert private_after < 2_000, figures  # a few written pages (relocations) stay
