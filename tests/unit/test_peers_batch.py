"""PeerPrograms with a backend that programs whole rounds at once."""

from ipaddress import IPv4Address, IPv4Network

from weft.backends.peers import PeerPrograms
from weft.control.config import parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_policy import LeasePolicy, LeaseRejections
from weft.control.memory_registry import MemoryRegistry
from weft.control.peer_sync import PeerChanges, PeerSync
from weft.control.registry import LeaseEvents


def lease(subnet: str, ip: str, mac: str = "7e:81:33:71:e9:51") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan",
                                                 backend_data={"VNI": 1, "VtepMAC": mac}))


class Rounds:
    def __init__(self, fail: set[str] = frozenset()):
        self.rounds: list[tuple[str, list[str]]] = []
        self.fail = fail

    def program_many(self, leases):
        self.rounds.append(("add", [str(x.subnet) for x in leases]))
        return {x.subnet: "said no" for x in leases if str(x.subnet) in self.fail}

    def unprogram_many(self, leases):
        self.rounds.append(("del", [str(x.subnet) for x in leases]))
        return {}


def peers_with(rounds: Rounds) -> PeerPrograms:
    return PeerPrograms("vxlan", rounds.program_many, rounds.unprogram_many)


def test_a_listing_is_one_round_and_one_failure_stays_alone():
    rounds = Rounds(fail={"10.1.3.0/24"})
    peers = peers_with(rounds)
    listing = tuple(lease(f"10.1.{i}.0/24", f"192.0.2.{i}") for i in range(2, 100))
    peers.handle(PeerChanges(added=listing))
    assert rounds.rounds == [("add", [str(x.subnet) for x in listing])]
    assert len(peers.programmed) == 97
    assert peers.failed == {IPv4Network("10.1.3.0/24"): "said no"}


def test_change_is_programmed_over_the_old_lease_and_replay_does_nothing():
    """No unprogram between old and new: the peer never goes missing while it changes."""
    rounds = Rounds()
    peers = peers_with(rounds)
    a, b = lease("10.1.2.0/24", "192.0.2.2"), lease("10.1.4.0/24", "192.0.2.4")
    peers.handle(PeerChanges(added=(a, b)))
    changed = lease("10.1.2.0/24", "192.0.2.2", mac="02:00:00:00:00:09")
    peers.handle(PeerChanges(added=(changed, b)))
    assert rounds.rounds == [("add", ["10.1.2.0/24", "10.1.4.0/24"]), ("add", ["10.1.2.0/24"])]
    assert peers.programmed[IPv4Network("10.1.2.0/24")] == changed


def test_a_change_that_fails_unprograms_the_old_lease():
    rounds = Rounds()
    peers = peers_with(rounds)
    peers.handle(PeerChanges(added=(lease("10.1.2.0/24", "192.0.2.2"),)))
    rounds.fail = {"10.1.2.0/24"}
    peers.handle(PeerChanges(added=(lease("10.1.2.0/24", "192.0.2.9"),)))
    assert rounds.rounds[-2:] == [("add", ["10.1.2.0/24"]), ("del", ["10.1.2.0/24"])]
    assert peers.programmed == {} and peers.failed == {IPv4Network("10.1.2.0/24"): "said no"}


def test_peers_gone_in_one_relisting_are_removed_in_one_round():
    """After an outage the watch re-lists; every peer missing from it whose grace runs out is
    unprogrammed in one round, not one netlink round trip each."""
    config = '{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}'
    rounds = Rounds()
    peers = peers_with(rounds)
    now = [0.0]
    policy = LeasePolicy(parse_config(config), LeaseRejections(), IPv4Network("10.1.1.0/24"),
                         IPv4Address("192.0.2.1"))
    sync = PeerSync(policy, peers.handle, grace=10.0, clock=lambda: now[0])
    leases = [lease(f"10.1.{i}.0/24", f"192.0.2.{i}") for i in range(2, 6)]
    sync.handle(LeaseEvents(tuple(leases), reset=True))
    sync.handle(LeaseEvents((leases[0],), reset=True))
    now[0] = 11.0
    sync.confirm_due(MemoryRegistry(config))
    assert rounds.rounds[-1][0] == "del"
    assert sorted(rounds.rounds[-1][1]) == ["10.1.3.0/24", "10.1.4.0/24", "10.1.5.0/24"]
    assert set(peers.programmed) == {leases[0].subnet}
