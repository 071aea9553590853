"""The one packet pipeline every driver uses: the daemon, replay and trace.

A Pipeline binds the batch kernels of one encapsulation (a row of weft.packet.encap) to the
datapath config, the
peer table and the counters, and routes SLOW verdicts to the scapy slow path. It does no IO: the
daemon's drivers feed it from TUN/TAP and sockets, replay from a pcap, trace one packet at a time.
Its steps are the compiled ones of pipeline_steps.py; the compiled loops call those same steps with
`encap.code`, `peers` and `state`, so kernel choice and drop counting exist once.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import numpy as np

from weft.packet import pipeline_steps, slowpath
from weft.packet.batch import Batch
from weft.packet.counters import (
    ENCAP_PATHS,
    REASON_SLOTS,
    direction_summary,
    finish_summary,
    new_counters,
)
from weft.packet.encap import DEFAULT_VNI, ENCAPS, VXLAN, Encap
from weft.packet.pipeline_steps import EGRESS, INGRESS, PipelineState
from weft.packet.reasons import Reason, reason_name
from weft.packet.table import DatapathConfig, PeerTable

__all__ = ["EGRESS", "INGRESS", "LocalInfo", "Pipeline"]


@dataclass(frozen=True)
class LocalInfo:
    subnet: IPv4Network
    public_ip: IPv4Address
    vtep_mac: bytes | None  # vxlan only


class Pipeline:
    def __init__(self, kind: Encap | str, network: IPv4Network, subnet_len: int, *,
                 vni: int = DEFAULT_VNI, port: int = VXLAN.default_port,
                 mtu: int = 1500 - VXLAN.overhead) -> None:  # vxlan's on a 1500-byte link
        encap = kind if isinstance(kind, Encap) else ENCAPS.get(kind)
        if encap is None or encap.code not in ENCAP_PATHS:
            raise ValueError(f"no datapath for backend {kind!r}")
        self.encap = encap  # looked up once: everything that differs per encapsulation
        self.kind = encap.backend
        self.network = network
        self.table = PeerTable(network, subnet_len)
        self.dpcfg = DatapathConfig(network, subnet_len, vni=vni, port=port, mtu=mtu)
        self.counters = new_counters()
        self.slow_counts: Counter[int] = Counter()  # slow-path outcomes by final reason
        # fast-path drops by reason, [0] egress and [1] ingress
        self.drops = np.zeros((2, REASON_SLOTS), dtype=np.uint64)
        self.mtu = mtu
        self.local: LocalInfo | None = None
        self.path_egress, self.path_ingress = ENCAP_PATHS[encap.code]
        self.peers = pipeline_steps.peer_arrays(self.table)
        self.state = PipelineState(self.dpcfg.cfg, self.counters, self.drops)
        # (step, id(batch)) -> (batch, its arrays, the compiled step for their types); see _run
        # per batch, per step: (the batch's arrays, the compiled function for their types)
        self._steps: weakref.WeakKeyDictionary[Batch, dict] = weakref.WeakKeyDictionary()
        self._slow_ctx: slowpath.SlowPathContext | None = None

    @property
    def cfg(self) -> np.ndarray:
        return self.dpcfg.cfg

    def set_local(self, subnet: IPv4Network, public_ip: IPv4Address,
                  vtep_mac: bytes | None = None) -> None:
        self.dpcfg.set_local(subnet, public_ip, vtep_mac)
        self.local = LocalInfo(subnet, public_ip, vtep_mac)
        self._slow_ctx = slowpath.SlowPathContext(
            backend=self.encap.backend, local_subnet=subnet, network=self.network,
            local_mac=vtep_mac or bytes(6), overlay_mtu=self.mtu, peer_mac_for=self._peer_mac,
        )

    def _peer_mac(self, ip: IPv4Address) -> bytes | None:
        idx = self.table.index_of(int(ip))
        if idx < 0 or not self.table.present[idx]:
            return None
        mac = bytes(self.table.vtep_mac[idx])
        return mac if any(mac) else None

    # -- the steps ------------------------------------------------------------------------------
    def egress(self, batch: Batch, n: int) -> int:
        """Packets from our pods (TAP frames / TUN packets) -> encapsulated; returns # FORWARD."""
        return self._run(pipeline_steps.egress, batch, n)

    def ingress(self, batch: Batch, n: int) -> int:
        """Payloads from peers (with batch.src_ip) -> inner frames/packets; returns # FORWARD."""
        return self._run(pipeline_steps.ingress, batch, n)

    def _run(self, step, batch: Batch, n: int) -> int:
        """One batch through a compiled step, called from Python (replay, trace, plain loop).

        numba's dispatcher types every argument on every call; for these nested tuples of arrays
        that costs ~2 us a batch (~30 ns a packet at 64 rows). A batch's arrays keep their types,
        so the first call through the dispatcher picks the compiled function and later calls go
        to it directly.
        """
        per_batch = self._steps.get(batch)
        if per_batch is None:
            per_batch = self._steps[batch] = {}
        cached = per_batch.get(step)
        if cached is None:
            args = (self.encap.code, n, pipeline_steps.batch_arrays(batch), self.peers, self.state)
            forwarded, _ = step(*args)
            overloads = getattr(step, "overloads", None)  # absent under NUMBA_DISABLE_JIT
            sig = tuple(step.typeof_pyval(a) for a in args) if overloads is not None else None
            entry = overloads[sig].entry_point if sig in (overloads or {}) else step
            per_batch[step] = (args[2], entry)
            return forwarded
        arrays, entry = cached
        forwarded, _ = entry(self.encap.code, n, arrays, self.peers, self.state)
        return forwarded

    def slow(self, packet: bytes, reason: int) -> slowpath.SlowResult:
        """Hand one SLOW packet to the scapy slow path; returns what to write back."""
        if self._slow_ctx is None:
            result = slowpath.SlowResult(int(Reason.SLOW_PATH_DROP), (), "no local lease yet")
        else:
            result = slowpath.handle_egress(packet, reason, self._slow_ctx)
        self.slow_counts[int(result.reason)] += 1
        return result

    # -- counters -------------------------------------------------------------------------------
    def counter_summary(self) -> dict:
        """Packets/bytes per direction, drops and slow-path outcomes by reason name."""
        out: dict = {}
        drops: Counter[str] = Counter()
        for direction, (name, path) in enumerate(
            (("egress", self.path_egress), ("ingress", self.path_ingress))
        ):
            out[name] = direction_summary(self.counters, path)
            for code in np.flatnonzero(self.drops[direction]):
                drops[reason_name(int(code))] += int(self.drops[direction][code])
        return finish_summary(out, drops, self.slow_counts)
