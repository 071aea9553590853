"""The lease policy: which leases from the store may exist, and what happens to the refused.

Each hostile lease below was tried against the daemon before the policy existed (issue 20):
host-gw turned `0.0.0.0-0` into a default route, a `/32` key diverted etcd's address, and a
`10.0.0.0-8` key left every joining host "out of subnets".
"""

from __future__ import annotations

import logging
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from weft.control import lease_policy as policy_module
from weft.control.allocator import choose_subnet
from weft.control.config import parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_manager import LeaseTiming, acquire_lease
from weft.control.lease_policy import LeasePolicy, LeaseRejections
from weft.control.memory_registry import MemoryRegistry
from weft.control.peer_sync import PeerChanges, PeerSync
from weft.control.registry import LeaseEvents

CONFIG = parse_config('{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}')
DUAL = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48",'
                    '"Backend":{"Type":"vxlan"}}')
OWN = IPv4Network("10.1.1.0/24")
OWN_IP = IPv4Address("192.0.2.10")
MAC = "7e:81:33:71:e9:51"


def vxlan(subnet: str, ip: str = "192.0.2.20", mac: object = MAC,
          ipv6: str | None = None) -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac is not None else {"VNI": 1}
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), None, "vxlan", data),
                 IPv6Network(ipv6) if ipv6 else None)


def udp(subnet: str, ip: str = "192.0.2.20") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip)))


GOOD = [
    vxlan("10.1.2.0/24"),
    udp("10.1.3.0/24"),
    Lease(IPv4Network("10.1.4.0/24"), LeaseAttrs(IPv4Address("198.51.100.4"), None, "host-gw")),
    # flannel <= 0.13 wrote vxlan data without a VNI
    Lease(IPv4Network("10.1.5.0/24"), LeaseAttrs(IPv4Address("192.0.2.5"), None, "vxlan",
                                                  {"VtepMAC": "0a-00-00-00-00-05"})),
]

HOSTILE = [
    (vxlan("0.0.0.0/0"), policy_module.SUBNET_SIZE),
    (vxlan("192.0.2.1/32"), policy_module.SUBNET_SIZE),
    (vxlan("10.0.0.0/8"), policy_module.SUBNET_SIZE),
    (vxlan("10.1.9.0/25"), policy_module.SUBNET_SIZE),
    (vxlan("10.2.9.0/24"), policy_module.OUTSIDE_NETWORK),
    (vxlan("10.1.9.0/24", ip="127.0.0.1"), policy_module.PUBLIC_IP),
    (vxlan("10.1.9.0/24", ip="0.0.0.0"), policy_module.PUBLIC_IP),
    (vxlan("10.1.9.0/24", ip="224.0.0.5"), policy_module.PUBLIC_IP),
    (vxlan("10.1.9.0/24", ip="255.255.255.255"), policy_module.PUBLIC_IP),
    (vxlan("10.1.9.0/24", ip="240.1.2.3"), policy_module.PUBLIC_IP),
    (vxlan("10.1.9.0/24", ip="10.1.7.7"), policy_module.PUBLIC_IP),  # a pod address
    (vxlan("10.1.9.0/24", mac="ff:ff:ff:ff:ff:ff"), policy_module.VTEP_MAC),
    (vxlan("10.1.9.0/24", mac="01:00:5e:00:00:01"), policy_module.VTEP_MAC),
    (vxlan("10.1.9.0/24", mac="00:00:00:00:00:00"), policy_module.VTEP_MAC),
    (vxlan("10.1.9.0/24", mac="7e:81:33"), policy_module.VTEP_MAC),
    (vxlan("10.1.9.0/24", mac=12345), policy_module.VTEP_MAC),
    (vxlan("10.1.9.0/24", mac=None), policy_module.VTEP_MAC),
]

AS_PEER = [
    (vxlan("10.1.1.0/24"), policy_module.OVERLAPS_OWN),
    (vxlan("10.1.9.0/24", ip=str(OWN_IP)), policy_module.OWN_PUBLIC_IP),
]


