"""`weft run`'s loop in-process, on MemoryRegistry and the alloc backend (no etcd, no root)."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft import daemon as daemon_module
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_manager import LeaseTiming
from weft.control.memory_registry import MemoryRegistry
from weft.control.registry import LeaseEvents, RegistryError, RegistryUnavailable
from weft.daemon import Daemon, RunOptions
from weft.observe.http import HealthServer
from weft.observe.status_text import format_status

NETWORK = '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}'
PEER = LeaseAttrs(IPv4Address("192.0.2.99"))
PEER_SUBNET = IPv4Network("10.1.200.0/24")
WAIT = 15.0  # upper bound for conditions that hold long before


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def program_peer(registry: MemoryRegistry, run, ttl: int = 60) -> Lease:
    """Put the peer's lease in the store; return it once the daemon has programmed it."""
    lease = registry.create_lease(PEER_SUBNET, PEER, ttl=ttl)
    wait_until(lambda: PEER_SUBNET in run.daemon.backend.peers, "the peer to be programmed")
    return lease


class Running:
    """A Daemon on its own thread; `result` is run()'s return value or exception."""

    def __init__(self, registry, tmp_path, timing: LeaseTiming | None = None,
                 **options_kwargs) -> None:
        options = RunOptions(iface="lo", public_ip=IPv4Address("192.0.2.10"),
                             subnet_file=str(tmp_path / "subnet.env"),
                             timing=timing or LeaseTiming(ttl=3600, renew_margin=600),
                             **options_kwargs)
        self.daemon = Daemon(registry, options)
        self.result: object = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.daemon.run()
        except Exception as exc:  # handed to the test, which asserts on it
            self.result = exc

    def wait_ready(self) -> None:
        wait_until(lambda: self.daemon.ready.is_set() or not self.thread.is_alive(), "ready")
        assert self.daemon.ready.is_set(), self.result

    def join(self):
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.result


@pytest.fixture
def running():
    started: list[Running] = []

    def start(registry, tmp_path, **kwargs) -> Running:
        run = Running(registry, tmp_path, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.daemon.stop()
        run.thread.join(WAIT)


def test_peers_follow_the_watch_and_a_stop_keeps_the_lease(running, tmp_path):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path, peer_removal_grace=0.05)
    run.wait_ready()
    own = run.daemon.lease.subnet
    peer = program_peer(registry, run).subnet
    registry.delete_lease(peer)
    wait_until(lambda: peer not in run.daemon.backend.peers, "the peer to be removed")
    assert own not in run.daemon.backend.peers  # we never route to ourselves
    run.daemon.stop()
    assert run.join() == 0
    assert [lease.subnet for lease in registry.list_leases()[0]] == [own]


def test_a_deleted_own_lease_is_put_back_with_the_same_subnet(running, tmp_path, caplog):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    own = run.daemon.lease
    registry.delete_lease(own.subnet)
    wait_until(lambda: run.daemon.status().lease_keeper.recreated == 1, "a re-create")
    back = registry.get_lease(own.subnet)
    assert back is not None and back.attrs == own.attrs and run.thread.is_alive()
    assert "re-created it" in caplog.text and daemon_module.REVOKED not in caplog.text
    assert "weft_lease_recreated_total 1" in HealthServer(
        "127.0.0.1", 0, run.daemon.status).respond("/metrics")[2]


def test_another_host_holding_our_subnet_ends_the_daemon(running, tmp_path, caplog):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    own = run.daemon.lease.subnet
    registry.hold_watches()  # the daemon sees the deletion only once PEER holds the subnet
    registry.delete_lease(own)
    registry.create_lease(own, PEER, ttl=60)
    registry.release_watches()
    assert run.join() == 1
    assert daemon_module.REVOKED in caplog.text and "held by PublicIP 192.0.2.99" in caplog.text
    assert registry.get_lease(own).attrs == PEER  # left alone, not overwritten


