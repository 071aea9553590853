"""Which subnets are our peers, and feeding the backend their changes, with removals deferred
by a grace period.

PeerSync is the one owner of peer membership: it takes the store's events (watch batches and
full re-listings), judges them, and hands the backend only what changed (`PeerChanges`: leases
to program, subnets to unprogram), never a listing to diff. The backend keeps what it has put
in the kernel (backends/peers.py), the data path its table; neither decides who is a peer.

After an etcd outage longer than the lease TTL, etcd deletes every lease that expired while it
was away, and each host puts its own back as soon as it sees the deletion. Unprogramming a peer
on the deletion would drop its traffic for that moment. So a removal (or a peer missing from a
re-list) only marks the peer; an add for the same subnet within `grace` seconds cancels it, and
when the grace has run out the store is asked whether the subnet is still absent before the
peer is unprogrammed. A peer whose subnet another host took is replaced at once (that is an
add). Our own subnet never reaches the backend: we do not route to ourselves.

Every lease passes the policy (lease_policy) before it reaches the backend: a refused one is
never programmed, and a peer whose lease turns refusable (its value rewritten to something no
host may publish) is removed at once, not after the grace: that is no outage to ride out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from weft.control.lease import Lease
from weft.control.lease_policy import LeasePolicy
from weft.control.registry import LeaseEvents, LeaseRegistry, RegistryUnavailable
from weft.status import PeerSyncStatus

log = logging.getLogger(__name__)

# Longer than the watch's longest reconnect backoff (5 s) plus a renewal round trip, so a peer
# that re-creates its key when it sees the deletion is back well before the grace runs out.
REMOVAL_GRACE = 10.0


@dataclass(frozen=True)
class PeerChanges:
    """What the backend is told: peers to program (new ones, and changed ones, programmed over
    the old lease) and subnets that are no longer peers."""

    added: tuple[Lease, ...] = ()
    removed: tuple[IPv4Network, ...] = ()


class PeerSync:
    def __init__(self, policy: LeasePolicy, apply: Callable[[PeerChanges], None],
                 grace: float = REMOVAL_GRACE, clock: Callable[[], float] = time.monotonic) -> None:
        assert policy.own_subnet is not None, "peers are judged against our own lease"
        self.policy = policy
        self.own = policy.own_subnet
        self.apply = apply  # the backend's handle()
        self.grace = grace
        self.clock = clock
        self.known: set[IPv4Network] = set()  # our peers: subnets handed to the backend
        # their IPv6 halves, which name their keys in the store together with the subnet
        self.ipv6_halves: dict[IPv4Network, IPv6Network] = {}
        self.pending: dict[IPv4Network, float] = {}  # subnet -> when its grace runs out
        self.deferred = 0  # removals that waited for the grace (a counter)
        self.cancelled = 0  # ... and were cancelled by the peer coming back

    def handle(self, batch: LeaseEvents) -> None:
        added, refused = [], set()
        for lease in batch.added:
            if lease.subnet == self.own:
                continue
            if self.policy.admit(lease, as_peer=True):
                added.append(lease)
            else:
                refused.add(lease.subnet)
        refused -= {lease.subnet for lease in added}  # a later good event in the batch wins
        self._remove_now(refused & self.known)
        gone = {lease.subnet for lease in batch.removed if lease.subnet != self.own}
        if batch.reset:
            gone |= self.known - {lease.subnet for lease in added}
        for lease in added:
            gone.discard(lease.subnet)
            if self.pending.pop(lease.subnet, None) is not None:
                self.cancelled += 1
                log.info("peer %s is back within the grace period: kept", lease.subnet)
        deadline = self.clock() + self.grace
        for subnet in gone:
            if subnet in self.known and subnet not in self.pending:
                self.pending[subnet] = deadline
                self.deferred += 1
                log.info("peer %s's lease is gone; removing it in %.0fs unless it comes back",
                         subnet, self.grace)
        if added:
            self.known |= {lease.subnet for lease in added}
            for lease in added:
                if lease.ipv6_subnet is not None:
                    self.ipv6_halves[lease.subnet] = lease.ipv6_subnet
                else:
                    self.ipv6_halves.pop(lease.subnet, None)
            self.apply(PeerChanges(added=tuple(added)))

    def _remove_now(self, subnets: set[IPv4Network]) -> None:
        for subnet in subnets:
            self.pending.pop(subnet, None)
            self.known.discard(subnet)
            log.warning("peer %s's lease is refused now: removing it", subnet)
        if subnets:
            self.apply(PeerChanges(removed=tuple(sorted(subnets))))

    def next_due(self) -> float | None:
        return min(self.pending.values(), default=None)

    def confirm_due(self, registry: LeaseRegistry) -> None:
        """Unprogram each peer whose grace ran out and whose subnet the store still lacks.

        The backend gets one round for all of them: after a long outage that may be many.
        """
        now = self.clock()
        kept: list[Lease] = []
        gone: list[IPv4Network] = []
        for subnet in [s for s, due in self.pending.items() if due <= now]:
            try:
                current = registry.get_lease(subnet, self.ipv6_halves.get(subnet))
            except RegistryUnavailable:
                # Unknown is not absent: keep the peer and ask again after another grace.
                self.pending[subnet] = now + self.grace
                continue
            del self.pending[subnet]
            if current is not None and self.policy.admit(current, as_peer=True):
                log.info("peer %s is still in the store: kept", subnet)
                kept.append(current)  # reprogrammed only if it changed
                continue
            self.known.discard(subnet)
            gone.append(subnet)
        if kept or gone:
            self.apply(PeerChanges(added=tuple(kept), removed=tuple(gone)))

    def status(self) -> PeerSyncStatus:
        return PeerSyncStatus(pending_removal=tuple(sorted(map(str, self.pending))),
                              deferred=self.deferred, cancelled=self.cancelled, grace=self.grace)
