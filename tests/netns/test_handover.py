"""Restarts that lose no pod packet: SIGHUP re-executes `weft run` with its device and socket
(weft.dev.handover), and under systemd the fd store carries them to the next start.

A pod pings its peer on the other host every 5 ms, both ways, while one host is reloaded or
restarted again and again; every echo must come back (the kernel queues what arrives while no
process reads: the TAP's transmit queue, the UDP socket's receive buffer)."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.systemd_standin import SystemdStandIn
from weft.tools.lab.topology import Lab

RELOADS = 5  # each a full hand-over; `weft bench --restart --count 10` gives the figures


@contextmanager
def pinging(src_ns: str, dst: str) -> Iterator[dict]:
    """An echo every 5 ms from src_ns to dst while the block runs; the dict is filled at the
    end with sent, received, lost, max_rtt (probe.SteadyPing)."""
    pinger = probe.SteadyPing(src_ns, dst)
    result: dict = {}
    try:
        yield result
    finally:
        result.update(pinger.stop())


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(params=["vxlan", "udp"])
def cluster(request) -> Iterator[Cluster]:
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=request.param)
        cluster.start_etcd()
        for h in cluster.hosts:
            cluster.start_weft(h.index)
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.add_pods(1)
        yield cluster
    assert netns.list_prefixed(lab.prefix) == []


def test_sighup_reloads_lose_no_ping(cluster: Cluster) -> None:
    a, b = cluster.pods()
    host = cluster.host(0)
    before = cluster.status(0)
    pid = host.proc.pid
    with pinging(a.ns, str(b.ip)) as there, pinging(b.ns, str(a.ip)) as back:
        time.sleep(0.5)
        for n in range(1, RELOADS + 1):
            host.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=n: cluster.host_log(0).count("adopted device") == n,
                     f"reload {n} did not adopt the device:\n{cluster.host_log(0)[-3000:]}")
            wait_for(lambda: (cluster.status(0) or {}).get("ready"), f"reload {n} not ready")
            time.sleep(0.3)
    log = cluster.host_log(0)
    for result in (there, back):
        assert result["sent"] > 500, result
        assert result["received"] == result["sent"], (result, log[-3000:])
    assert host.proc.poll() is None and host.proc.pid == pid  # exec: the same process
    after = cluster.status(0)
    assert after["lease"]["subnet"] == before["lease"]["subnet"]
    assert after["datapath"]["mode"] == before["datapath"]["mode"]
    assert "Traceback" not in log
    assert log.count("re-executing") == RELOADS
    print(f"\n{cluster.backend}: {RELOADS} reloads, {there['sent']}+{back['sent']} pings, "
          f"0 lost, longest RTT {max(there['max_rtt'], back['max_rtt']) * 1e3:.1f} ms")


def test_restarts_through_systemds_fd_store_lose_no_ping(cluster: Cluster) -> None:
    a, b = cluster.pods()
    cluster.stop_weft(0)
    systemd = SystemdStandIn(cluster, 0)
    try:
        systemd.start()
        systemd.wait_ready()
        wait_for(lambda: (systemd.drain() or len(systemd.store) == 2),
                 f"weft stored {systemd.store}, not its device and socket")
        assert sorted(name.rsplit("-", 1)[1] for name, _ in systemd.store) == ["device", "udp"]
        fds_before = len(os.listdir(f"/proc/{systemd.proc.pid}/fd"))
        with pinging(a.ns, str(b.ip)) as there, pinging(b.ns, str(a.ip)) as back:
            time.sleep(0.5)
            for _ in range(RELOADS):
                systemd.restart()
                time.sleep(0.3)
        log = cluster.host_log(0)
        assert log.count("adopted device") == RELOADS, log[-3000:]
        assert len(systemd.store) == 2  # the same two files, never one more
        # the new process holds as many descriptors as the first did: nothing leaked
        fds_after = len(os.listdir(f"/proc/{systemd.proc.pid}/fd"))
        assert fds_after <= fds_before, (fds_before, fds_after)
        for result in (there, back):
            assert result["sent"] > 300, result
            assert result["received"] == result["sent"], (result, log[-3000:])
        print(f"\n{cluster.backend}: {RELOADS} fd-store restarts, {there['sent']}+"
              f"{back['sent']} pings, 0 lost, longest RTT "
              f"{max(there['max_rtt'], back['max_rtt']) * 1e3:.1f} ms")
    finally:
        if systemd.proc is not None and systemd.proc.poll() is None:
            systemd.proc.terminate()
            systemd.proc.wait(timeout=30)
        systemd.close()


@pytest.mark.parametrize("cluster", ["vxlan"], indirect=True)  # the check is the backends' one
def test_a_mismatched_descriptor_is_refused_and_closed(cluster: Cluster) -> None:
    """A descriptor named for our device that is something else (here a UDP socket) is not
    used: the device is opened anew, the pods still talk, and the descriptor is closed."""
    a, b = cluster.pods()
    cluster.stop_weft(0)
    systemd = SystemdStandIn(cluster, 0)
    try:
        bogus = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        name = re.search(r"(?:created|reusing) device (\S+)", cluster.host_log(0)).group(1)
        systemd.store.append((f"{name}-device", os.dup(bogus.fileno())))
        bogus.close()
        systemd.start()
        systemd.wait_ready()
        log = cluster.host_log(0)
        assert "not adopting the passed descriptor" in log, log[-3000:]
        assert "adopted device" not in log
        probe.wait_reachable(a.ns, str(b.ip), timeout=10)
        sockets = [os.readlink(f"/proc/{systemd.proc.pid}/fd/{fd}")
                   for fd in os.listdir(f"/proc/{systemd.proc.pid}/fd")]
        assert not any(link == f"socket:[{os.fstat(systemd.store[0][1]).st_ino}]"
                       for link in sockets)
    finally:
        if systemd.proc is not None and systemd.proc.poll() is None:
            systemd.proc.terminate()
            systemd.proc.wait(timeout=30)
        systemd.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
