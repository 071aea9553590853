"""The counters layout: counters[path, slot], one row per fast-path kernel.

Slots 0..REASON_SLOTS-1 count packets by reason (every input counted exactly once there), the
rest are totals. SLOT_IP_ID is state, not a count: the next outer IPv4 identification of
vxlan_egress. SLOT_CSUM_COMPLETED counts FORWARD packets whose inner TCP/UDP checksum was
completed from the CHECKSUM_PARTIAL form (vxlan_ingress only; see
fastpath._complete_partial_l4_csum). New slots go at the end so existing indices stay stable.
The kernels (weft.packet.fastpath, weft.packet.offload.tunnel) count into it; Pipeline.stats,
trace and the metrics read it.
"""

from __future__ import annotations

import numpy as np

from weft.packet.encap import UDP, VXLAN
from weft.packet.reasons import Reason, Verdict, reason_name

PATH_VXLAN_EGRESS = 0
PATH_VXLAN_INGRESS = 1
PATH_UDP_EGRESS = 2
PATH_UDP_INGRESS = 3
N_PATHS = 4
# The IPv6 half (weft.packet.fastpath6) counts into an array of its own (new_counters6), so the
# IPv4 layout above stays exactly as it was; same slots.
PATH_VXLAN6_EGRESS = 0
PATH_VXLAN6_INGRESS = 1
N_PATHS6 = 2
REASON_SLOTS = 64
SLOT_RX_PACKETS = 64  # inputs seen
SLOT_RX_BYTES = 65  # input bytes (valid lengths only)
SLOT_TX_PACKETS = 66  # FORWARD outputs
SLOT_TX_BYTES = 67  # bytes of FORWARD outputs
SLOT_VERDICT = 68  # + Verdict: 68 forward, 69 drop, 70 slow
SLOT_IP_ID = 71
SLOT_CSUM_COMPLETED = 72
N_SLOTS = 73

assert max(Reason) < REASON_SLOTS

# an encapsulation's counters rows (egress, ingress), by its row's code
ENCAP_PATHS = {VXLAN.code: (PATH_VXLAN_EGRESS, PATH_VXLAN_INGRESS),
               UDP.code: (PATH_UDP_EGRESS, PATH_UDP_INGRESS)}


def new_counters() -> np.ndarray:
    """A zeroed counters array for all four kernels."""
    return np.zeros((N_PATHS, N_SLOTS), dtype=np.uint64)


def new_counters6() -> np.ndarray:
    """A zeroed counters array for the IPv6 half's two kernels."""
    return np.zeros((N_PATHS6, N_SLOTS), dtype=np.uint64)


# Slow-path outcomes that answered the packet; every other outcome is a drop.
SLOW_ANSWERED = frozenset({int(Reason.ARP_REPLIED), int(Reason.ICMP_ERROR_SENT)})


def direction_summary(counters: np.ndarray, path: int) -> dict[str, int]:
    """One direction's totals for counter_summary (both pipelines, IPv4 and IPv6)."""
    return {
        "packets": int(counters[path, SLOT_RX_PACKETS]),
        "bytes": int(counters[path, SLOT_RX_BYTES]),
        "forwarded": int(counters[path, SLOT_TX_PACKETS]),
        "forwarded_bytes": int(counters[path, SLOT_TX_BYTES]),
        "slow": int(counters[path, SLOT_VERDICT + int(Verdict.SLOW)]),
        "dropped": int(counters[path, SLOT_VERDICT + int(Verdict.DROP)]),
        # inner TCP/UDP checksums a sender left for offload, completed on ingress
        "checksums_completed": int(counters[path, SLOT_CSUM_COMPLETED]),
    }


def finish_summary(out: dict, drops: dict[str, int], slow_counts: dict[int, int]) -> dict:
    """Add the slow path's outcomes to a counter_summary: its drops beside the fast path's
    (`drops`, by reason name), and every outcome by name."""
    drops = dict(drops)
    for code, count in slow_counts.items():
        if code not in SLOW_ANSWERED:
            name = reason_name(code)
            drops[name] = drops.get(name, 0) + count
    out["drops"] = drops
    out["slow_path"] = {reason_name(code): n for code, n in slow_counts.items()}
    return out