def judge(config=CONFIG) -> LeasePolicy:
    return LeasePolicy(config, LeaseRejections(), OWN, OWN_IP)


@pytest.mark.parametrize("lease", GOOD, ids=lambda lease: str(lease.subnet))
def test_good_leases_are_admitted(lease):
    policy = judge()
    assert policy.refusal(lease, as_peer=True) is None
    assert policy.admit(lease, as_peer=True)
    snap = policy.rejections.snapshot()
    assert snap.total == {} and snap.current == {}


@pytest.mark.parametrize(("lease", "reason"), HOSTILE + AS_PEER,
                         ids=lambda x: x if isinstance(x, str) else str(x.subnet))
def test_hostile_leases_are_refused_with_their_reason(lease, reason):
    policy = judge()
    assert not policy.admit(lease, as_peer=True)
    snap = policy.rejections.snapshot()
    assert snap.total == {reason: 1}
    assert snap.current[lease.key].reason == reason


@pytest.mark.parametrize(("lease", "reason"), AS_PEER, ids=lambda x: str(x))
def test_own_checks_apply_to_peers_only(lease, reason):
    """The allocator may see our own subnet and address (that is how a lease is reused)."""
    assert judge().refusal(lease, as_peer=False) is None


def test_ipv6_half_is_checked_when_the_config_has_one():
    good = vxlan("10.1.9.0/24", ipv6="fd10:0:0:9::/64")
    assert judge(DUAL).refusal(good) is None
    for v6 in ("fd10:0:0:900::/56", "fd11:0:0:9::/64", "::/0"):
        refusal = judge(DUAL).refusal(vxlan("10.1.9.0/24", ipv6=v6))
        assert refusal is not None and refusal.reason == policy_module.IPV6_SUBNET, v6


