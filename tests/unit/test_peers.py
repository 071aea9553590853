"""Peer membership as the daemon reaches it: the store's events go through PeerSync (which
subnets are peers, the grace before a removal) into the backend's PeerPrograms (what is
programmed, from which lease), as `weft run` wires them.

Each test feeds LeaseEvents as the registry's watch delivers them, re-listings included, and
checks what reached the "kernel" (a recorder standing in for the backend's netlink calls).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from weft.backends.peers import PeerPrograms
from weft.control.config import parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_policy import LeasePolicy
from weft.control.memory_registry import MemoryRegistry
from weft.control.peer_sync import PeerSync
from weft.control.registry import LeaseEvents
from weft.status import PeerStatus

NETWORK = '{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}'
OWN = IPv4Network("10.1.1.0/24")
OWN_IP = IPv4Address("192.0.2.10")
GRACE = 10.0


def vxlan(subnet: str, ip: str, mac: str = "7e:81:33:71:e9:51") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan",
                                                 backend_data={"VNI": 1, "VtepMAC": mac}))


A = vxlan("10.1.2.0/24", "192.0.2.2")
B = vxlan("10.1.3.0/24", "192.0.2.3")


class Kernel:
    """Records each program/unprogram call; refuses to program the subnets in `fail_on`."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail_on: set[str] = set()

    def program(self, lease: Lease) -> None:
        if str(lease.subnet) in self.fail_on:
            raise OSError("netlink said no")
        self.log.append(("add", str(lease.subnet)))

    def unprogram(self, lease: Lease) -> None:
        self.log.append(("del", str(lease.subnet)))


class World:
    """A registry, PeerSync on a manual clock, and the backend's PeerPrograms behind it."""

    def __init__(self) -> None:
        self.registry = MemoryRegistry(NETWORK)
        self.now = 0.0
        self.kernel = Kernel()
        self.programs = PeerPrograms.one_at_a_time("vxlan", self.kernel.program,
                                                   self.kernel.unprogram)
        policy = LeasePolicy(parse_config(NETWORK), self.registry.rejections, OWN, OWN_IP)
        self.sync = PeerSync(policy, self.programs.handle, GRACE, clock=lambda: self.now)

    def watch(self, *added: Lease, removed: tuple[Lease, ...] = ()) -> None:
        self.sync.handle(LeaseEvents(added, removed))

    def relist(self, *leases: Lease) -> None:
        """What the watch delivers after it had to start over: the whole listing."""
        self.sync.handle(LeaseEvents(leases, reset=True))

    def after_the_grace(self) -> None:
        self.now += GRACE + 1
        self.sync.confirm_due(self.registry)

    def programmed(self) -> set[str]:
        return {str(subnet) for subnet in self.programs.programmed}


def test_add_replay_change_and_a_removal_that_waits_for_the_grace():
    world = World()
    world.watch(A)
    world.watch(A)  # replayed: nothing to do
    changed = vxlan("10.1.2.0/24", "192.0.2.9", mac="02:00:00:00:00:09")
    world.watch(changed)  # programmed over the old lease: never missing in between
    assert world.kernel.log == [("add", "10.1.2.0/24"), ("add", "10.1.2.0/24")]
    assert world.programs.programmed[A.subnet] == changed
    world.watch(removed=(changed,))
    assert world.programmed() == {"10.1.2.0/24"}  # held for the grace
    world.after_the_grace()  # the store lacks it still
    assert world.kernel.log[-1] == ("del", "10.1.2.0/24")
    assert world.programs.programmed == {} and world.sync.known == set()


def test_a_relisting_without_a_peer_removes_it_after_the_grace_if_the_store_agrees():
    world = World()
    world.relist(A, B)
    world.relist(B)  # A missing from a re-listing: the same as a deletion
    assert world.programmed() == {"10.1.2.0/24", "10.1.3.0/24"}
    world.registry.create_lease(A.subnet, A.attrs, ttl=600)  # a lagging watch: A is there
    world.after_the_grace()
    assert world.programmed() == {"10.1.2.0/24", "10.1.3.0/24"}
    assert ("del", "10.1.2.0/24") not in world.kernel.log
    world.registry.delete_lease(A.subnet)
    world.relist(B)
    world.after_the_grace()
    assert world.programmed() == {"10.1.3.0/24"}
    assert world.kernel.log.count(("del", "10.1.2.0/24")) == 1
    assert world.kernel.log.count(("add", "10.1.3.0/24")) == 1  # re-listings replay nothing


def test_a_peer_back_within_the_grace_is_never_unprogrammed():
    world = World()
    world.watch(A)
    world.watch(removed=(A,))
    world.watch(A)
    world.after_the_grace()
    assert world.kernel.log == [("add", "10.1.2.0/24")]
    assert world.sync.cancelled == 1


def test_a_failed_peer_does_not_stop_the_others_and_a_relisting_retries_it():
    world = World()
    world.kernel.fail_on = {"10.1.2.0/24"}
    world.relist(A, B)
    assert world.programmed() == {"10.1.3.0/24"}
    assert "netlink said no" in world.programs.failed[A.subnet]
    assert world.programs.unprogrammed() == {"10.1.2.0/24": "netlink said no"}
    world.kernel.fail_on = set()
    world.relist(A, B)
    assert world.kernel.log == [("add", "10.1.3.0/24"), ("add", "10.1.2.0/24")]
    assert world.programs.failed == {}


def test_our_own_subnet_and_refused_leases_never_reach_the_kernel():
    world = World()
    world.relist(vxlan(str(OWN), str(OWN_IP)), vxlan("10.1.4.0/24", "127.0.0.1"), A)
    assert world.kernel.log == [("add", "10.1.2.0/24")]
    assert world.sync.known == {A.subnet}


def test_a_lease_of_another_backend_is_not_programmed_and_the_old_one_goes():
    world = World()
    world.watch(A)
    udp = Lease(A.subnet, LeaseAttrs(IPv4Address("192.0.2.2")))  # the peer now runs udp
    world.watch(udp)
    assert world.kernel.log == [("add", "10.1.2.0/24"), ("del", "10.1.2.0/24")]
    assert world.programs.failed == {A.subnet: "backend type udp"}
    assert world.sync.known == {A.subnet}  # still a peer: shown as unprogrammed, not dropped
    world.watch(removed=(udp,))
    world.after_the_grace()
    assert world.programs.failed == {} and world.sync.known == set()


def test_status_lists_what_is_programmed_as_the_kernel_has_it():
    world = World()
    world.watch(vxlan("10.1.16.0/24", "192.0.2.16", mac="7E-81-33-71-E9-51"), A)
    assert world.programs.peers() == (
        PeerStatus(subnet="10.1.2.0/24", public_ip="192.0.2.2", vtep_mac="7e:81:33:71:e9:51"),
        PeerStatus(subnet="10.1.16.0/24", public_ip="192.0.2.16",
                   vtep_mac="7e:81:33:71:e9:51"))
