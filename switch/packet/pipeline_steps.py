"""The pipeline's compiled steps: an encapsulation's kernel and the drop tally, in one call.

Every driver runs a batch through these: Pipeline.egress/ingress call them for the Python loop,
replay and trace, and the compiled loops (weft.drivers.compiled_loops) call them from numba. So
there is one dispatch from an encapsulation (the code of its weft.packet.encap row) to its
kernel, and DROP reasons are counted in one place, once.

The arrays travel in named groups (NamedTuples, which numba types by class and field): a batch,
the peer table, and the pipeline's state. The steps hand them on to the kernels (fastpath) as
they are, so from the compiled loops down to the per-packet helpers two groups cannot be swapped
without a typing error, and inside a group every array is read by its name, not its position.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from weft import jitcache  # noqa: F401 - installs the cache locator before the cache=True below
from weft.packet import fastpath
from weft.packet.batch import Batch
from weft.packet.encap import VXLAN
from weft.packet.reasons import Verdict
from weft.packet.table import PeerTable

_VXLAN = VXLAN.code  # a module int: what numba reads of the row
EGRESS, INGRESS = 0, 1  # directions, as row indices of PipelineState.drops

_DROP = int(Verdict.DROP)
_SLOW = int(Verdict.SLOW)
_FORWARD = int(Verdict.FORWARD)


class BatchArrays(NamedTuple):
    """The arrays of a Batch: packet rows and their per-packet results."""

    bufs: np.ndarray
    lens: np.ndarray
    src_ip: np.ndarray
    out_off: np.ndarray
    out_len: np.ndarray
    verdict: np.ndarray
    reason: np.ndarray
    dst_ip: np.ndarray


class PeerArrays(NamedTuple):
    """The arrays of a PeerTable the kernels read (updated in place, never reallocated)."""

    present: np.ndarray
    public_ip: np.ndarray
    vtep_mac: np.ndarray
    sender_keys: np.ndarray


class PipelineState(NamedTuple):
    """What the steps read and count into: config slots, counters, drops by direction."""

    cfg: np.ndarray  # int64[CFG_SIZE], slots named table.CFG_*
    counters: np.ndarray  # uint64[N_PATHS, N_SLOTS]
    drops: np.ndarray  # uint64[2, REASON_SLOTS]: fast-path DROPs by reason, [EGRESS], [INGRESS]


def batch_arrays(batch: Batch) -> BatchArrays:
    return BatchArrays(batch.bufs, batch.lens, batch.src_ip, batch.out_off, batch.out_len,
                       batch.verdict, batch.reason, batch.dst_ip)


def peer_arrays(table: PeerTable) -> PeerArrays:
    return PeerArrays(table.present, table.public_ip, table.vtep_mac, table.sender_keys)


@njit(cache=True, nogil=True)
def _tally(n, verdict, reason, drops):
    """Add the DROP reasons among the first n rows to drops; returns (# FORWARD, # SLOW)."""
    forwarded = 0
    slow = 0
    for i in range(n):
        v = verdict[i]
        if v == _DROP:
            drops[reason[i]] += np.uint64(1)
        elif v == _SLOW:
            slow += 1
        elif v == _FORWARD:
            forwarded += 1
    return forwarded, slow


@njit(cache=True, nogil=True)
def egress(code, n, b, peers, state):
    """Packets from our pods in rows 0..n-1 -> encapsulated; returns (# FORWARD, # SLOW)."""
    if code == _VXLAN:
        fastpath.vxlan_egress(n, b, peers, state)
    else:
        fastpath.udp_egress(n, b, peers, state)
    return _tally(n, b.verdict, b.reason, state.drops[EGRESS])


@njit(cache=True, nogil=True)
def ingress(code, n, b, peers, state):
    """Payloads from peers (b.src_ip) -> inner frames/packets; returns (# FORWARD, # SLOW)."""
    if code == _VXLAN:
        fastpath.vxlan_ingress(n, b, peers, state)
    else:
        fastpath.udp_ingress(n, b, peers, state)
    return _tally(n, b.verdict, b.reason, state.drops[INGRESS])
