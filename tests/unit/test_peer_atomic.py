"""Programming a peer is all or nothing: whatever step fails, what the round added is removed.

A fake kernel stands behind the netlink batch: it keeps routes and neighbours, answers each
request with an ack and refuses what a test tells it to, so every test checks the kernel state
left behind, not just what the backend returned.
"""

from __future__ import annotations

import threading
from ipaddress import IPv4Address, IPv4Network
from types import SimpleNamespace

import pytest
from fakes.netlink import FakeNetlink

from weft.backends.hostgw import HostGwBackend
from weft.backends.peers import PeerPrograms
from weft.backends.vxlan import VxlanBackend
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.peer_sync import PeerChanges
from weft.host import netlink_batch
from weft.host.netlink_batch import NetlinkBatch
from weft.packet.table import PeerTable

NETWORK = IPv4Network("10.1.0.0/16")
INDEX = 7  # the device (vxlan) or external interface (host-gw) the fake kernel routes through
MAC = "7e:81:33:71:e9:51"
NETWORK_CONFIG = SimpleNamespace(network=NETWORK, subnet_len=24, enable_ipv6=False)


@pytest.fixture
def kernel(monkeypatch) -> FakeNetlink:
    return FakeNetlink().install(monkeypatch)


def _vxlan_lease(subnet: str, ip: str = "192.0.2.2", mac: str = MAC) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan",
                                                 backend_data={"VNI": 1, "VtepMAC": mac}))


def _vxlan() -> VxlanBackend:
    """A vxlan backend without its device: peer programming against the fake kernel."""
    backend = VxlanBackend.__new__(VxlanBackend)
    backend.index, backend.vni = INDEX, 1
    backend.pipeline = SimpleNamespace(table=PeerTable(NETWORK, 24))
    backend.peers = PeerPrograms("vxlan", backend._program_many, backend._unprogram_many)
    backend.lock = threading.RLock()
    return backend


def _vxlan_state(kernel: FakeNetlink, backend: VxlanBackend) -> tuple[set, set, set]:
    """(route destinations, neighbour addresses, peer table subnets) now held."""
    return (set(map(str, kernel.routes)), {str(ip) for _i, ip in kernel.neighbours},
            {str(subnet) for subnet, _ip, _mac in backend.pipeline.table.peers()})


# -- the batch: a key is all or nothing -------------------------------------------------------

def _peer_requests(batch: NetlinkBatch, subnet: IPv4Network, mac: bytes = bytes(6)) -> None:
    batch.neigh_replace(subnet, subnet.network_address, mac, ifindex=INDEX)
    batch.route_replace(subnet, subnet, oif=INDEX, gateway=subnet.network_address, onlink=True)


def test_a_refused_route_takes_its_neighbour_back_out(kernel):
    good, bad = IPv4Network("10.1.2.0/24"), IPv4Network("10.1.3.0/24")
    kernel.bad_gateways.add(bad.network_address)
    batch = NetlinkBatch()
    _peer_requests(batch, good)
    _peer_requests(batch, bad)
    failures = batch.commit()
    assert list(failures) == [bad] and "route replace" in failures[bad]
    assert set(kernel.routes) == {good}
    assert set(kernel.neighbours) == {(INDEX, good.network_address)}


def test_a_refused_neighbour_takes_its_route_back_out(kernel):
    subnet = IPv4Network("10.1.3.0/24")
    kernel.bad_macs.add(bytes.fromhex("020000000003"))
    batch = NetlinkBatch()
    _peer_requests(batch, subnet, bytes.fromhex("020000000003"))
    assert "neighbour replace" in batch.commit()[subnet]
    assert kernel.routes == {} and kernel.neighbours == {}


def test_a_refused_replace_is_not_undone_so_what_it_would_replace_stays(kernel):
    """Only what succeeded is deleted: a neighbour the kernel refused to replace is not ours
    (a neighbour delete matches the address alone, so undoing it would take the other's)."""
    subnet = IPv4Network("10.1.3.0/24")
    theirs = {(INDEX, subnet.network_address): bytes.fromhex("0200000000ff")}
    kernel.neighbours.update(theirs)
    kernel.bad_macs.add(bytes.fromhex("020000000003"))
    batch = NetlinkBatch()
    _peer_requests(batch, subnet, bytes.fromhex("020000000003"))
    assert subnet in batch.commit()
    assert kernel.neighbours == theirs and kernel.routes == {}


def test_a_lost_ack_counts_as_done_and_is_undone(kernel):
    subnet = IPv4Network("10.1.3.0/24")
    kernel.mute.add(subnet.network_address)  # both of its acks lost; the kernel did both
    batch = NetlinkBatch()
    _peer_requests(batch, subnet)
    assert "netlink" in batch.commit()[subnet]
    assert kernel.routes == {} and kernel.neighbours == {}


