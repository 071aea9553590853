"""The IPv6 half's pipeline (weft.packet.encap.VXLAN6): what Pipeline is for the IPv4 device.

Same face as weft.packet.pipeline.Pipeline to the drivers (egress, ingress, slow, counters,
encap, table, mtu), so the Python loop (weft.drivers.pyloop) runs it unchanged; its kernels
are weft.packet.fastpath6's, its peer table weft.packet.table6's. No IO.
"""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv6Network

import numpy as np

from weft.packet import fastpath6
from weft.packet.batch import Batch
from weft.packet.counters import (
    PATH_VXLAN6_EGRESS,
    PATH_VXLAN6_INGRESS,
    direction_summary,
    finish_summary,
    new_counters6,
)
from weft.packet.encap import VXLAN6, Encap
from weft.packet.reasons import Reason, reason_name
from weft.packet.slowpath import SlowResult
from weft.packet.slowpath6 import SlowPath6Context, handle_egress6
from weft.packet.table6 import DatapathConfig6, PeerTable6


class Pipeline6:
    def __init__(self, network: IPv6Network, subnet_len: int, *, vni: int, port: int,
                 mtu: int, encap: Encap = VXLAN6) -> None:
        self.encap = encap
        self.kind = encap.backend
        self.network = network
        self.mtu = mtu
        self.table = PeerTable6(network, subnet_len)
        self.dpcfg = DatapathConfig6(network, subnet_len, vni=vni, port=port, mtu=mtu)
        self.counters = new_counters6()
        self.path_egress, self.path_ingress = PATH_VXLAN6_EGRESS, PATH_VXLAN6_INGRESS
        self.peers = fastpath6.peer6_arrays(self.table)
        self.slow_counts: Counter[int] = Counter()
        self._slow_ctx: SlowPath6Context | None = None
        self._arrays: dict[int, tuple[Batch, fastpath6.Batch6Arrays]] = {}

    @property
    def cfg(self) -> np.ndarray:
        return self.dpcfg.cfg

    def set_local(self, subnet: IPv6Network, vtep_mac: bytes) -> None:
        self.dpcfg.set_local(subnet, vtep_mac)
        self._slow_ctx = SlowPath6Context(subnet, vtep_mac, self.mtu)

    def _batch(self, batch: Batch) -> fastpath6.Batch6Arrays:
        # the tuple of a batch made once (the loops reuse their batch)
        held = self._arrays.get(id(batch))
        if held is None or held[0] is not batch:
            held = self._arrays[id(batch)] = (batch, fastpath6.batch6_arrays(batch))
        return held[1]

    def egress(self, batch: Batch, n: int) -> int:
        """Frames from the v6 TAP -> VXLAN payloads for batch.dst_ip6; returns # FORWARD."""
        return fastpath6.vxlan6_egress(n, self._batch(batch), self.peers, self.cfg,
                                       self.counters)

    def ingress(self, batch: Batch, n: int) -> int:
        """VXLAN payloads from batch.src_ip6 -> inner frames; returns # FORWARD."""
        return fastpath6.vxlan6_ingress(n, self._batch(batch), self.peers, self.cfg,
                                        self.counters)

    def slow(self, packet: bytes, reason: int) -> SlowResult:
        if self._slow_ctx is None:
            result = SlowResult(int(Reason.SLOW_PATH_DROP), (), "no local lease yet")
        else:
            result = handle_egress6(packet, reason, self._slow_ctx)
        self.slow_counts[int(result.reason)] += 1
        return result

    def counter_summary(self) -> dict:
        """As Pipeline.counter_summary: packets/bytes per direction, drops by reason name."""
        out: dict = {}
        drops: Counter[str] = Counter()
        for name, path in (("egress", self.path_egress), ("ingress", self.path_ingress)):
            out[name] = direction_summary(self.counters, path)
            # every input is counted under its reason: the drops are the DROP ones
            for code in range(int(Reason.TRUNCATED), 64):
                count = int(self.counters[path, code])
                if count and code not in (int(Reason.FRAG_NEEDED), int(Reason.NO_ROUTE),
                                          int(Reason.OUTSIDE_NETWORK)):
                    drops[reason_name(code)] += count
        return finish_summary(out, drops, self.slow_counts)
