"""weft against a 3-member etcd cluster whose members die: the one weft talks to, then the leader.

Quorum is 2 of 3, so one member is down at a time: each test restarts what it killed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from weft.control.etcd_registry import EtcdOptions, EtcdRegistry
from weft.control.lease import LeaseAttrs
from weft.control.registry import LeaseEvents, RegistryUnavailable
from weft.tools.lab.etcd import EtcdCluster, EtcdMember, connected_ports

WEFT = [sys.executable, "-m", "weft.cli"]
CONFIG = '{"Network":"10.9.0.0/16","Backend":{"Type":"alloc"}}'
WITHIN = 30.0  # seconds: generous bound for anything that must happen "within seconds"


@pytest.fixture(scope="module")
def cluster():
    cluster = EtcdCluster(3)
    yield cluster
    cluster.stop()


@pytest.fixture
def healed(cluster):
    """The cluster, all members up again after the test."""
    yield cluster
    for member in cluster.members:
        if not member.alive:
            cluster.restart(member)


def registry_for(cluster: EtcdCluster, prefix: str) -> EtcdRegistry:
    return EtcdRegistry(EtcdOptions(endpoints=cluster.endpoints, prefix=prefix))


def retrying(fn, *args):
    """Call `fn` until the cluster answers (a writer riding out the failover, as weft does)."""
    deadline = time.monotonic() + WITHIN
    while True:
        try:
            return fn(*args)
        except RegistryUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for_lease(events: queue.Queue, subnet: IPv4Network) -> None:
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        try:
            batch = events.get(timeout=0.2)
        except queue.Empty:
            continue
        assert isinstance(batch, LeaseEvents), f"the watch failed: {batch!r}"
        if any(lease.subnet == subnet for lease in batch.added):
            return
    raise AssertionError(f"the watch never delivered {subnet}")


def member_in_use(cluster: EtcdCluster, registry: EtcdRegistry) -> EtcdMember:
    return cluster.member_on_port(int(registry.client.endpoint_in_use.netloc.rsplit(":", 1)[1]))


def test_watch_resumes_after_killing_its_member_then_the_leader(healed, etcd_prefix):
    cluster = healed
    watcher = registry_for(cluster, etcd_prefix)
    subnets = IPv4Network("10.9.0.0/16").subnets(new_prefix=24)
    attrs = LeaseAttrs(IPv4Address("192.0.2.80"))
    events: queue.Queue = queue.Queue()
    stop = watcher.watch_leases(watcher.list_leases()[1], events.put, events.put)
    try:
        first = next(subnets)
        watcher.create_lease(first, attrs, ttl=60)
        wait_for_lease(events, first)
        for victim_is in ("its member", "the leader"):
            victim = (member_in_use(cluster, watcher) if victim_is == "its member"
                      else cluster.leader())
            victim.kill()
            killed = time.monotonic()
            # The writer talks to the survivors only, so the lease is written as soon as the
            # cluster can take writes, whatever the watch is doing meanwhile.
            writer = EtcdRegistry(EtcdOptions(
                endpoints=",".join(m.endpoint for m in cluster.members if m.alive),
                prefix=etcd_prefix))
            subnet = next(subnets)  # added while the watch is failing over
            assert retrying(writer.create_lease, subnet, attrs, 60) is not None
            written = time.monotonic() - killed
            writer.client.close()
            wait_for_lease(events, subnet)
            print(f"\n[killed {victim_is} ({victim.name})] lease written after {written:.1f}s, "
                  f"seen by the watch after {time.monotonic() - killed:.1f}s")
            cluster.restart(victim)
    finally:
        stop()
        watcher.client.close()


def weft_env(cluster: EtcdCluster, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env.update(WEFT_ETCD_ENDPOINTS=cluster.endpoints, WEFT_ETCD_PREFIX=prefix,
               WEFT_CONTROL_SOCKET="")
    return env


def start_run(env, public_ip: str, subnet_file: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*WEFT, "run", "--iface", "lo", "--public-ip", public_ip, "--subnet-file",
         str(subnet_file), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def subnet_of(subnet_file: Path) -> IPv4Network | None:
    if subnet_file.exists():
        for line in subnet_file.read_text().splitlines():
            if line.startswith("FLANNEL_SUBNET="):
                return IPv4Interface(line.split("=", 1)[1]).network
    return None


def stop_all(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [(proc.wait(timeout=20), proc.stdout.read()) for proc in procs]


def lease_ids(registry: EtcdRegistry, subnet: IPv4Network, count: int) -> set[int]:
    """Distinct etcd lease ids on `subnet`'s key (each renewal grants a new one), up to count."""
    seen: set[int] = set()
    deadline = time.monotonic() + WITHIN * 2
    while len(seen) < count and time.monotonic() < deadline:
        try:
            seen |= {lease.etcd_lease_id for lease in registry.list_leases()[0]
                     if lease.subnet == subnet}
        except RegistryUnavailable:
            pass
        time.sleep(0.1)
    return seen


