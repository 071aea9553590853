"""Keeping our subnet lease while `weft run` runs: renewals, checks of our key, and the counts.

Two duties, both driven by `tick()` from the daemon's loop:
- renew at `LeaseTiming.renew_at`; a store that does not answer is retried every
  `LeaseTiming.retry` seconds;
- check our key against the store (`reclaim_lease`) when a watch event touched it, and every
  `check_interval` seconds anyway: the check re-creates a key that expired or was deleted while
  the subnet is free, and it is how an outage that leaves the watch stream open and silent (a
  frozen etcd) gets noticed at all.
A lease another host now holds raises LeaseTaken out of `tick()`; nothing else does, except
errors the store will not cure by retrying (permission denied), which the daemon ends on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from weft.control.lease import Lease
from weft.control.lease_manager import RECREATED, LeaseTiming, reclaim_lease, renew_lease
from weft.control.registry import LeaseEvents, LeaseRegistry, RegistryUnavailable
from weft.status import KeeperStatus

log = logging.getLogger(__name__)

CHECK_INTERVAL = 10.0  # seconds between checks of our key when nothing else touched the store


class LeaseKeeper:
    def __init__(self, registry: LeaseRegistry, lease: Lease, timing: LeaseTiming,
                 check_interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.lease = lease
        self.timing = timing
        self.check_interval = check_interval
        self.clock = clock
        now = clock()
        self.renew_at = timing.renew_at(lease.expiration or now + timing.ttl)
        self.check_at = now + check_interval
        self.renewals = 0
        self.checks = 0  # answered checks of our key
        self.renew_failures = 0  # failed renewal attempts, ever (a counter)
        self.renew_failing_since: float | None = None  # set while renewals keep failing
        self.recreated = 0  # our key was gone and we put it back

    # -- what the loop calls --------------------------------------------------------------
    def touched_by(self, batch: LeaseEvents) -> bool:
        """Whether a watch batch says something about our key that needs a look at the store:
        a removal, another host's value, or a re-list without it. Our own puts are not news."""
        own = self.lease.subnet
        if batch.reset and not any(lease.subnet == own for lease in batch.added):
            return True
        if any(lease.subnet == own for lease in batch.removed):
            return True
        return any(lease.subnet == own and lease.attrs.public_ip != self.lease.attrs.public_ip
                   for lease in batch.added)

    def check_soon(self) -> None:
        self.check_at = min(self.check_at, self.clock())

    def next_due(self) -> float:
        return min(self.renew_at, self.check_at)

    def tick(self) -> None:
        """Renew or check when due; LeaseTaken if another host holds our subnet."""
        # The check goes first: after an outage it tells a re-created key from a renewed one.
        if self.clock() >= self.check_at and not self._check():
            return  # the store does not answer: renewing now would fail the same way
        if self.clock() >= self.renew_at:
            self._renew()

    # -- readiness and status ---------------------------------------------------------------
    def at_risk(self) -> str | None:
        """Why the lease is no longer safe (renewals failing inside the renew margin), or None."""
        now = self.clock()
        expires = self.lease.expiration
        if expires is not None and expires <= now:
            return f"lease {self.lease.subnet} expired {now - expires:.0f}s ago"
        if self.renew_failing_since is not None:
            left = "unknown" if expires is None else f"{expires - now:.0f}s"
            return (f"renewing lease {self.lease.subnet} has failed for "
                    f"{now - self.renew_failing_since:.0f}s; it expires in {left}")
        return None

    def status(self) -> KeeperStatus:
        return KeeperStatus(renewals=self.renewals, checks=self.checks,
                            renew_failures=self.renew_failures,
                            renew_failing_since=self.renew_failing_since,
                            recreated=self.recreated, next_renewal=self.renew_at)

    # -- the work -----------------------------------------------------------------------------
    def _renew(self) -> None:
        try:
            self.lease = renew_lease(self.registry, self.lease, self.timing)
        except RegistryUnavailable as exc:  # anything else ends the daemon
            self.renew_failures += 1
            if self.renew_failing_since is None:  # once per streak; the store's health logs on
                self.renew_failing_since = self.clock()
                log.warning("renewing lease %s failed: %s; retrying every %.0fs",
                            self.lease.subnet, exc, self.timing.retry)
            self.renew_at = self.clock() + self.timing.retry
            return
        self.renewals += 1
        self.renew_failing_since = None
        self._scheduled()

    def _check(self) -> bool:
        """False when the store did not answer."""
        try:
            result = reclaim_lease(self.registry, self.lease, self.timing)
        except RegistryUnavailable as exc:  # the store's health logs it
            log.debug("checking lease %s failed: %s", self.lease.subnet, exc)
            self.check_at = self.clock() + min(self.timing.retry, self.check_interval)
            return False
        self.checks += 1
        if result.lease is not self.lease:
            self.lease = result.lease
            self.renew_failing_since = None
            self._scheduled()
        if result.outcome == RECREATED:
            self.recreated += 1
        if self.renew_failing_since is not None:
            self.renew_at = min(self.renew_at, self.clock())  # the store is back: renew now
        self.check_at = self.clock() + self.check_interval
        return True

    def _scheduled(self) -> None:
        now = self.clock()
        self.renew_at = self.timing.renew_at(self.lease.expiration or now + self.timing.ttl)
        self.check_at = now + self.check_interval