def test_a_round_without_failures_sends_no_more_datagrams(kernel):
    batch = NetlinkBatch()
    for k in range(200):
        _peer_requests(batch, IPv4Network((int(NETWORK.network_address) + (k << 8), 24)))
    assert batch.commit() == {}
    assert kernel.datagrams == -(-400 // netlink_batch.CHUNK) and len(kernel.routes) == 200


# -- vxlan: neighbour, route, peer table --------------------------------------------------------

def test_vxlan_peer_the_table_refuses_never_reaches_the_kernel(kernel):
    """A /32 or a subnet outside the network: nothing left behind, and nothing after removal."""
    backend = _vxlan()
    refused = (_vxlan_lease("10.1.77.0/32"), _vxlan_lease("10.9.0.0/24"))
    good = _vxlan_lease("10.1.2.0/24")
    backend.handle(PeerChanges(added=(*refused, good)))
    assert set(backend.peers.failed) == {lease.subnet for lease in refused}
    assert "not a /24 subnet" in backend.peers.failed[refused[0].subnet]
    assert _vxlan_state(kernel, backend) == ({"10.1.2.0/24"}, {"10.1.2.0"}, {"10.1.2.0/24"})
    backend.handle(PeerChanges(removed=tuple(lease.subnet for lease in (*refused, good))))
    assert _vxlan_state(kernel, backend) == (set(), set(), set())


def test_vxlan_route_refused_by_the_kernel_leaves_no_neighbour(kernel):
    backend = _vxlan()
    bad, good = _vxlan_lease("10.1.77.0/24"), _vxlan_lease("10.1.2.0/24")
    kernel.bad_gateways.add(IPv4Address("10.1.77.0"))
    backend.handle(PeerChanges(added=(bad, good)))
    assert "route replace" in backend.peers.failed[bad.subnet]
    assert _vxlan_state(kernel, backend) == ({"10.1.2.0/24"}, {"10.1.2.0"}, {"10.1.2.0/24"})
    backend.handle(PeerChanges(removed=(bad.subnet,)))
    assert _vxlan_state(kernel, backend) == ({"10.1.2.0/24"}, {"10.1.2.0"}, {"10.1.2.0/24"})


def test_vxlan_peer_table_refusing_after_the_kernel_took_it_undoes_the_kernel(kernel,
                                                                             monkeypatch):
    """The table checks first, so only a bug makes it refuse later; still nothing stays."""
    backend = _vxlan()
    table = backend.pipeline.table
    set_peer = table.set_peer

    def refuse_one(subnet, public_ip, mac):
        if subnet == IPv4Network("10.1.3.0/24"):
            raise ValueError("table says no")
        set_peer(subnet, public_ip, mac)

    monkeypatch.setattr(table, "set_peer", refuse_one)
    backend.handle(PeerChanges(added=(_vxlan_lease("10.1.2.0/24"), _vxlan_lease("10.1.3.0/24"))))
    assert backend.peers.failed == {IPv4Network("10.1.3.0/24"): "table says no"}
    assert _vxlan_state(kernel, backend) == ({"10.1.2.0/24"}, {"10.1.2.0"}, {"10.1.2.0/24"})


def test_vxlan_change_that_fails_leaves_nothing_of_old_or_new(kernel):
    """Replace semantics: a changed lease the kernel refuses does not keep routing by the old
    one, and the other peers keep theirs."""
    backend = _vxlan()
    old, other = _vxlan_lease("10.1.3.0/24"), _vxlan_lease("10.1.2.0/24")
    backend.handle(PeerChanges(added=(old, other)))
    kernel.bad_macs.add(bytes.fromhex("020000000009"))
    backend.handle(PeerChanges(added=(_vxlan_lease("10.1.3.0/24", mac="02:00:00:00:00:09"),)))
    assert set(backend.peers.programmed) == {other.subnet}
    assert _vxlan_state(kernel, backend) == ({"10.1.2.0/24"}, {"10.1.2.0"}, {"10.1.2.0/24"})


# -- host-gw: one route per peer ------------------------------------------------------------

def test_hostgw_route_whose_answer_was_lost_is_deleted_again(kernel, monkeypatch):
    """Not programmed means not routed by: a route the kernel may hold for a failed peer goes."""
    from weft.host import netlink

    monkeypatch.setattr(netlink, "connected_networks", lambda _i: [IPv4Network("192.0.2.0/24")])
    backend = HostGwBackend(NETWORK_CONFIG, ExternalInterface(
        "eth0", INDEX, IPv4Address("192.0.2.1"), 1500, IPv4Address("192.0.2.1")))
    lost, good = (Lease(IPv4Network(s), LeaseAttrs(IPv4Address(ip), backend_type="host-gw"))
                  for s, ip in (("10.1.3.0/24", "192.0.2.3"), ("10.1.2.0/24", "192.0.2.2")))
    kernel.mute.add(IPv4Address("10.1.3.0"))
    backend.handle(PeerChanges(added=(lost, good)))
    assert set(backend.peers.failed) == {lost.subnet}
    assert kernel.routes == {good.subnet: (INDEX, IPv4Address("192.0.2.2"))}


# -- the peer table (udp's only per-peer step) --------------------------------------------------

def test_peer_table_check_refuses_what_set_peer_refuses_and_changes_nothing():
    table = PeerTable(NETWORK, 24)
    table.set_peer(IPv4Network("10.1.2.0/24"), IPv4Address("192.0.2.2"), None)
    before = (table.present.copy(), table.public_ip.copy(), table.sender_keys.copy())
    for subnet, ip, mac in (("10.1.77.0/32", "192.0.2.3", None), ("10.2.0.0/24", "192.0.2.3",
                            None), ("10.1.2.0/24", "0.0.0.0", None),
                            ("10.1.2.0/24", "192.0.2.3", b"\x02")):
        for call in (table.check_peer, table.set_peer):
            with pytest.raises(ValueError):
                call(IPv4Network(subnet), IPv4Address(ip), mac)
    after = (table.present, table.public_ip, table.sender_keys)
    assert all((a == b).all() for a, b in zip(before, after, strict=True))
    assert table.check_peer(IPv4Network("10.1.255.0/24"), IPv4Address("192.0.2.3"), None) == 255
