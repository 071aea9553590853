"""MemoryRegistry: the shared registry contract, plus what only an injectable clock can show."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from registry_contract import ATTRS, Batches, RegistryContract

from weft.control.lease import LeaseAttrs
from weft.control.memory_registry import ManualClock, MemoryRegistry
from weft.control.registry import RegistryError

A = IPv4Network("10.1.1.0/24")
B = IPv4Network("10.1.2.0/24")


class TestMemoryRegistryContract(RegistryContract):
    @pytest.fixture
    def reg(self):
        return MemoryRegistry()

    def compact(self, reg, revision: int) -> None:
        reg.compact(revision)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def reg(clock):
    return MemoryRegistry('{"Network":"10.1.0.0/16"}', clock=clock)


def test_lease_expires_on_the_clock_and_watchers_see_the_removal(reg, clock):
    reg.create_lease(A, ATTRS, ttl=30)
    _, revision = reg.list_leases()
    batches = Batches()
    stop = reg.watch_leases(revision, batches.deliver, batches.on_error)
    clock.advance(29.9)
    assert [lease.subnet for lease in reg.list_leases()[0]] == [A]  # a moment before its TTL
    clock.advance(0.1)
    leases, after = reg.list_leases()
    stop()
    assert leases == [] and after == revision + 1  # the expiry is a change at its own revision
    assert batches.changes() == [("-", A)] and batches.items[0].revision == after
    assert reg.create_lease(A, LeaseAttrs(IPv4Address("192.0.2.9")), ttl=30) is not None


def test_renewal_moves_the_expiry_and_the_old_lease_id_holds_nothing(reg, clock):
    lease = reg.create_lease(A, ATTRS, ttl=30)
    clock.advance(20)
    renewed = reg.update_lease(A, ATTRS, ttl=30, old_lease_id=lease.etcd_lease_id)
    assert renewed.expiration == clock() + 30
    clock.advance(20)  # past the first TTL, within the renewed one
    assert reg.expire() == 0
    assert [item.etcd_lease_id for item in reg.list_leases()[0]] == [renewed.etcd_lease_id]
    clock.advance(10)
    assert reg.expire() == 1


def test_listed_leases_carry_their_expiry(reg, clock):
    reg.create_lease(A, ATTRS, ttl=100)
    clock.advance(40)
    (lease,), _ = reg.list_leases()
    assert lease.expiration - clock() == 60


def test_stopped_watch_gets_nothing_more(reg):
    """Delivery is synchronous: once create_lease returns, every live watch has its batch."""
    _, revision = reg.list_leases()
    stopped, live = Batches(), Batches()
    stop = reg.watch_leases(revision, stopped.deliver)
    reg.watch_leases(revision, live.deliver)
    reg.create_lease(A, ATTRS, ttl=30)
    stop()
    reg.create_lease(B, ATTRS, ttl=30)
    assert live.added() == [A, B]
    assert stopped.added() == [A]


def test_fail_watches_reports_to_every_watch(reg):
    first, second = Batches(), Batches()
    reg.watch_leases(0, first.deliver, first.on_error)
    reg.watch_leases(0, second.deliver, second.on_error)
    denied = PermissionError("etcdserver: permission denied")
    reg.fail_watches(denied)
    reg.create_lease(A, ATTRS, ttl=30)
    assert first.errors == [denied] and second.errors == [denied]
    assert first.items == [] and second.items == []


def test_bad_ttl_and_future_compaction_are_refused(reg):
    with pytest.raises(RegistryError, match="TTL must be positive"):
        reg.create_lease(A, ATTRS, ttl=0)
    with pytest.raises(RegistryError, match="future revision"):
        reg.compact(reg.list_leases()[1] + 1)
