"""A rogue VXLAN flood (100k+ pps from a host that holds no lease) while pods exchange TCP.

What must hold: not one rogue packet reaches a pod, and every rogue datagram the kernel handed to
weft is counted as unknown_sender (the kernel may drop some when weft's socket buffer is full;
those are counted by the kernel, not by weft). What is measured, not asserted: the offered rate
and how much of the pods' TCP throughput survived the flood (iperf3 with and without it, in the
same run).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from rogue import forged_frame, link_counter, rogue_lab, unknown_sender

from weft.tools.lab import netns, probe
from weft.tools.lab.flood import udp_flood
from weft.tools.lab.topology import Lab

pytestmark = pytest.mark.netns

# Senders as fast as they can, at a raised priority: on a small shared machine a fair share of
# the CPU does not reach 100k pps (the sender also pays for the receiving side's softirq work
# over veth), and an attacker does not play fair anyway.
FLOOD_PROCESSES = 3
FLOOD_NICE = -15
IPERF_SECONDS = 4


def _snmp(section: str, field: str) -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith(section + ":")]
    return int(rows[1][rows[0].index(field)])


def _iperf3_gbit_s(lab: Lab, src, dst, seconds: int) -> float:
    server = lab.run(dst.ns, ["iperf3", "-s", "-1", "-B", str(dst.ip)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)  # let the server bind
        out = lab.call(src.ns, ["iperf3", "-c", str(dst.ip), "-t", str(seconds), "-J"],
                       timeout=seconds + 30)
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def _kernel_drops(host_ns: str) -> int:
    """Datagrams to the victim host that the kernel dropped before weft could read them."""
    return netns.call_in(host_ns, lambda: (_snmp("Udp", "RcvbufErrors")
                                           + link_counter("eth0", "rx_dropped")))


def test_rogue_flood_reaches_no_pod_is_counted_and_tcp_goes_on():
    with rogue_lab() as (lab, cluster, rogue):
        victim, other = cluster.host(0), cluster.host(1)
        pod, sender_pod = victim.pods[0], other.pods[0]
        frame = forged_frame(sender_pod.ip, pod.ip)
        probe.wait_reachable(sender_pod.ns, str(pod.ip), timeout=10)
        quiet = _iperf3_gbit_s(lab, sender_pod, pod, IPERF_SECONDS)

        icmp_before = netns.call_in(pod.ns, _snmp, "Icmp", "InMsgs")
        drops_before = unknown_sender(cluster)
        kernel_before = _kernel_drops(victim.ns)
        floods = [netns.spawn_in(rogue, udp_flood, victim.public_ip, 8472, frame,
                                 IPERF_SECONDS + 1.5, nice=FLOOD_NICE)
                  for _ in range(FLOOD_PROCESSES)]
        time.sleep(0.5)
        flooded = _iperf3_gbit_s(lab, sender_pod, pod, IPERF_SECONDS)
        results = [flood.result(60) for flood in floods]
        offered = {"sent": sum(r["sent"] for r in results),
                   "seconds": max(r["seconds"] for r in results)}
        offered["pps"] = offered["sent"] / offered["seconds"]

        # Wait until weft has judged everything the kernel delivered; then compare.
        expected = offered["sent"]
        deadline = time.time() + 30
        history: list[int] = []
        while time.time() < deadline:
            counted = unknown_sender(cluster) - drops_before
            kernel = _kernel_drops(victim.ns) - kernel_before
            history.append(counted)
            if counted + kernel >= expected or history[-4:] == [counted] * 4:
                break  # all accounted for, or no progress for 1.5 s: a real shortfall
            time.sleep(0.5)
        icmp_after = netns.call_in(pod.ns, _snmp, "Icmp", "InMsgs")
        print(f"\nflood: offered {offered['pps'] / 1e3:.0f} kpps ({offered['sent']} datagrams in "
              f"{offered['seconds']:.1f}s); unknown_sender +{counted}, kernel drops +{kernel}; "
              f"rogue packets at the pod: {icmp_after - icmp_before}; TCP {quiet:.2f} Gbit/s "
              f"quiet, {flooded:.2f} under flood ({flooded / quiet:.0%} kept)")
        assert icmp_after == icmp_before, "a rogue packet reached the pod"
        # Every rogue datagram the kernel delivered was counted, and nothing else was: the
        # kernel's receive-buffer drops are shared with the peer's legitimate VXLAN on the same
        # socket, so they bound the rogue ones from above rather than giving them exactly.
        assert counted <= expected <= counted + kernel
        assert flooded > 0  # TCP went on; how fast is reported, not asserted
        # The daemon's control socket served every status poll above and says so.
        assert cluster.status(0)["clients"]["control"]["served"] >= len(history)