def test_renewals_go_on_after_killing_its_member_then_the_leader(healed, etcd_prefix, tmp_path):
    cluster = healed
    observer = registry_for(cluster, etcd_prefix)
    observer.put_network_config(CONFIG)
    subnet_file = tmp_path / "subnet.env"
    # A 6 s TTL renews every 3 s (retrying a failed renewal after 1.5 s), so the lease only
    # outlives the failovers below by renewing through them.
    proc = start_run(weft_env(cluster, etcd_prefix), "192.0.2.81", subnet_file,
                     "--lease-ttl", "6")
    try:
        deadline = time.monotonic() + WITHIN
        while subnet_of(subnet_file) is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        subnet = subnet_of(subnet_file)
        assert subnet is not None
        for victim_is in ("its member", "the leader"):
            if victim_is == "its member":
                ports = connected_ports(proc.pid) & {m.port for m in cluster.members}
                assert len(ports) >= 1, "weft run holds no connection to an etcd member"
                victim = cluster.member_on_port(min(ports))
            else:
                victim = cluster.leader()
            before = lease_ids(observer, subnet, 1)
            victim.kill()
            # Three new etcd leases on our key after the kill: renewals went on.
            assert len(lease_ids(observer, subnet, len(before) + 3) - before) >= 3
            assert proc.poll() is None
            cluster.restart(victim)
    finally:
        [(code, out)] = stop_all([proc])
        observer.client.close()
    assert code == 0, out[-3000:]
    assert "Lease has been revoked" not in out


def test_ten_hosts_starting_at_once_get_distinct_subnets_through_a_leader_kill(
        healed, etcd_prefix, tmp_path):
    cluster = healed
    observer = registry_for(cluster, etcd_prefix)
    observer.put_network_config(CONFIG)
    env = weft_env(cluster, etcd_prefix)
    files = [tmp_path / f"subnet-{i}.env" for i in range(10)]
    procs = [start_run(env, f"192.0.2.{100 + i}", files[i]) for i in range(10)]
    try:
        # Kill the leader as soon as the first host holds a lease: the others are acquiring.
        deadline = time.monotonic() + WITHIN * 2
        while not any(subnet_of(f) for f in files) and time.monotonic() < deadline:
            time.sleep(0.02)
        cluster.leader().kill()
        while not all(subnet_of(f) for f in files) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs
                                                          if p.poll() is not None]
            time.sleep(0.1)
        subnets = [subnet_of(f) for f in files]
        assert None not in subnets
        assert len(set(subnets)) == 10
        leases = retrying(observer.list_leases)[0]
        assert {lease.subnet for lease in leases} == set(subnets)
    finally:
        results = stop_all(procs)
        observer.client.close()
    assert all(code == 0 for code, _ in results), [out[-2000:] for _, out in results]
