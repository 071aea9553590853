"""Run one fast-path kernel over a Batch with loose config and counters (import it as
`kernel_runs`): how the kernel and fuzz tests call a kernel directly, without a Pipeline.

The kernels take the pipeline's argument groups (weft.packet.pipeline_steps); these build them
around the loose arrays, with drops of their own the kernels never touch.
"""

from __future__ import annotations

import numpy as np

from weft.packet.batch import Batch
from weft.packet.counters import REASON_SLOTS
from weft.packet.fastpath import udp_egress, udp_ingress, vxlan_egress, vxlan_ingress
from weft.packet.pipeline_steps import PipelineState, batch_arrays, peer_arrays
from weft.packet.table import PeerTable


def _state(cfg: np.ndarray, counters: np.ndarray) -> PipelineState:
    return PipelineState(cfg, counters, np.zeros((2, REASON_SLOTS), dtype=np.uint64))


def run_vxlan_egress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    """vxlan_egress over the first n rows of `batch`; returns how many are FORWARD."""
    return vxlan_egress(n, batch_arrays(batch), peer_arrays(table), _state(cfg, counters))


def run_vxlan_ingress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    return vxlan_ingress(n, batch_arrays(batch), peer_arrays(table), _state(cfg, counters))


def run_udp_egress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    return udp_egress(n, batch_arrays(batch), peer_arrays(table), _state(cfg, counters))


def run_udp_ingress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    return udp_ingress(n, batch_arrays(batch), peer_arrays(table), _state(cfg, counters))
