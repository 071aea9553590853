"""Acquiring, renewing and reclaiming our subnet lease (flannel's local_manager, with bounded race
retries, and without dying when an outage let the lease expire)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import NamedTuple

from weft.control.allocator import choose_subnet
from weft.control.config import NetworkConfig
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_policy import LeasePolicy
from weft.control.registry import LeaseRegistry, LeaseTaken, is_ours

log = logging.getLogger(__name__)

DEFAULT_TTL = 24 * 3600  # flannel attaches every lease key to a 24 h etcd lease
RACE_ATTEMPTS = 10


class AcquireError(RuntimeError):
    pass


@dataclass(frozen=True)
class LeaseTiming:
    """TTL and renew timing; injectable so tests need not wait hours."""

    ttl: int = DEFAULT_TTL
    renew_margin: float = 60 * 60.0  # --subnet-lease-renew-margin, in seconds
    retry: float = 60.0  # after a failed renewal, as flannel

    def renew_at(self, expiration: float) -> float:
        # A margin as long as the TTL would renew in a loop: never renew before half-life.
        return expiration - min(self.renew_margin, self.ttl / 2)


class Acquired(NamedTuple):
    lease: Lease
    listed: list[Lease]  # every lease as listed when the subnet was chosen (ours not yet new)
    revision: int  # the store's revision of that listing: watch for changes after it


def acquire_lease(
    registry: LeaseRegistry,
    config: NetworkConfig,
    attrs: LeaseAttrs,
    previous: IPv4Network | None,
    timing: LeaseTiming,
    rng: random.Random | None = None,
    attempts: int = RACE_ATTEMPTS,
    previous_v6: IPv6Network | None = None,
) -> Acquired:
    """Take a subnet lease for `attrs.public_ip`, retrying with another subnet on a lost race.

    Also returns the listing the choice was made on: the daemon programs its peers from it and
    watches from its revision, instead of listing every host a second time.
    """
    rng = rng or random.Random()
    policy = LeasePolicy(config, registry.rejections)
    lost: set[IPv4Network] = set()
    for _ in range(attempts):
        leases, revision = registry.list_leases()
        choice = choose_subnet(config, leases, attrs.public_ip, previous, rng, frozenset(lost),
                               admit=policy.admit, previous_v6=previous_v6)
        for stale in choice.stale:
            log.info("deleting our lease %s: it no longer fits the network config", stale.subnet)
            registry.delete_lease(stale.subnet, stale.ipv6_subnet)
        v6 = f" and {choice.ipv6_subnet}" if choice.ipv6_subnet else ""
        if choice.reuse is not None:
            log.info("found lease %s%s for our PublicIP %s, reusing", choice.subnet, v6,
                     attrs.public_ip)
            lease = registry.update_lease(
                choice.subnet, attrs, timing.ttl, old_lease_id=choice.reuse.etcd_lease_id,
                ipv6_subnet=choice.ipv6_subnet,
            )
            return Acquired(lease, leases, revision)
        lease = registry.create_lease(choice.subnet, attrs, timing.ttl, choice.ipv6_subnet)
        if lease is not None:
            log.info("allocated lease %s%s", lease.subnet, v6)
            return Acquired(lease, leases, revision)
        log.info("another host took %s first; choosing another subnet", choice.subnet)
        lost.add(choice.subnet)
    raise AcquireError(
        f"could not acquire a subnet lease: lost the race for {attempts} subnets in a row "
        f"({', '.join(map(str, sorted(lost)))}); too many hosts starting at once?"
    )


def renew_lease(registry: LeaseRegistry, lease: Lease, timing: LeaseTiming) -> Lease:
    """Renew in place; LeaseTaken when another host holds the subnet now."""
    renewed = registry.update_lease(
        lease.subnet, lease.attrs, timing.ttl, old_lease_id=lease.etcd_lease_id,
        ipv6_subnet=lease.ipv6_subnet,
    )
    log.info("renewed lease %s for %ds", lease.subnet, timing.ttl)
    return renewed


KEPT, RECREATED, RENEWED = "kept", "recreated", "renewed"


@dataclass(frozen=True)
class Reclaim:
    outcome: str  # KEPT (the key is ours as we know it), RECREATED or RENEWED
    lease: Lease


def reclaim_lease(registry: LeaseRegistry, lease: Lease, timing: LeaseTiming) -> Reclaim:
    """Make sure the store holds our lease, judged on the store now, not on a watch event.

    An event about our key may be stale (a deletion from an expiry that happened before our
    renewal put the key back), so the key is read: absent -> create it again with the same
    subnet and attributes; ours -> keep (or renew, when it hangs on an etcd lease we do not
    know); another host's -> LeaseTaken, the only case where the lease is really lost.
    """
    for _ in range(RACE_ATTEMPTS):
        current = registry.get_lease(lease.subnet, lease.ipv6_subnet)
        if current is None:
            created = registry.create_lease(lease.subnet, lease.attrs, timing.ttl,
                                            lease.ipv6_subnet)
            if created is not None:
                log.warning("our lease %s was gone (expired or deleted) and the subnet was "
                            "free: re-created it", lease.subnet)
                return Reclaim(RECREATED, created)
            continue  # somebody created it between our read and our create: read again
        if not is_ours(current, lease.attrs, lease.etcd_lease_id):
            raise LeaseTaken(lease.subnet, current.attrs)
        if current.etcd_lease_id == lease.etcd_lease_id:
            return Reclaim(KEPT, lease)
        return Reclaim(RENEWED, renew_lease(registry, lease, timing))
    raise LeaseTaken(lease.subnet, None)  # unreadable or contended at every attempt
