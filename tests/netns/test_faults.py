"""Faults under a steady ping between pods on two weft hosts: etcd frozen past the lease TTL,
etcd killed and restarted, `weft run` SIGKILLed and restarted.

The ping sends one echo request at a time (0.2 s timeout, 10 ms apart: close to 100 per
second); a probe without its reply is a lost packet. Each test prints what it measured, so
`pytest -s` shows the figures; the assertions bound losses and check outcomes, never times.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

pytestmark = pytest.mark.netns

TTL = 10  # seconds; the frozen-etcd scenario needs an outage longer than this
INTERVAL, TIMEOUT = 0.01, 0.2


@pytest.fixture
def cluster():
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start_etcd()
        for h in cluster.hosts:
            cluster.start_weft(h.index, *weft_flags())
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.add_pods(1)
        yield cluster


def weft_flags() -> tuple[str, ...]:
    return ("--lease-ttl", str(TTL))


class Pinger:
    """A ping from host 0's pod to host 1's pod on a thread, until `count` probes are sent."""

    def __init__(self, cluster: Cluster, seconds: float) -> None:
        src, dst = cluster.hosts[0].pods[0], cluster.hosts[1].pods[0]
        assert probe.wait_reachable(src.ns, str(dst.ip)) is not None
        self.probes: list[probe.Probe] = []
        count = int(seconds / (INTERVAL + 0.001))
        self.thread = threading.Thread(target=self._run, args=(src.ns, str(dst.ip), count))
        self.thread.start()

    def _run(self, ns: str, dst: str, count: int) -> None:
        self.probes = probe.ping_detail(ns, dst, count=count, timeout=TIMEOUT, interval=INTERVAL)

    def result(self) -> tuple[int, int, int]:
        """(sent, lost, longest run of consecutive losses)."""
        self.thread.join()
        lost = run = longest = 0
        for p in self.probes:
            if p.ok:
                run = 0
            else:
                lost, run = lost + 1, run + 1
                longest = max(longest, run)
        return len(self.probes), lost, longest


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def subnets(cluster: Cluster) -> dict[int, str]:
    return {h.index: (cluster.status(h.index) or {}).get("lease", {}).get("subnet")
            for h in cluster.hosts}


def alive(cluster: Cluster) -> bool:
    return all(h.proc.poll() is None for h in cluster.hosts)


def logs(cluster: Cluster) -> str:
    return "\n".join(f"--- h{h.index}\n{cluster.host_log(h.index)[-3000:]}" for h in cluster.hosts)


def report(name: str, sent: int, lost: int, longest: int, **seen) -> None:
    print(f"\n[{name}] sent {sent}, lost {lost}, longest loss run {longest} "
          f"(~{longest * (TIMEOUT + INTERVAL):.2f}s); " +
          "; ".join(f"{k}: {v}" for k, v in seen.items()))


def test_etcd_frozen_past_the_ttl_keeps_both_hosts_and_every_packet(cluster):
    """The issue's scenario: etcd SIGSTOPped longer than the TTL, then SIGCONTed. etcd then
    deletes both expired leases; each host puts its own back and keeps its peer meanwhile."""
    before = subnets(cluster)
    pinger = Pinger(cluster, seconds=TTL + 20)
    time.sleep(2)  # traffic flowing before the fault
    cluster.lab.signal_etcd(signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        seen_down = wait_for(lambda: (s := cluster.status(0)) and not s["etcd"]["up"] and s,
                             "host 0 to see etcd unreachable")
        time.sleep(max(0.0, TTL + 4 - (time.monotonic() - frozen_at)))  # past every TTL
        during = cluster.status(0)
    finally:
        cluster.lab.signal_etcd(signal.SIGCONT)
    thawed = time.monotonic()
    wait_for(lambda: all((cluster.status(h.index) or {}).get("ready") for h in cluster.hosts),
             "both hosts ready again")
    recovered = time.monotonic() - thawed
    sent, lost, longest = pinger.result()
    after = {h.index: cluster.status(h.index) for h in cluster.hosts}
    recreated = sum(s["lease_keeper"]["recreated"] for s in after.values())
    report("etcd frozen", sent, lost, longest, ready_again_after=f"{recovered:.1f}s",
           recreated=recreated, during_ready=during["ready"], during_reason=during.get("reason"),
           during_etcd=seen_down["etcd"], after_keeper=after[0]["lease_keeper"],
           after_peer_sync=after[0]["peer_sync"])
    assert alive(cluster), logs(cluster)
    assert subnets(cluster) == before
    assert lost == 0, logs(cluster)
    assert during["ready"] is False and "lease" in during["reason"]  # renewal failing, or expired
    assert "Lease has been revoked" not in logs(cluster)
    # etcd did delete the expired leases, and the hosts put them back (or renewed first)
    assert all(s["lease_keeper"]["renew_failures"] >= 1 for s in after.values())
    assert all(s["etcd"]["up"] for s in after.values())
    assert all({p["subnet"] for p in s["peers"]} == {before[1 - i]} for i, s in after.items())


def test_etcd_killed_for_12s_loses_no_packet(cluster):
    before = subnets(cluster)
    pinger = Pinger(cluster, seconds=20)
    time.sleep(2)
    cluster.lab.kill_etcd()
    try:
        seen_down = wait_for(lambda: (s := cluster.status(0)) and not s["etcd"]["up"] and s,
                             "host 0 to see etcd unreachable")
        time.sleep(12)
        during = cluster.status(0)
    finally:
        cluster.lab.start_etcd()
    wait_for(lambda: all((cluster.status(h.index) or {}).get("etcd", {}).get("up")
                         for h in cluster.hosts), "both hosts to reach etcd again")
    sent, lost, longest = pinger.result()
    after = cluster.status(0)
    report("etcd killed", sent, lost, longest, during_etcd=during["etcd"],
           during_ready=during["ready"], after_watch=after["etcd"]["watch"],
           restarts=after["etcd"]["watch_restarts"])
    assert alive(cluster) and subnets(cluster) == before, logs(cluster)
    assert lost == 0, logs(cluster)
    assert seen_down["etcd"]["watch"] == "reconnecting" and during["etcd"]["retries"] >= 2
    wait_for(lambda: cluster.status(0)["etcd"]["watch"] == "connected", "the watch back")
    assert cluster.status(0)["etcd"]["watch_restarts"] >= 1
    assert "etcd reachable again after" in cluster.host_log(0)


def test_weft_sigkilled_and_restarted_keeps_its_subnet(cluster):
    host = cluster.hosts[1]
    before = subnets(cluster)
    pinger = Pinger(cluster, seconds=15)
    time.sleep(2)
    host.proc.kill()  # SIGKILL: no chance to clean up
    host.proc.wait()
    cluster.start_weft(host.index, *weft_flags())
    wait_for(lambda: (cluster.status(host.index) or {}).get("ready"), "the restarted host")
    sent, lost, longest = pinger.result()
    report("weft SIGKILL+restart", sent, lost, longest)
    assert alive(cluster) and subnets(cluster) == before, logs(cluster)
    # The pods lose what arrives while no weft runs on host 1: bounded, and not a
    # lease change (a new subnet would lose every packet from then on).
    assert lost <= sent // 10, logs(cluster)
    assert pinger.probes[-1].ok
