"""An in-memory LeaseRegistry with etcd's semantics, for fast tests and offline tools.

What it keeps from etcd, because the lease logic depends on it:
- one store revision, bumped by every change (put, delete, expiry);
- create-if-absent (etcd's Txn on Version == 0): `create_lease` on a held subnet returns None;
- a TTL per lease, measured on an injectable clock; an expired lease is deleted (at a new
  revision, with a delete event) when the registry is next used or `expire()` is called;
- renewal grants a new lease id and revokes the old one, as EtcdRegistry does, and is
  conditional: it puts the key back when it is absent, renews it while it is ours, and raises
  LeaseTaken when another host holds it;
- an outage (`set_reachable(False)`): every call raises RegistryUnavailable and is reported to
  `health`, watch batches are held back and delivered in order when the store is back, as an
  etcd watch resumes from its revision;
- watches replay history from `revision`+1, deliver adds and removes in revision order, and
  re-list (a `reset` batch) when asked to start before a compaction.

Watch batches are delivered synchronously, in the thread that made the change, one batch per
revision; so a test sees every event as soon as the call that caused it returns. `hold_watches()`
and `release_watches()` delay them, to make a watch lag behind the store as a real one can.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from weft.control.config import NetworkConfig, parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_policy import LeaseRejections
from weft.control.registry import (
    ConfigNotFound,
    LeaseEvents,
    LeaseTaken,
    RegistryError,
    RegistryUnavailable,
    is_ours,
)
from weft.control.store_health import StoreHealth

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_UNREACHABLE = "UNAVAILABLE: connection refused"


class ManualClock:
    """A clock that moves only when told to: TTLs expire without waiting."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class _Entry:
    lease: Lease  # as stored: attrs, expiration and etcd lease id
    mod_revision: int


@dataclass(frozen=True)
class _Event:
    revision: int
    lease: Lease
    removed: bool


@dataclass
class _Watcher:
    deliver: Callable[[LeaseEvents], None]
    on_error: Callable[[BaseException], None] | None


