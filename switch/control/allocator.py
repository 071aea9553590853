"""Choosing a subnet to lease, as flannel's local_manager does (pure: no store access).

Order: (1) a lease that already carries our PublicIP and still fits the config; (2) the subnet
from our previous subnet file if nobody holds it and it fits; (3) a random pick among the first
100 free subnets between SubnetMin and SubnetMax.

Only leases the policy admits hold a subnet (`admit`, see lease_policy): a key of another size
or outside the Network is refused by every weft host, so it blocks no candidate (flannel counts
any overlapping key as taken, and one `10.0.0.0-8` key left it "out of subnets").
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from weft.control.config import NetworkConfig
from weft.control.lease import Lease

CANDIDATES = 100  # flannel draws among the first 100 free subnets


class OutOfSubnets(RuntimeError):
    def __init__(self) -> None:
        super().__init__("out of subnets")


@dataclass(frozen=True)
class Choice:
    subnet: IPv4Network
    reuse: Lease | None = None  # our own existing lease: renew it in place
    stale: tuple[Lease, ...] = ()  # leases with our PublicIP that no longer fit: delete them
    ipv6_subnet: IPv6Network | None = None  # the IPv6 half (EnableIPv6)


def fits(config: NetworkConfig, subnet: IPv4Network) -> bool:
    assert config.network is not None and config.subnet_min and config.subnet_max
    return (
        subnet.prefixlen == config.subnet_len
        and subnet.subnet_of(config.network)
        and config.subnet_min <= subnet.network_address <= config.subnet_max
    )


def fits_v6(config: NetworkConfig, ipv6_subnet: IPv6Network | None) -> bool:
    """flannel's isIPv6SubnetConfigCompat: no IPv6 half unless EnableIPv6, and then one of
    IPv6SubnetLen between IPv6SubnetMin and IPv6SubnetMax."""
    if not config.enable_ipv6:
        return ipv6_subnet is None
    if ipv6_subnet is None:
        return False
    assert config.ipv6_subnet_min is not None and config.ipv6_subnet_max is not None
    return (ipv6_subnet.prefixlen == config.ipv6_subnet_len
            and config.ipv6_subnet_min <= ipv6_subnet.network_address <= config.ipv6_subnet_max)


def _lease_fits(config: NetworkConfig, lease: Lease) -> bool:
    return fits(config, lease.subnet) and fits_v6(config, lease.ipv6_subnet)


def choose_subnet(
    config: NetworkConfig,
    leases: list[Lease],
    public_ip: IPv4Address,
    previous: IPv4Network | None,
    rng: random.Random,
    exclude: frozenset[IPv4Network] = frozenset(),
    admit: Callable[[Lease], bool] = lambda lease: True,
    previous_v6: IPv6Network | None = None,
) -> Choice:
    """Pick a subnet for `public_ip`; `exclude` holds subnets we just lost a race for.

    Leases carrying our PublicIP are ours whatever their shape (reused, or deleted as stale);
    of the others only those `admit` accepts hold their subnet.
    """
    mine = [lease for lease in leases if lease.attrs.public_ip == public_ip]
    stale = tuple(lease for lease in mine if not _lease_fits(config, lease))
    for lease in mine:
        if _lease_fits(config, lease) and lease.subnet not in exclude:
            return Choice(lease.subnet, reuse=lease, stale=stale, ipv6_subnet=lease.ipv6_subnet)
    # Admitted leases are of our subnet size and inside the Network, so a candidate is
    # taken exactly when it is in this set (a test per lease was O(subnets x leases): 10 s
    # before subnet.env with 4,095 hosts in a /12).
    held = {lease.subnet for lease in leases
            if lease not in stale and (lease in mine or admit(lease))}

    def taken(subnet: IPv4Network) -> bool:
        return subnet in held

    held_v6 = {lease.ipv6_subnet for lease in leases if lease.ipv6_subnet is not None
               and lease not in stale and (lease in mine or admit(lease))}
    if (
        previous is not None
        and previous not in exclude
        and fits(config, previous)
        and not taken(previous)
        and fits_v6(config, previous_v6)
        and previous_v6 not in held_v6
    ):
        return Choice(previous, stale=stale, ipv6_subnet=previous_v6)
    free = []
    for number in config.subnets():
        subnet = config.subnet_at(number)
        if subnet in exclude or taken(subnet):
            continue
        free.append(subnet)
        if len(free) == CANDIDATES:
            break
    if not free:
        raise OutOfSubnets()
    subnet = rng.choice(free)
    if not config.enable_ipv6:
        return Choice(subnet, stale=stale)
    free_v6 = _free_v6(config, held_v6)
    if not free_v6:
        raise OutOfSubnets()
    return Choice(subnet, stale=stale, ipv6_subnet=rng.choice(free_v6))


def _free_v6(config: NetworkConfig, held: set[IPv6Network]) -> list[IPv6Network]:
    """The first CANDIDATES free IPv6 subnets from IPv6SubnetMin on, as flannel draws from."""
    assert config.ipv6_subnet_min is not None and config.ipv6_subnet_max is not None
    size = 1 << (128 - config.ipv6_subnet_len)
    address, last = int(config.ipv6_subnet_min), int(config.ipv6_subnet_max)
    free: list[IPv6Network] = []
    while address <= last and len(free) < CANDIDATES:
        subnet = IPv6Network((address, config.ipv6_subnet_len))
        if subnet not in held:
            free.append(subnet)
        address += size
    return free
