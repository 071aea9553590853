"""`weft run`'s loop in-process, on MemoryRegistry and the alloc backend (no etcd, no root)."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft import daemon as daemon_module
from weft.control.lease import LeaseAttrs
from weft.control.lease_manager import LeaseTiming
from weft.control.memory_registry import MemoryRegistry
from weft.control.registry import RegistryError, RegistryUnavailable
from weft.daemon import Daemon, RunOptions
from weft.observe.http import HealthServer

NETWORK = '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}'
PEER = LeaseAttrs(IPv4Address("192.0.2.99"))
WAIT = 15.0  # upper bound for conditions that hold long before


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Running:
    """A Daemon on its own thread; `result` is run()'s return value or exception."""

    def __init__(self, registry, tmp_path, timing: LeaseTiming | None = None) -> None:
        options = RunOptions(iface="lo", public_ip=IPv4Address("192.0.2.10"),
                             subnet_file=str(tmp_path / "subnet.env"),
                             timing=timing or LeaseTiming(ttl=3600, renew_margin=600))
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
    run = running(registry, tmp_path)
    run.wait_ready()
    own = run.daemon.lease.subnet
    peer = IPv4Network("10.1.200.0/24")
    registry.create_lease(peer, PEER, ttl=60)
    wait_until(lambda: peer in run.daemon.backend.peers, "the peer to be programmed")
    registry.delete_lease(peer)
    wait_until(lambda: peer not in run.daemon.backend.peers, "the peer to be removed")
    assert own not in run.daemon.backend.peers  # we never route to ourselves
    run.daemon.stop()
    assert run.join() == 0
    assert [lease.subnet for lease in registry.list_leases()[0]] == [own]


def test_losing_our_lease_ends_the_daemon(running, tmp_path, caplog):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    registry.delete_lease(run.daemon.lease.subnet)
    assert run.join() == 1
    assert daemon_module.REVOKED in caplog.text


def test_a_failed_watch_ends_the_daemon_and_readiness(running, tmp_path, caplog):
    registry = MemoryRegistry(NETWORK)
    run = running(registry, tmp_path)
    run.wait_ready()
    registry.fail_watches(PermissionError("etcdserver: permission denied"))
    assert run.join() == 1
    status = run.daemon.status()
    assert status["ready"] is False
    assert status["reason"] == "lease watch failed: PermissionError: etcdserver: permission denied"
    assert "lease watch failed: PermissionError" in caplog.text
    code, _, body = HealthServer("127.0.0.1", 0, run.daemon.status).respond("/readyz")
    assert code == 503 and body.startswith("not ready: lease watch failed")


def test_a_dead_watch_is_never_ready(tmp_path):
    daemon = Daemon(MemoryRegistry(NETWORK), RunOptions())
    daemon.ready.set()
    assert daemon.status()["ready"] is True
    daemon.watch_error = RuntimeError("watch thread died")
    assert daemon.status()["ready"] is False


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