def test_another_hosts_value_on_our_key_ends_the_daemon(running, tmp_path, caplog):
    """An add event with another PublicIP on our key is a loss too, not one of our renewals."""
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    own = run.daemon.lease.subnet
    registry.put_lease(own, PEER, ttl=60)  # as a blind etcdctl put would
    assert run.join() == 1 and daemon_module.REVOKED in caplog.text


def test_a_stale_deletion_after_our_renewal_is_not_a_loss(running, tmp_path, caplog):
    """etcd back from an outage: the expiry's deletion reaches us after our renewal put the key
    back. The key is ours in the store, so nothing is lost and nothing is re-created."""
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path, timing=FAST_RENEWAL)
    run.wait_ready()
    own = run.daemon.lease.subnet
    registry.hold_watches()
    registry.delete_lease(own)  # as the expiry would
    renewals = run.daemon.status().lease_keeper.renewals
    wait_until(lambda: run.daemon.status().lease_keeper.renewals > renewals, "a renewal")
    checks = run.daemon.status().lease_keeper.checks
    registry.release_watches()  # the deletion, then our put
    wait_until(lambda: run.daemon.status().lease_keeper.checks > checks,
               "a check of our key, prompted by the stale deletion")
    run.daemon.stop()
    assert run.join() == 0
    assert daemon_module.REVOKED not in caplog.text
    assert run.daemon.status().lease_keeper.recreated == 0
    assert registry.get_lease(own).attrs.public_ip == IPv4Address("192.0.2.10")


def test_a_failed_watch_ends_the_daemon_and_readiness(running, tmp_path, caplog):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    registry.fail_watches(PermissionError("etcdserver: permission denied"))
    assert run.join() == 1
    status = run.daemon.status()
    assert status.ready is False
    assert status.reason == "lease watch failed: PermissionError: etcdserver: permission denied"
    assert "lease watch failed: PermissionError" in caplog.text
    code, _, body = HealthServer("127.0.0.1", 0, run.daemon.status).respond("/readyz")
    assert code == 503 and body.startswith("not ready: lease watch failed")


def test_a_dead_watch_is_never_ready(tmp_path):
    daemon = Daemon(MemoryRegistry(NETWORK), RunOptions())
    daemon.ready.set()
    assert daemon.status().ready is True
    daemon.watch_error = RuntimeError("watch thread died")
    assert daemon.status().ready is False


class FlakyRegistry(MemoryRegistry):
    """Raises the scripted errors from the named method before behaving normally."""

    def __init__(self, method: str, *errors: BaseException) -> None:
        super().__init__(NETWORK)
        self.errors, self.calls = list(errors), 0
        real = getattr(self, method)

        def flaky(*args, **kwargs):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return real(*args, **kwargs)

        setattr(self, method, flaky)  # shadows the method on this instance only


def test_unreachable_store_is_waited_for_at_start(running, tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_module, "CONFIG_RETRY", 0.01)
    registry = FlakyRegistry("get_network_config", RegistryUnavailable("etcd at x: UNAVAILABLE"),
                             RegistryUnavailable("etcd at x: UNAVAILABLE"))
    run = running(registry, tmp_path)
    run.wait_ready()
    assert registry.calls == 3


def test_refused_config_read_is_not_retried(running, tmp_path):
    registry = FlakyRegistry("get_network_config",
                             RegistryError("etcd at x: PERMISSION_DENIED: denied"))
    result = running(registry, tmp_path).join()
    assert isinstance(result, RegistryError) and "PERMISSION_DENIED" in str(result)
    assert registry.calls == 1


FAST_RENEWAL = LeaseTiming(ttl=2, renew_margin=60, retry=0.05)  # renews at half-life: 1 s


