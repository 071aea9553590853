"""The Batch: a batch's packet rows and their per-packet results, allocated once and reused.

Every packet sits in one row of `bufs` starting at HEADROOM, so a kernel writes outer headers
into the headroom without copying the packet (weft.packet.fastpath). The drivers read into the
rows in place; tests, replay and the slow path copy packets in with Batch.load.
"""

from __future__ import annotations

import numpy as np

from weft.packet.headers import VXLAN_ENCAP

HEADROOM = 64  # bytes before every packet, room for the outer headers (VXLAN_ENCAP)
BUFSIZE = 2048  # default row size of a batch buffer (HEADROOM + the largest packet)

assert HEADROOM >= VXLAN_ENCAP


class Batch:
    """Preallocated buffers and per-packet outputs for one batch; reuse it for every call."""

    def __init__(self, size: int = 64, bufsize: int = BUFSIZE) -> None:
        if bufsize <= HEADROOM:
            raise ValueError(f"bufsize must exceed the {HEADROOM}-byte headroom")
        self.bufs = np.zeros((size, bufsize), dtype=np.uint8)
        self.lens = np.zeros(size, dtype=np.int32)
        self.src_ip = np.zeros(size, dtype=np.uint32)  # ingress: outer sender, host order
        self.out_off = np.zeros(size, dtype=np.int32)
        self.out_len = np.zeros(size, dtype=np.int32)
        self.verdict = np.zeros(size, dtype=np.uint8)
        self.reason = np.zeros(size, dtype=np.uint8)
        self.dst_ip = np.zeros(size, dtype=np.uint32)  # egress FORWARD: peer PublicIP
        # The IPv6 half's (weft.packet.fastpath6): the same, as 16 bytes a row
        self.src_ip6 = np.zeros((size, 16), dtype=np.uint8)
        self.dst_ip6 = np.zeros((size, 16), dtype=np.uint8)

    @property
    def size(self) -> int:
        return self.bufs.shape[0]

    @property
    def capacity(self) -> int:
        """Largest packet a row holds."""
        return self.bufs.shape[1] - HEADROOM

    def load(self, i: int, data: bytes, src_ip: int = 0) -> None:
        """Copy one packet into row i (tests, replay and the slow path; IO reads in place)."""
        if len(data) > self.capacity:
            raise ValueError(f"packet of {len(data)} bytes exceeds row capacity {self.capacity}")
        self.bufs[i, HEADROOM : HEADROOM + len(data)] = np.frombuffer(data, dtype=np.uint8)
        self.lens[i] = len(data)
        self.src_ip[i] = src_ip

    def output(self, i: int) -> bytes:
        """The output bytes of row i after a kernel ran (input bytes unless FORWARD)."""
        off = int(self.out_off[i])
        return self.bufs[i, off : off + int(self.out_len[i])].tobytes()