class MemoryRegistry:
    def __init__(self, config: str | None = None, clock: Clock = time.time) -> None:
        self.clock = clock
        self.revision = 1  # etcd's first revision after start is 1
        self.compacted = 0  # history at or below this revision is gone
        self._config: str | None = config
        self._entries: dict[IPv4Network, _Entry] = {}
        self._history: list[_Event] = []
        self._watchers: dict[int, _Watcher] = {}
        self._ids = itertools.count(0x7A000001)  # etcd lease ids are opaque non-zero ints
        self._watch_ids = itertools.count(1)
        self._lock = threading.RLock()  # re-entrant: a deliver callback may call back in
        self.health = StoreHealth(clock)
        self.rejections = LeaseRejections()  # leases are stored decoded: none refused here
        self.reachable = True
        self._held: list[tuple[int, LeaseEvents]] | None = None  # batches not delivered yet

    # -- outages ------------------------------------------------------------------------------
    def set_reachable(self, reachable: bool) -> None:
        """Simulate the store going away and coming back (held watch batches then arrive)."""
        with self._lock:
            self.reachable = reachable
            if not reachable:
                # The watch stream ends and its first reconnect fails, as with a killed etcd.
                self.health.set_watch("reconnecting")
                self.health.failure("watch", _UNREACHABLE)
                self.hold_watches()
                return
            self.health.success()
            self.health.watch_restarted()
            self.health.set_watch("connected")
            self.expire()  # what ran out during the outage goes now, as etcd does on return
            self.release_watches()

    def hold_watches(self) -> None:
        with self._lock:
            if self._held is None:
                self._held = []

    def release_watches(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
            for watch_id, batch in held:
                watcher = self._watchers.get(watch_id)
                if watcher is not None:
                    self._send(watch_id, watcher, batch)

    def _check_reachable(self, what: str) -> None:
        if not self.reachable:
            self.health.failure(what, _UNREACHABLE)
            raise RegistryUnavailable(f"etcd at memory: {_UNREACHABLE}")

    # -- config -------------------------------------------------------------------------------
    def get_network_config(self) -> NetworkConfig:
        with self._lock:
            self._check_reachable("config")
            if self._config is None:
                raise ConfigNotFound()
            return parse_config(self._config)

    def put_network_config(self, text: str) -> None:
        with self._lock:
            self._config = text
            self.revision += 1

    # -- leases -------------------------------------------------------------------------------
    def list_leases(self) -> tuple[list[Lease], int]:
        with self._lock:
            self._check_reachable("list")
            self.expire()
            return [entry.lease for entry in self._entries.values()], self.revision

    def get_lease(self, subnet: IPv4Network,
                  ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        with self._lock:
            self._check_reachable("get")
            self.expire()
            entry = self._entries.get(subnet)
            if entry is None or entry.lease.ipv6_subnet != ipv6_subnet:
                return None  # another key in etcd
            return entry.lease

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        with self._lock:
            self._check_reachable("create")
            self.expire()
            if subnet in self._entries:
                return None
            return self._put(subnet, attrs, ttl, ipv6_subnet)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
                     old_lease_id: int = 0, ipv6_subnet: IPv6Network | None = None) -> Lease:
        with self._lock:
            self._check_reachable("renew")
            self.expire()
            entry = self._entries.get(subnet)
            if entry is not None and not is_ours(entry.lease, attrs, old_lease_id):
                raise LeaseTaken(subnet, entry.lease.attrs)
            # the old lease id is now attached to nothing
            return self._put(subnet, attrs, ttl, ipv6_subnet)

    def put_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int) -> Lease:
        """A blind put, as etcdctl or a flanneld renewal makes: no check of who holds the key."""
        with self._lock:
            self._check_reachable("put")
            self.expire()
            return self._put(subnet, attrs, ttl)

    def delete_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> None:
        with self._lock:
            self._check_reachable("delete")
            self.expire()
            entry = self._entries.pop(subnet, None)
            if entry is not None:  # etcd makes no revision for deleting a missing key
                self._record(entry.lease, removed=True)

    def expire(self) -> int:
        """Delete every lease whose TTL has run out on the clock; returns how many."""
        with self._lock:
            now = self.clock()
            gone = [entry for entry in self._entries.values()
                    if entry.lease.expiration is not None and entry.lease.expiration <= now]
            for entry in sorted(gone, key=lambda e: e.mod_revision):
                del self._entries[entry.lease.subnet]
                self._record(entry.lease, removed=True)
            return len(gone)

    def compact(self, revision: int) -> None:
        """Forget history up to `revision`, as etcd's compaction does."""
        with self._lock:
            if revision > self.revision:
                raise RegistryError(f"cannot compact to future revision {revision}")
            self.compacted = max(self.compacted, revision)
            self._history = [event for event in self._history if event.revision >= revision]

    def _put(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
             ipv6_subnet: IPv6Network | None = None) -> Lease:
        if ttl <= 0:
            raise RegistryError(f"etcd lease TTL must be positive, not {ttl}")
        lease = Lease(subnet, attrs, ipv6_subnet, expiration=self.clock() + ttl,
                      etcd_lease_id=next(self._ids))
        self._record(lease, removed=False)
        return lease

    def _record(self, lease: Lease, removed: bool) -> None:
        """Apply one change at a new revision, keep it in history and tell the watchers."""
        self.revision += 1
        if not removed:
            self._entries[lease.subnet] = _Entry(lease, self.revision)
        event = _Event(self.revision, lease, removed)
        self._history.append(event)
        for watch_id, watcher in list(self._watchers.items()):
            self._send(watch_id, watcher, _batch([event]))

    # -- watch --------------------------------------------------------------------------------
    def watch_leases(
        self,
        revision: int,
        deliver: Callable[[LeaseEvents], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Callable[[], None]:
        with self._lock:
            self.expire()
            self._check_reachable("watch")
            self.health.set_watch("connected")
            watch_id = next(self._watch_ids)
            watcher = _Watcher(deliver, on_error)
            self._watchers[watch_id] = watcher
            if revision + 1 < self.compacted:
                # Behind a compaction: the missed events are gone, so hand over the whole set.
                leases = tuple(entry.lease for entry in self._entries.values())
                self._send(watch_id, watcher, LeaseEvents(leases, reset=True,
                                                          revision=self.revision))
            else:
                for event in self._history:
                    if event.revision > revision:
                        self._send(watch_id, watcher, _batch([event]))

        def stop() -> None:
            with self._lock:
                self._watchers.pop(watch_id, None)

        return stop

    def _send(self, watch_id: int, watcher: _Watcher, batch: LeaseEvents) -> None:
        if watch_id not in self._watchers:
            return  # ended by an earlier failure in this same change
        if self._held is not None:
            self._held.append((watch_id, batch))
            return
        try:
            watcher.deliver(batch)
        except Exception as exc:  # noqa: BLE001 - not swallowed: the watch ends and reports it
            del self._watchers[watch_id]
            log.error("lease watch failed, not retrying: %s", exc, exc_info=exc)
            if watcher.on_error is not None:
                watcher.on_error(exc)

    def fail_watches(self, exc: BaseException) -> None:
        """End every watch with `exc`, as a non-retryable etcd error would (for tests)."""
        with self._lock:
            watchers, self._watchers = self._watchers, {}
        for watcher in watchers.values():
            log.error("lease watch failed, not retrying: %s", exc)
            if watcher.on_error is not None:
                watcher.on_error(exc)


def _batch(events: list[_Event]) -> LeaseEvents:
    added = tuple(event.lease for event in events if not event.removed)
    removed = tuple(event.lease for event in events if event.removed)
    return LeaseEvents(added, removed, revision=max(event.revision for event in events))
