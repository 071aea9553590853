"""The behaviour every LeaseRegistry must share, run against each implementation.

tests/unit runs it on MemoryRegistry and tests/etcd on a real etcd server, so the in-memory
registry the fast tests rely on cannot drift from etcd. A subclass provides the `reg` fixture
and `compact()`. This module sits next to tests/conftest.py, whose folder pytest puts on the
import path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.control.lease import LeaseAttrs
from weft.control.registry import ConfigNotFound, LeaseEvents, LeaseTaken

A = IPv4Network("10.1.1.0/24")
B = IPv4Network("10.1.2.0/24")
C = IPv4Network("10.1.3.0/24")
ATTRS = LeaseAttrs(IPv4Address("192.0.2.1"), backend_type="vxlan",
                   backend_data={"VNI": 1, "VtepMAC": "7e:81:33:71:e9:51"})
OTHER = LeaseAttrs(IPv4Address("192.0.2.2"))
WAIT = 15.0  # an upper bound for a watch event to arrive; passing tests never wait this long


class Batches:
    """Collects watch batches (from any thread) and waits for a condition on them."""

    def __init__(self) -> None:
        self.items: list[LeaseEvents] = []
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()

    def deliver(self, batch: LeaseEvents) -> None:
        with self._cond:
            self.items.append(batch)
            self._cond.notify_all()

    def on_error(self, exc: BaseException) -> None:
        with self._cond:
            self.errors.append(exc)
            self._cond.notify_all()

    def wait_for(self, condition: Callable[[Batches], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def added(self) -> list[IPv4Network]:
        return [lease.subnet for batch in self.items for lease in batch.added]

    def removed(self) -> list[IPv4Network]:
        return [lease.subnet for batch in self.items for lease in batch.removed]

    def changes(self) -> list[tuple[str, IPv4Network]]:
        """("+"/"-", subnet) in delivery order, as a consumer applies them."""
        return [(sign, lease.subnet) for batch in self.items
                for sign, leases in (("+", batch.added), ("-", batch.removed))
                for lease in leases]


class RegistryContract:
    @pytest.fixture
    def reg(self):
        raise NotImplementedError

    def compact(self, reg, revision: int) -> None:
        raise NotImplementedError

    def test_config_missing_then_put(self, reg):
        with pytest.raises(ConfigNotFound, match="Did you create your config using etcdv3 API"):
            reg.get_network_config()
        reg.put_network_config('{"Network":"10.1.0.0/16"}')
        assert str(reg.get_network_config().network) == "10.1.0.0/16"

    def test_create_is_create_if_absent(self, reg):
        _, start = reg.list_leases()
        lease = reg.create_lease(A, ATTRS, ttl=60)
        assert lease is not None and lease.subnet == A and lease.attrs == ATTRS
        assert lease.etcd_lease_id != 0
        assert abs(lease.expiration - (reg_now(reg) + 60)) < 5
        assert reg.create_lease(A, OTHER, ttl=60) is None  # held: the value stays ours
        leases, revision = reg.list_leases()
        assert [(item.subnet, item.attrs) for item in leases] == [(A, ATTRS)]
        assert revision > start

    def test_update_renews_with_a_new_lease_id(self, reg):
        first = reg.create_lease(A, ATTRS, ttl=60)
        renewed = reg.update_lease(A, OTHER, ttl=120, old_lease_id=first.etcd_lease_id)
        assert renewed.etcd_lease_id not in (0, first.etcd_lease_id)
        assert renewed.expiration > first.expiration
        assert [(item.subnet, item.attrs) for item in reg.list_leases()[0]] == [(A, OTHER)]
        assert reg.create_lease(A, ATTRS, ttl=60) is None

    def test_get_lease_reads_the_key_now(self, reg):
        assert reg.get_lease(A) is None
        lease = reg.create_lease(A, ATTRS, ttl=60)
        got = reg.get_lease(A)
        assert (got.subnet, got.attrs, got.etcd_lease_id) == (A, ATTRS, lease.etcd_lease_id)

    def test_renewal_never_overwrites_another_hosts_lease(self, reg):
        mine = reg.create_lease(A, ATTRS, ttl=60)
        reg.delete_lease(A)  # our lease expired...
        theirs = reg.create_lease(A, OTHER, ttl=60)  # ...and another host took the subnet
        with pytest.raises(LeaseTaken, match="held by PublicIP 192.0.2.2") as taken:
            reg.update_lease(A, ATTRS, ttl=60, old_lease_id=mine.etcd_lease_id)
        assert taken.value.holder == OTHER
        got = reg.get_lease(A)
        assert (got.attrs, got.etcd_lease_id) == (OTHER, theirs.etcd_lease_id)

    def test_renewal_puts_back_a_key_that_expired(self, reg):
        mine = reg.create_lease(A, ATTRS, ttl=60)
        reg.delete_lease(A)
        renewed = reg.update_lease(A, ATTRS, ttl=60, old_lease_id=mine.etcd_lease_id)
        assert reg.get_lease(A).etcd_lease_id == renewed.etcd_lease_id

    def test_renewal_by_public_ip_when_the_lease_id_is_unknown(self, reg):
        """A renewal whose reply was lost attached the key to an etcd lease we never learnt;
        our PublicIP on the key still makes it ours."""
        reg.create_lease(A, ATTRS, ttl=60)
        renewed = reg.update_lease(A, ATTRS, ttl=60, old_lease_id=12345)
        assert reg.get_lease(A).etcd_lease_id == renewed.etcd_lease_id

    def test_delete_frees_the_subnet(self, reg):
        reg.create_lease(A, ATTRS, ttl=60)
        reg.delete_lease(A)
        reg.delete_lease(B)  # deleting a lease nobody holds is not an error
        assert reg.list_leases()[0] == []
        assert reg.create_lease(A, OTHER, ttl=60) is not None

    def test_watch_from_a_listed_revision_sees_only_later_changes(self, reg):
        reg.create_lease(A, ATTRS, ttl=60)
        _, revision = reg.list_leases()
        batches = Batches()
        stop = reg.watch_leases(revision, batches.deliver, batches.on_error)
        try:
            reg.create_lease(B, OTHER, ttl=60)
            reg.delete_lease(A)
            reg.create_lease(C, OTHER, ttl=60)
            assert batches.wait_for(lambda b: ("+", C) in b.changes()), batches.items
        finally:
            stop()
        # etcd may put several changes in one batch, and a batch keeps no order between its
        # adds and removes; so: each change exactly once, nothing from before `revision`.
        assert sorted(batches.added()) == [B, C] and batches.removed() == [A]
        assert all(not batch.reset for batch in batches.items)
        revisions = [batch.revision for batch in batches.items]
        assert revisions == sorted(revisions) and revisions[0] > revision
        assert batches.errors == []

    def test_watch_replays_history_since_its_revision(self, reg):
        _, revision = reg.list_leases()
        reg.create_lease(A, ATTRS, ttl=60)
        reg.delete_lease(A)
        batches = Batches()
        stop = reg.watch_leases(revision, batches.deliver, batches.on_error)
        try:
            assert batches.wait_for(lambda b: ("-", A) in b.changes()), batches.items
        finally:
            stop()
        assert batches.changes() == [("+", A), ("-", A)]

    def test_watch_behind_compaction_relists_then_resumes(self, reg):
        reg.create_lease(A, ATTRS, ttl=60)
        _, old = reg.list_leases()
        reg.create_lease(B, ATTRS, ttl=60)
        reg.delete_lease(A)
        _, now = reg.list_leases()
        self.compact(reg, now)
        batches = Batches()
        stop = reg.watch_leases(old, batches.deliver, batches.on_error)
        try:
            assert batches.wait_for(lambda b: len(b.items) >= 1), "no re-list"
            reg.create_lease(C, ATTRS, ttl=60)
            assert batches.wait_for(lambda b: C in b.added()), batches.items
        finally:
            stop()
        first, *rest = batches.items
        assert first.reset and [lease.subnet for lease in first.added] == [B]
        assert [(batch.reset, batch.added[0].subnet) for batch in rest] == [(False, C)]

    def test_an_error_in_deliver_ends_the_watch_and_is_reported(self, reg):
        """A bug on the receiving side is not swallowed: the watch owner hears of it."""
        failures: list[BaseException] = []
        reported = threading.Event()
        bug = TypeError("deliver bug")

        def deliver(batch: LeaseEvents) -> None:
            raise bug

        def on_error(exc: BaseException) -> None:
            failures.append(exc)
            reported.set()

        _, revision = reg.list_leases()
        stop = reg.watch_leases(revision, deliver, on_error)
        try:
            reg.create_lease(A, ATTRS, ttl=60)
            assert reported.wait(WAIT), "the deliver error was swallowed"
        finally:
            stop()
        assert failures == [bug]


def reg_now(reg) -> float:
    """The registry's clock where it has one (MemoryRegistry), else wall time."""
    clock = getattr(reg, "clock", None)
    return clock() if callable(clock) else time.time()