def test_renewal_retries_an_unreachable_store(running, tmp_path):
    registry = FlakyRegistry("update_lease", RegistryUnavailable("etcd at x: UNAVAILABLE"))
    run = running(registry, tmp_path, timing=FAST_RENEWAL)
    run.wait_ready()
    first = run.daemon.lease
    wait_until(lambda: run.daemon.lease is not first, "a renewal")
    assert registry.calls == 2 and run.thread.is_alive()
    assert run.daemon.lease.expiration > first.expiration


def test_refused_renewal_ends_the_daemon(running, tmp_path):
    registry = FlakyRegistry("update_lease", RegistryError("etcd at x: PERMISSION_DENIED"))
    run = running(registry, tmp_path, timing=FAST_RENEWAL)
    result = run.join()
    assert isinstance(result, RegistryError) and registry.calls == 1


def test_new_attrs_from_the_backend_are_republished_until_etcd_takes_them(running, tmp_path):
    """The backend says our attrs changed (its repair pass saw the PublicIP move): the daemon
    puts them in our lease, and keeps them to retry while etcd is away."""
    registry = FlakyRegistry("update_lease")
    run = running(registry, tmp_path)
    run.wait_ready()
    own = run.daemon.lease.subnet
    moved = LeaseAttrs(IPv4Address("192.0.2.77"))
    offered = [moved]  # offered once, as a backend does
    registry.errors = [RegistryUnavailable("etcd at x: UNAVAILABLE")]
    run.daemon.backend.changed_lease_attrs = lambda: offered.pop() if offered else None
    wait_until(lambda: registry.get_lease(own).attrs == moved, "the republished lease")
    assert registry.errors == [] and registry.calls == 2  # refused once, then retried
    assert run.daemon.lease.attrs == moved and run.daemon.unpublished is None
    assert run.daemon.peers.policy.own_public_ip == moved.public_ip  # no peer may claim it


class Recording:
    """Wraps the backend's handle() to keep every removal PeerSync handed it."""

    def __init__(self, daemon: Daemon) -> None:
        self.removed: list[IPv4Network] = []
        self._apply = daemon.peers.apply
        daemon.peers.apply = self

    def __call__(self, changes) -> None:
        self.removed += changes.removed
        self._apply(changes)


def running_with_a_peer(running, tmp_path, peer_removal_grace: float):
    """A ready daemon with the peer programmed and, from before the peer, its batches recorded.

    Returns (registry, run, record, the peer's subnet).
    """
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path, peer_removal_grace=peer_removal_grace)
    run.wait_ready()
    record = Recording(run.daemon)
    return registry, run, record, program_peer(registry, run).subnet


def test_a_peer_that_comes_back_within_the_grace_is_never_unprogrammed(running, tmp_path):
    registry, run, record, peer = running_with_a_peer(running, tmp_path, 3600)
    registry.delete_lease(peer)
    wait_until(lambda: run.daemon.status().peer_sync.pending_removal == (str(peer),),
               "the removal to be deferred")
    registry.create_lease(peer, PEER, ttl=60)
    wait_until(lambda: run.daemon.status().peer_sync.cancelled == 1, "the cancel")
    assert record.removed == [] and peer in run.daemon.backend.peers


def test_a_peer_removal_waits_for_the_grace_and_the_store(running, tmp_path):
    """Once the grace has run out the store is asked: present -> kept, absent -> removed."""
    registry, run, record, peer = running_with_a_peer(running, tmp_path, 0.2)
    registry.hold_watches()  # the deletion arrives, the re-create does not (a lagging watch)
    registry.delete_lease(peer)
    registry.create_lease(peer, PEER, ttl=60)
    run.daemon.events.put(LeaseEvents(removed=(Lease(peer, PEER),)))
    wait_until(lambda: run.daemon.status().peer_sync.deferred == 1, "the deferral")
    wait_until(lambda: run.daemon.status().peer_sync.pending_removal == (),
               "the store to be asked")
    assert record.removed == [] and peer in run.daemon.backend.peers  # still in the store
    registry.release_watches()
    registry.delete_lease(peer)
    wait_until(lambda: record.removed == [peer], "the removal")
    assert peer not in run.daemon.backend.peers


