"""Acquiring and renewing our lease (lease_manager) against MemoryRegistry: no etcd, no waiting."""

from __future__ import annotations

import logging
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.control.allocator import OutOfSubnets, fits
from weft.control.config import parse_config
from weft.control.lease import LeaseAttrs
from weft.control.lease_manager import (
    KEPT,
    RECREATED,
    RENEWED,
    AcquireError,
    LeaseTiming,
    acquire_lease,
    reclaim_lease,
    renew_lease,
)
from weft.control.memory_registry import ManualClock, MemoryRegistry
from weft.control.registry import LeaseTaken

NETWORK = '{"Network":"10.1.0.0/16"}'
CONFIG = parse_config(NETWORK)
ME = LeaseAttrs(IPv4Address("192.0.2.10"))
OTHER = LeaseAttrs(IPv4Address("192.0.2.99"))
TIMING = LeaseTiming(ttl=3600, renew_margin=600)


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def reg(clock):
    return MemoryRegistry(NETWORK, clock=clock)


def acquire(reg, previous=None, attrs=ME, config=CONFIG, **kwargs):
    return acquire_lease(reg, config, attrs, previous, TIMING, random.Random(7), **kwargs).lease


def held(reg) -> dict[IPv4Network, IPv4Address]:
    return {lease.subnet: lease.attrs.public_ip for lease in reg.list_leases()[0]}


def test_fresh_host_creates_a_lease_that_fits(reg, clock):
    lease = acquire(reg)
    assert fits(CONFIG, lease.subnet) and lease.expiration == clock() + TIMING.ttl
    assert held(reg) == {lease.subnet: ME.public_ip}


def test_restart_reuses_the_lease_with_our_public_ip(reg):
    mine = reg.create_lease(IPv4Network("10.1.9.0/24"), ME, ttl=60)
    reg.create_lease(IPv4Network("10.1.7.0/24"), OTHER, ttl=60)
    lease = acquire(reg, previous=IPv4Network("10.1.3.0/24"))  # PublicIP wins over the file
    assert lease.subnet == mine.subnet and lease.etcd_lease_id != mine.etcd_lease_id
    assert held(reg) == {mine.subnet: ME.public_ip, IPv4Network("10.1.7.0/24"): OTHER.public_ip}


def test_our_lease_that_no_longer_fits_is_deleted_and_replaced(reg):
    reg.create_lease(IPv4Network("10.1.0.0/24"), ME, ttl=60)  # below SubnetMin
    lease = acquire(reg)
    assert held(reg) == {lease.subnet: ME.public_ip} and lease.subnet != IPv4Network("10.1.0.0/24")


def test_the_listing_the_choice_was_made_on_comes_back_with_its_revision(reg):
    """The daemon programs its peers from it and watches after its revision."""
    other = reg.create_lease(IPv4Network("10.1.7.0/24"), OTHER, ttl=60)
    _, revision_before = reg.list_leases()
    acquired = acquire_lease(reg, CONFIG, ME, None, TIMING, random.Random(7))
    assert [lease.subnet for lease in acquired.listed] == [other.subnet]
    assert acquired.revision == revision_before
    _, revision_after = reg.list_leases()
    assert revision_after > acquired.revision  # our create comes after: the watch sees it


def test_old_subnet_file_is_honoured_when_free(reg):
    previous = IPv4Network("10.1.77.0/24")
    assert acquire(reg, previous=previous).subnet == previous


def test_old_subnet_file_is_ignored_when_another_host_holds_it(reg):
    previous = IPv4Network("10.1.77.0/24")
    reg.create_lease(previous, OTHER, ttl=60)
    lease = acquire(reg, previous=previous)
    assert lease.subnet != previous
    assert held(reg) == {previous: OTHER.public_ip, lease.subnet: ME.public_ip}


class RacingRegistry(MemoryRegistry):
    """Another host wins the first `losses` creates: it takes the subnet between our list and
    our create, as a host starting at the same moment would."""

    def __init__(self, losses: int) -> None:
        super().__init__(NETWORK)
        self.losses = losses
        self.lost: list[IPv4Network] = []

    def create_lease(self, subnet, attrs, ttl, ipv6_subnet=None):
        if len(self.lost) < self.losses:
            self.lost.append(subnet)
            assert super().create_lease(subnet, OTHER, ttl, ipv6_subnet) is not None
        return super().create_lease(subnet, attrs, ttl, ipv6_subnet)


def test_lost_race_is_retried_with_another_subnet(caplog):
    caplog.set_level(logging.INFO, logger="weft.control.lease_manager")
    reg = RacingRegistry(losses=2)
    previous = IPv4Network("10.1.77.0/24")
    lease = acquire(reg, previous=previous)
    assert reg.lost[0] == previous  # the race was for the subnet from our old file
    assert lease.subnet not in reg.lost and len(set(reg.lost)) == 2
    assert held(reg) == {reg.lost[0]: OTHER.public_ip, reg.lost[1]: OTHER.public_ip,
                         lease.subnet: ME.public_ip}
    assert caplog.text.count("another host took") == 2


