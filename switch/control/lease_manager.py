"""Acquiring and renewing our subnet lease (flannel's local_manager, with bounded race retries)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from ipaddress import IPv4Network

from weft.control.allocator import choose_subnet
from weft.control.config import NetworkConfig
from weft.control.lease import Lease, LeaseAttrs
from weft.control.registry import LeaseRegistry

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


def acquire_lease(
    registry: LeaseRegistry,
    config: NetworkConfig,
    attrs: LeaseAttrs,
    previous: IPv4Network | None,
    timing: LeaseTiming,
    rng: random.Random | None = None,
    attempts: int = RACE_ATTEMPTS,
) -> Lease:
    """Take a subnet lease for `attrs.public_ip`, retrying with another subnet on a lost race."""
    rng = rng or random.Random()
    lost: set[IPv4Network] = set()
    for _ in range(attempts):
        leases, _revision = registry.list_leases()
        choice = choose_subnet(config, leases, attrs.public_ip, previous, rng, frozenset(lost))
        for stale in choice.stale:
            log.info("deleting our lease %s: it no longer fits the network config", stale.subnet)
            registry.delete_lease(stale.subnet)
        if choice.reuse is not None:
            log.info("found lease %s for our PublicIP %s, reusing", choice.subnet, attrs.public_ip)
            return registry.update_lease(
                choice.subnet, attrs, timing.ttl, old_lease_id=choice.reuse.etcd_lease_id
            )
        lease = registry.create_lease(choice.subnet, attrs, timing.ttl)
        if lease is not None:
            log.info("allocated lease %s", lease.subnet)
            return lease
        log.info("another host took %s first; choosing another subnet", choice.subnet)
        lost.add(choice.subnet)
    raise AcquireError(
        f"could not acquire a subnet lease: lost the race for {attempts} subnets in a row "
        f"({', '.join(map(str, sorted(lost)))}); too many hosts starting at once?"
    )


def renew_lease(registry: LeaseRegistry, lease: Lease, timing: LeaseTiming) -> Lease:
    renewed = registry.update_lease(
        lease.subnet, lease.attrs, timing.ttl, old_lease_id=lease.etcd_lease_id
    )
    log.info("renewed lease %s for %ds", lease.subnet, timing.ttl)
    return renewed