def test_etcd_outage_is_visible_and_readiness_follows_the_lease(running, tmp_path, caplog):
    """Unreachable: status/metrics say so at once; readiness ends only when renewal fails
    inside the renew margin, and comes back with the store, with one summary line."""
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path, timing=FAST_RENEWAL)
    run.wait_ready()
    server = HealthServer("127.0.0.1", 0, run.daemon.status)
    registry.set_reachable(False)
    status = run.daemon.status()
    assert status.etcd.up is False and status.etcd.watch == "reconnecting"
    wait_until(lambda: server.respond("/readyz")[0] == 503, "not ready once renewal fails")
    body = server.respond("/readyz")[2]
    assert "renewing lease" in body and "has failed" in body
    metrics = server.respond("/metrics")[2]
    assert "weft_etcd_up 0" in metrics and "weft_watch_up 0" in metrics
    failures = run.daemon.status().lease_keeper.renew_failures
    assert failures >= 1 and f"weft_lease_renew_failures_total {failures}" in metrics
    text = format_status(run.daemon.status())
    assert "etcd:      unreachable since" in text and "watch:     reconnecting" in text
    wait_until(lambda: run.daemon.status().etcd.retries >= 8, "several retries")
    registry.set_reachable(True)
    wait_until(lambda: server.respond("/readyz")[0] == 200, "ready again")
    metrics = server.respond("/metrics")[2]
    assert "weft_etcd_up 1" in metrics and "weft_watch_restarts_total 1" in metrics
    assert caplog.text.count("etcd reachable again after") == 1
    retries = run.daemon.status().lease_keeper.renew_failures
    # rate-limited: one line per doubling of the retry count, not one per retry
    assert caplog.text.count("unreachable") <= 2 + retries.bit_length() + 1
    assert run.thread.is_alive()


def test_an_outage_past_the_ttl_keeps_our_subnet_and_the_peer(running, tmp_path, caplog):
    """The issue's scenario on MemoryRegistry: the store comes back after our lease and the
    peer's expired; etcd deletes both. We put ours back, the peer puts its own back, and the
    peer is never unprogrammed; nobody exits."""
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path, timing=FAST_RENEWAL, peer_removal_grace=3600)
    run.wait_ready()
    own = run.daemon.lease.subnet
    record = Recording(run.daemon)
    peer_lease = program_peer(registry, run, ttl=FAST_RENEWAL.ttl)
    peer = peer_lease.subnet
    registry.set_reachable(False)
    expiry = max(registry._entries[own].lease.expiration, peer_lease.expiration)
    wait_until(lambda: time.time() > expiry, "both leases to run out in the outage")
    registry.set_reachable(True)  # etcd deletes both: events for both
    assert registry.get_lease(peer) is None
    registry.create_lease(peer, PEER, ttl=60)  # the peer host puts its own back
    wait_until(lambda: run.daemon.status().lease_keeper.recreated == 1, "our re-create")
    wait_until(lambda: run.daemon.status().peer_sync.cancelled == 1, "the peer back")
    assert record.removed == [] and run.thread.is_alive()
    assert registry.get_lease(own).attrs.public_ip == IPv4Address("192.0.2.10")
    assert daemon_module.REVOKED not in caplog.text


def test_a_stop_ends_the_loop_at_once_not_at_its_next_timeout(running, tmp_path):
    # The loop sleeps on its event queue up to 0.5 s a turn; stop() (a signal handler's
    # call) must wake it: SIGTERM to exit is what a restart waits for.
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    time.sleep(0.05)  # the loop is asleep in its wait now
    asked = time.monotonic()
    run.daemon.stop()
    assert run.join() == 0
    assert time.monotonic() - asked < 0.2