def test_losing_every_race_is_a_clear_error():
    reg = RacingRegistry(losses=3)
    with pytest.raises(AcquireError, match="lost the race for 3 subnets in a row"):
        acquire(reg, attempts=3)
    assert len(reg.lost) == 3 and ME.public_ip not in held(reg).values()


def test_out_of_subnets():
    text = '{"Network":"10.1.0.0/28","SubnetLen":30}'
    reg = MemoryRegistry(text)
    config = parse_config(text)
    hosts = [LeaseAttrs(IPv4Address(f"192.0.2.{i}")) for i in range(1, 4)]
    subnets = {acquire(reg, attrs=attrs, config=config).subnet for attrs in hosts}
    assert len(subnets) == 3
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        acquire(reg, attrs=LeaseAttrs(IPv4Address("192.0.2.4")), config=config)


def test_an_expired_lease_frees_its_subnet(reg, clock):
    previous = IPv4Network("10.1.77.0/24")
    reg.create_lease(previous, OTHER, ttl=60)
    clock.advance(60)  # the other host stopped renewing
    assert acquire(reg, previous=previous).subnet == previous


def test_renewal_keeps_the_lease_past_its_first_ttl(reg, clock):
    lease = acquire(reg)
    clock.advance(TIMING.renew_at(lease.expiration) - clock())
    renewed = renew_lease(reg, lease, TIMING)
    assert renewed.subnet == lease.subnet and renewed.expiration == clock() + TIMING.ttl
    clock.advance(TIMING.ttl - 1)  # beyond the first lease's expiry
    assert held(reg) == {lease.subnet: ME.public_ip}
    clock.advance(1)  # the renewed TTL runs out too
    assert held(reg) == {}


@pytest.mark.parametrize("ttl,margin,before_expiry", [
    (24 * 3600, 3600, 3600),  # flannel's defaults: renew an hour early
    (3600, 3600, 1800),  # a margin as long as the TTL: at half-life, not in a loop
    (10, 60, 5),
])
def test_renewal_time(ttl, margin, before_expiry):
    timing = LeaseTiming(ttl=ttl, renew_margin=margin)
    assert timing.renew_at(1000.0) == 1000.0 - before_expiry


# -- reclaim: our key judged on the store now, not on the event that made us look ----------

def test_reclaim_keeps_a_key_that_is_ours(reg):
    lease = acquire(reg)
    result = reclaim_lease(reg, lease, TIMING)
    assert result.outcome == KEPT and result.lease is lease


def test_reclaim_recreates_an_expired_key_with_the_same_subnet_and_attrs(reg, clock):
    lease = acquire(reg)
    clock.advance(TIMING.ttl)  # the store was away past the TTL; it expires the key
    result = reclaim_lease(reg, lease, TIMING)
    assert result.outcome == RECREATED and result.lease.subnet == lease.subnet
    assert result.lease.attrs == lease.attrs and result.lease.expiration == clock() + TIMING.ttl
    assert held(reg) == {lease.subnet: ME.public_ip}


def test_reclaim_renews_our_key_on_an_etcd_lease_we_do_not_know(reg):
    lease = acquire(reg)
    reg.delete_lease(lease.subnet)
    stray = reg.create_lease(lease.subnet, ME, ttl=60)  # e.g. a renewal whose reply was lost
    result = reclaim_lease(reg, lease, TIMING)
    assert result.outcome == RENEWED
    assert reg.get_lease(lease.subnet).etcd_lease_id == result.lease.etcd_lease_id
    assert result.lease.etcd_lease_id != stray.etcd_lease_id


def test_reclaim_of_a_subnet_another_host_holds_is_a_loss_and_leaves_it(reg, clock):
    lease = acquire(reg)
    clock.advance(TIMING.ttl)
    reg.create_lease(lease.subnet, OTHER, ttl=60)
    with pytest.raises(LeaseTaken, match="held by PublicIP 192.0.2.99"):
        reclaim_lease(reg, lease, TIMING)
    assert held(reg) == {lease.subnet: OTHER.public_ip}


def test_reclaim_that_loses_the_create_race_reads_again(reg, clock):
    lease = acquire(reg)
    clock.advance(TIMING.ttl)
    real_create = reg.create_lease

    def racing_create(subnet, attrs, ttl, ipv6_subnet=None):  # another host's create first
        real_create(subnet, OTHER, ttl, ipv6_subnet)
        return real_create(subnet, attrs, ttl, ipv6_subnet)

    reg.create_lease = racing_create
    with pytest.raises(LeaseTaken):
        reclaim_lease(reg, lease, TIMING)
    assert held(reg) == {lease.subnet: OTHER.public_ip}


def test_renewal_of_a_lease_another_host_took_raises_and_leaves_it(reg, clock):
    lease = acquire(reg)
    clock.advance(TIMING.ttl)
    reg.create_lease(lease.subnet, OTHER, ttl=60)
    with pytest.raises(LeaseTaken):
        renew_lease(reg, lease, TIMING)
    assert held(reg) == {lease.subnet: OTHER.public_ip}
