"""Run one fast-path kernel over a Batch with loose config and counters (import it as
`kernel_runs`): how the kernel and fuzz tests call a kernel directly, without a Pipeline."""

from __future__ import annotations

import numpy as np

from weft.packet.batch import Batch
from weft.packet.fastpath import udp_egress, udp_ingress, vxlan_egress, vxlan_ingress
from weft.packet.table import PeerTable


def run_vxlan_egress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    """vxlan_egress over the first n rows of `batch`; returns how many are FORWARD."""
    b = batch
    return vxlan_egress(b.bufs, b.lens, n, b.out_off, b.out_len, b.verdict, b.reason, b.dst_ip,
                        cfg, table.present, table.public_ip, table.vtep_mac, counters)


def run_vxlan_ingress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    b = batch
    return vxlan_ingress(b.bufs, b.lens, b.src_ip, n, b.out_off, b.out_len, b.verdict, b.reason,
                         b.dst_ip, cfg, table.present, table.public_ip, table.sender_keys,
                         counters)


def run_udp_egress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    b = batch
    return udp_egress(b.bufs, b.lens, n, b.out_off, b.out_len, b.verdict, b.reason, b.dst_ip,
                      cfg, table.present, table.public_ip, counters)


def run_udp_ingress(
    batch: Batch, n: int, cfg: np.ndarray, table: PeerTable, counters: np.ndarray
) -> int:
    b = batch
    return udp_ingress(b.bufs, b.lens, b.src_ip, n, b.out_off, b.out_len, b.verdict, b.reason,
                       b.dst_ip, cfg, table.present, table.public_ip, table.sender_keys, counters)
