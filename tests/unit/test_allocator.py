import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.control.allocator import CANDIDATES, OutOfSubnets, choose_subnet, fits
from weft.control.config import parse_config
from weft.control.lease import Lease, LeaseAttrs

CONFIG = parse_config('{"Network":"10.1.0.0/16"}')
ME = IPv4Address("192.0.2.10")


def lease(subnet: str, ip: str = "192.0.2.99") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip)))


def test_reuses_lease_with_our_public_ip():
    leases = [lease("10.1.7.0/24"), lease("10.1.9.0/24", str(ME))]
    choice = choose_subnet(CONFIG, leases, ME, IPv4Network("10.1.3.0/24"), random.Random(1))
    assert choice.subnet == IPv4Network("10.1.9.0/24") and choice.reuse == leases[1]


def test_lease_that_no_longer_fits_is_stale():
    leases = [lease("10.1.0.0/24", str(ME))]  # below SubnetMin
    choice = choose_subnet(CONFIG, leases, ME, None, random.Random(1))
    assert choice.stale == (leases[0],) and choice.reuse is None
    assert fits(CONFIG, choice.subnet)


def test_previous_subnet_taken_if_free():
    previous = IPv4Network("10.1.42.0/24")
    assert choose_subnet(CONFIG, [], ME, previous, random.Random(1)).subnet == previous
    held = [lease("10.1.42.0/24")]
    assert choose_subnet(CONFIG, held, ME, previous, random.Random(1)).subnet != previous


def test_random_among_first_free_candidates():
    held = [lease(f"10.1.{i}.0/24") for i in range(1, 10)]
    seen = {choose_subnet(CONFIG, held, ME, None, random.Random(seed)).subnet
            for seed in range(200)}
    numbers = {int(s.network_address.packed[2]) for s in seen}
    assert len(seen) > 20  # spread, not always the first free one
    assert min(numbers) >= 10 and max(numbers) < 10 + CANDIDATES


def test_exclude_and_out_of_subnets():
    config = parse_config('{"Network":"10.1.0.0/28","SubnetLen":30}')
    assert len(config.subnets()) == 3
    held = [lease("10.1.0.4/30"), lease("10.1.0.8/30")]
    assert choose_subnet(config, held, ME, None, random.Random()).subnet == \
        IPv4Network("10.1.0.12/30")
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        choose_subnet(config, held, ME, None, random.Random(),
                      exclude=frozenset({IPv4Network("10.1.0.12/30")}))