def test_refusal_is_logged_and_counted_once_per_key_and_reason(caplog):
    policy = judge()
    bad = vxlan("10.1.9.0/24", ip="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="weft.control.lease_policy"):
        for _ in range(5):
            policy.admit(bad, as_peer=True)
    assert len(caplog.records) == 1 and "10.1.9.0-24" in caplog.text
    assert policy.rejections.totals == {policy_module.PUBLIC_IP: 1}
    # fixed: no longer refused, but the total remembers
    assert policy.admit(vxlan("10.1.9.0/24"), as_peer=True)
    assert policy.rejections.snapshot().current == {}
    assert policy.rejections.totals == {policy_module.PUBLIC_IP: 1}
    # broken again: a new refusal
    policy.admit(bad, as_peer=True)
    assert policy.rejections.totals == {policy_module.PUBLIC_IP: 2}


def test_relisting_forgets_what_is_no_longer_there():
    rejections = LeaseRejections()
    rejections.refuse("10.1.9.0-024", "key_not_canonical", "x")
    rejections.relisted()
    assert rejections.snapshot().current == {}
    assert rejections.totals == {"key_not_canonical": 1}


# -- the allocator ------------------------------------------------------------------------------

def test_allocator_is_not_blocked_by_refused_leases():
    """One `10.0.0.0-8` key overlapped every candidate: "out of subnets" for every new host."""
    policy = judge()
    leases = [lease for lease, _ in HOSTILE] + GOOD
    choice = choose_subnet(CONFIG, leases, IPv4Address("192.0.2.50"), None, random.Random(1),
                           admit=policy.admit)
    assert choice.subnet.prefixlen == 24 and choice.subnet.subnet_of(CONFIG.network)
    assert choice.subnet not in {lease.subnet for lease in GOOD}
    assert policy.rejections.totals[policy_module.SUBNET_SIZE] == 4


def test_allocator_still_avoids_admitted_leases():
    taken = [vxlan(f"10.1.{i}.0/24", ip=f"192.0.2.{i}") for i in range(1, 256)]
    free = IPv4Network("10.1.77.0/24")
    leases = [lease for lease in taken if lease.subnet != free]
    choice = choose_subnet(CONFIG, leases, IPv4Address("198.51.100.1"), None, random.Random(),
                           admit=judge().admit)
    assert choice.subnet == free


def test_acquire_lease_with_hostile_keys_in_the_store(tmp_path):
    registry = MemoryRegistry('{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}')
    for lease, _ in HOSTILE:
        registry.create_lease(lease.subnet, lease.attrs, ttl=600)
    ours = LeaseAttrs(IPv4Address("192.0.2.60"), None, "vxlan", {"VNI": 1, "VtepMAC": MAC})
    acquired = acquire_lease(registry, CONFIG, ours, None, LeaseTiming(ttl=600))
    assert acquired.lease.subnet.prefixlen == 24
    assert acquired.lease.subnet.subnet_of(IPv4Network("10.1.0.0/16"))
    assert sum(registry.rejections.totals.values()) >= 5


def test_own_stale_lease_of_another_size_is_still_deleted():
    """Ours by PublicIP but refusable (the config's SubnetLen changed): deleted, not ignored."""
    mine = vxlan("10.1.8.0/23", ip=str(OWN_IP))
    choice = choose_subnet(CONFIG, [mine], OWN_IP, None, random.Random(1), admit=judge().admit)
    assert choice.stale == (mine,)


# -- peers ------------------------------------------------------------------------------------

class Backend:
    def __init__(self) -> None:
        self.peers: dict[IPv4Network, Lease] = {}
        self.batches: list[PeerChanges] = []

    def handle(self, changes: PeerChanges) -> None:
        self.batches.append(changes)
        for subnet in changes.removed:
            self.peers.pop(subnet, None)
        for lease in changes.added:
            self.peers[lease.subnet] = lease


def test_refused_leases_never_reach_the_backend():
    backend = Backend()
    sync = PeerSync(judge(), backend.handle)
    hostile = [lease for lease, _ in HOSTILE + AS_PEER]
    sync.handle(LeaseEvents(tuple(hostile + GOOD), reset=True))
    assert set(backend.peers) == {lease.subnet for lease in GOOD}
    handed = {lease.subnet for batch in backend.batches for lease in batch.added}
    assert handed == {lease.subnet for lease in GOOD}


def test_peer_turned_refusable_is_removed_at_once():
    backend = Backend()
    clock = [0.0]
    sync = PeerSync(judge(), backend.handle, grace=10.0, clock=lambda: clock[0])
    sync.handle(LeaseEvents((vxlan("10.1.2.0/24"),)))
    assert IPv4Network("10.1.2.0/24") in backend.peers
    sync.handle(LeaseEvents((vxlan("10.1.2.0/24", ip="127.0.0.1"),)))
    assert IPv4Network("10.1.2.0/24") not in backend.peers  # no grace for a bad value
    assert sync.next_due() is None
    sync.handle(LeaseEvents((vxlan("10.1.2.0/24"),)))  # fixed: programmed again
    assert IPv4Network("10.1.2.0/24") in backend.peers


def test_grace_expiry_does_not_restore_a_refused_lease():
    """A peer gone past its grace is re-read from the store; a refusable value there must not
    be programmed back."""
    registry = MemoryRegistry('{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}')
    backend = Backend()
    clock = [0.0]
    sync = PeerSync(judge(), backend.handle, grace=10.0, clock=lambda: clock[0])
    subnet = IPv4Network("10.1.2.0/24")
    sync.handle(LeaseEvents((vxlan("10.1.2.0/24"),)))
    sync.handle(LeaseEvents(removed=(vxlan("10.1.2.0/24"),)))
    registry.create_lease(subnet, vxlan("10.1.2.0/24", ip="224.0.0.1").attrs, ttl=600)
    clock[0] = 11.0
    sync.confirm_due(registry)
    assert subnet not in backend.peers
