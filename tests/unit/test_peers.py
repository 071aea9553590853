from ipaddress import IPv4Address, IPv4Network

from weft.backends.peers import PeerPrograms
from weft.control.lease import Lease, LeaseAttrs
from weft.control.registry import LeaseEvents


def vxlan_lease(subnet: str, ip: str, mac: str = "7e:81:33:71:e9:51") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan",
                                                 backend_data={"VNI": 1, "VtepMAC": mac}))


class Recorder:
    def __init__(self, fail_on: set[str] = frozenset()):
        self.log: list[tuple[str, str]] = []
        self.fail_on = fail_on

    def program(self, lease: Lease) -> None:
        if str(lease.subnet) in self.fail_on:
            raise OSError("netlink said no")
        self.log.append(("add", str(lease.subnet)))

    def unprogram(self, lease: Lease) -> None:
        self.log.append(("del", str(lease.subnet)))


def test_add_change_remove_and_replay():
    rec = Recorder()
    peers = PeerPrograms.one_at_a_time("vxlan", rec.program, rec.unprogram)
    a = vxlan_lease("10.1.2.0/24", "192.0.2.2")
    peers.handle(LeaseEvents(added=(a,)))
    peers.handle(LeaseEvents(added=(a,)))  # replayed event: nothing to do
    changed = vxlan_lease("10.1.2.0/24", "192.0.2.9", mac="02:00:00:00:00:09")
    peers.handle(LeaseEvents(added=(changed,)))
    peers.handle(LeaseEvents(removed=(changed,)))
    assert rec.log == [("add", "10.1.2.0/24"), ("add", "10.1.2.0/24"), ("del", "10.1.2.0/24")]
    assert peers.programmed == {}


def test_reset_removes_what_is_gone():
    rec = Recorder()
    peers = PeerPrograms.one_at_a_time("vxlan", rec.program, rec.unprogram)
    a, b = vxlan_lease("10.1.2.0/24", "192.0.2.2"), vxlan_lease("10.1.3.0/24", "192.0.2.3")
    peers.handle(LeaseEvents(added=(a, b)))
    peers.handle(LeaseEvents(added=(b,), reset=True))
    assert set(peers.programmed) == {IPv4Network("10.1.3.0/24")}
    assert ("del", "10.1.2.0/24") in rec.log


def test_one_failing_peer_does_not_stop_the_others():
    rec = Recorder(fail_on={"10.1.2.0/24"})
    peers = PeerPrograms.one_at_a_time("vxlan", rec.program, rec.unprogram)
    peers.handle(LeaseEvents(added=(vxlan_lease("10.1.2.0/24", "192.0.2.2"),
                                    vxlan_lease("10.1.3.0/24", "192.0.2.3"))))
    assert set(peers.programmed) == {IPv4Network("10.1.3.0/24")}
    assert "netlink said no" in peers.failed[IPv4Network("10.1.2.0/24")]


def test_lease_of_another_backend_is_skipped():
    rec = Recorder()
    peers = PeerPrograms.one_at_a_time("vxlan", rec.program, rec.unprogram)
    udp = Lease(IPv4Network("10.1.4.0/24"), LeaseAttrs(IPv4Address("192.0.2.4")))
    peers.handle(LeaseEvents(added=(udp,)))
    assert rec.log == [] and "backend type udp" in peers.failed[IPv4Network("10.1.4.0/24")]
