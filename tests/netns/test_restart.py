"""Restarting `weft run` as operators and systemd do, over and over, in a live cluster.

Each restart sends SIGTERM and starts the next daemon either after the old one exited (systemd's
restart) or at once, while the old one may still be stopping (a quick stop/start by hand). The
old daemon must exit in well under a second, the new one must wait for it rather than fail, no
daemon may die with a traceback, and after each restart every pod must reach every pod on the
other hosts again. The vxlan cluster has a flannel host (the kernel's VXLAN programmed as
flanneld programs it), which only keeps working if the restarted host keeps its VtepMAC.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

import pytest

from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

pytestmark = pytest.mark.netns

RESTARTS = 20
STOP_LIMIT = 1.0  # seconds from SIGTERM to exit; ~0.07 s measured on the 2-core lab machine
RESTARTED = 1  # the host restarted; h0 is the flannel host in the vxlan cluster


def every_pair_reaches(cluster: Cluster, timeout: float = 10.0) -> list[tuple[str, str]]:
    """The (source, destination) pod pairs on different hosts that got no echo reply."""
    failed = []
    pods = cluster.pods()
    for src in pods:
        for dst in pods:
            if src.host == dst.host:
                continue
            try:
                probe.wait_reachable(src.ns, str(dst.ip), timeout=timeout, step=0.2)
            except TimeoutError:
                failed.append((str(src.ip), str(dst.ip)))
    return failed


def restart(cluster: Cluster, host: int, gap: bool) -> float:
    """SIGTERM the host's daemon and start the next one, after the old one exited (gap) or at
    once; returns how long the old one took to exit."""
    old = cluster.host(host).proc
    sent = time.perf_counter()
    old.terminate()
    if gap:
        assert old.wait(timeout=10) == 0
        stopped = time.perf_counter() - sent
        cluster.start_weft(host)
    else:
        cluster.start_weft(host)
        assert old.wait(timeout=10) == 0
        stopped = time.perf_counter() - sent
    # The old daemon is gone, so the status comes from the new one.
    cluster.wait_synced(timeout=30)
    return stopped


@pytest.fixture(params=["vxlan", "udp"])
def cluster(request):
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend=request.param)
        flannel = (0,) if request.param == "vxlan" else ()
        cluster.start(pods_per_host=1, flannel_hosts=flannel)
        yield cluster


def test_restarts_with_and_without_a_gap_keep_every_pair_reachable(cluster):
    assert every_pair_reaches(cluster) == []
    host = cluster.host(RESTARTED)
    vtep_mac = cluster._vtep_mac_of(host)  # read from its lease: None for udp
    stop_times, failures = [], []
    for turn in range(RESTARTS):
        gap = turn % 2 == 0
        stop_times.append(restart(cluster, RESTARTED, gap))
        failed = every_pair_reaches(cluster, timeout=5.0)
        if failed:
            failures.append((turn, "gap" if gap else "no gap", failed))
    log = cluster.host_log(RESTARTED)
    print(f"{cluster.backend}: SIGTERM to exit median {sorted(stop_times)[RESTARTS // 2]:.3f} s, "
          f"max {max(stop_times):.3f} s; new daemons that waited: {log.count('waiting up to')}")
    assert failures == [], f"{failures}\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    assert log.count("received SIGTERM, shutting down") == RESTARTS
    assert max(stop_times) < STOP_LIMIT, stop_times
    assert cluster._vtep_mac_of(host) == vtep_mac  # the flannel host's FDB entry still fits


def test_a_start_waits_for_the_instance_lock_before_touching_the_host():
    """Another daemon holds the lock (here: the test): the new one says it waits, touches
    nothing (no subnet file, no device), and starts as soon as the lock is free."""
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="udp")
        cluster.hosts = cluster.hosts[:1]  # one daemon is all this needs
        cluster.start_etcd()
        lock_path = f"{cluster.subnet_file(0)}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            cluster.start_weft(0)
            deadline = time.time() + 30
            while "waiting up to" not in cluster.host_log(0) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # ample time to touch the host, had it not waited
            log = cluster.host_log(0)
            assert f"another weft run (pid {os.getpid()}) holds {lock_path}" in log, log
            assert not cluster.subnet_file(0).exists()
            assert lab.call(lab.hosts[0], ["ip", "link", "show", "weft0"]).returncode != 0
            assert cluster.host(0).proc.poll() is None
        finally:
            os.close(fd)  # the lock goes with its last fd
        cluster.wait_leases(timeout=30)
        assert "Traceback" not in cluster.host_log(0)
        assert cluster.stop_weft(0) == 0


def test_a_start_waits_for_a_daemon_still_listening_then_starts():
    """A daemon of a weft without the lock still answers on the control socket: the new one
    waits for the socket to go, then starts; no ControlError traceback."""
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="udp")
        cluster.hosts = cluster.hosts[:1]
        cluster.start_etcd()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(cluster.socket_path(0))
        listener.listen(8)
        try:
            cluster.start_weft(0)
            deadline = time.time() + 30
            while "still listens" not in cluster.host_log(0) and time.time() < deadline:
                time.sleep(0.05)
            assert "still listens" in cluster.host_log(0), cluster.host_log(0)
            assert not cluster.subnet_file(0).exists()
        finally:
            listener.close()
            os.unlink(cluster.socket_path(0))
        cluster.wait_leases(timeout=30)
        assert "Traceback" not in cluster.host_log(0)
        assert cluster.stop_weft(0) == 0
