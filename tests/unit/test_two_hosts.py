"""Two hosts in one process, no root: pod packets cross from one host's device to the other's
through the vxlan and udp backends' real packet path, both ways, byte for byte.

A host here is what an overlay backend runs once its kernel work is done: the settings the
backends take from the config (weft.packet.encap: Encap.settings), the Pipeline built from them, our
lease set as local, each peer's lease programmed into the peer table as the backend programs
it (vxlan: vxlan.peer_vtep_mac, which checks VtepMAC, VNI and the table; udp: no VtepMAC), and
the Python driver (PyLoop) moving packets between a FakeDevice (the TUN/TAP) and a
LoopbackTransport (the sockets). Host k is 127.0.0.k: its PublicIP and its sockets' address.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

import pytest
from fakes.device import FakeDevice
from fakes.network import LoopbackTransport, free_port, host_address, udp_socket
from fakes.packets import ethernet, ipv4_udp, ttl_decremented
from polling import wait_for

from weft.backends.vxlan import peer_vtep_mac
from weft.control.config import NetworkConfig, parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.drivers import pyloop
from weft.drivers.pyloop import PyLoop
from weft.packet.encap import OverlaySettings, encap_of
from weft.packet.pipeline import INGRESS, Pipeline
from weft.packet.reasons import Reason

KINDS = ["vxlan", "udp"]
VNI = 7
IFACE_MTU = 1500


@dataclass
class Host:
    lease: Lease
    mac: bytes | None  # our VtepMAC (vxlan)
    settings: OverlaySettings
    pipeline: Pipeline
    device: FakeDevice
    transport: LoopbackTransport
    driver: PyLoop

    def pod(self, k: int) -> str:
        return str(self.lease.subnet[k])

    def drops(self) -> dict[str, int]:
        return self.pipeline.counter_summary()["drops"]


def network_config(kind: str, port: int) -> NetworkConfig:
    """The operator's config, through the parser as `weft config put` would take it."""
    backend = {"Type": kind, "Port": port, **({"VNI": VNI} if kind == "vxlan" else {})}
    return parse_config(json.dumps({"Network": "10.1.0.0/16", "SubnetLen": 24,
                                    "Backend": backend}))


def start_host(config: NetworkConfig, k: int) -> Host:
    settings = encap_of(config.backend_type).settings(config, IFACE_MTU)
    assert config.network is not None
    public_ip = host_address(k)
    subnet = IPv4Network(f"10.1.{k}.0/24")
    mac = bytes.fromhex(f"0200000000{k:02x}") if settings.encap.tap else None
    # What each backend publishes (lease_attrs): vxlan its VNI and VtepMAC, udp nothing more.
    attrs = (LeaseAttrs(IPv4Address(public_ip), backend_type="vxlan",
                        backend_data={"VNI": settings.vni, "VtepMAC": mac.hex(":")})
             if mac else LeaseAttrs(IPv4Address(public_ip)))
    pipeline = Pipeline(settings.encap.backend, config.network, config.subnet_len, vni=settings.vni,
                        port=settings.port, mtu=settings.mtu)
    pipeline.set_local(subnet, IPv4Address(public_ip), mac)
    device = FakeDevice()
    transport = LoopbackTransport(settings.encap, public_ip, settings.port)
    driver = PyLoop(pipeline, device.fileno(), transport)
    driver.start()
    return Host(Lease(subnet, attrs), mac, settings, pipeline, device, transport, driver)


def program(host: Host, peer: Lease) -> None:
    """The peer table entry the host's backend gives `peer`'s lease."""
    table = host.pipeline.table
    mac = peer_vtep_mac(peer, host.settings.vni, table) if host.settings.encap.tap else None
    table.set_peer(peer.subnet, peer.attrs.public_ip, mac)


def stop(host: Host) -> None:
    host.driver.stop()
    host.transport.close()
    host.device.close()


def check_clean(host: Host) -> None:
    assert not host.driver.crashed
    assert host.driver.errors == {"send": 0, "write": 0}
    assert host.transport.refused == []  # every outer header was one the path delivers


@pytest.fixture(params=KINDS)
def hosts(request) -> Iterator[tuple[Host, Host]]:
    config = network_config(request.param, free_port(host_address(1), host_address(2)))
    one = start_host(config, 1)
    two = start_host(config, 2)
    try:
        program(one, two.lease)
        program(two, one.lease)
        yield one, two
    finally:
        stop(one)
        stop(two)
    check_clean(one)
    check_clean(two)


def pod_packet(src: Host, dst: Host, ident: int) -> bytes:
    """What a pod on `src` sends to one on `dst`, as the kernel writes it into the device:
    for vxlan an Ethernet frame to the peer's VtepMAC (flannel's neighbour entry) from ours."""
    packet = ipv4_udp(src.pod(5), dst.pod(9), ttl=64, ident=ident, payload=b"pod %d" % ident)
    if src.mac is None:
        return packet
    assert dst.mac is not None
    return ethernet(dst.mac, src.mac, packet)


def arrives_as(sent: bytes, kind: str) -> bytes:
    """What the other host's device must give its pod: vxlan carries the frame unchanged (the
    kernels' routing took the TTL); udp decrements on send and again on receive (flannel)."""
    return sent if kind == "vxlan" else ttl_decremented(sent, 2)


def on_the_wire(sent: bytes, kind: str) -> bytes:
    """The UDP payload between the hosts: the VXLAN header and the frame, or the bare packet
    with one TTL taken."""
    if kind == "vxlan":
        return struct.pack("!B3xI", 0x08, VNI << 8) + sent
    return ttl_decremented(sent, 1)


def test_pod_packets_cross_both_ways_byte_for_byte(hosts):
    one, two = hosts
    kind = one.settings.encap.backend
    there = [pod_packet(one, two, ident) for ident in (1, 2, 3)]
    back = [pod_packet(two, one, ident) for ident in (4, 5)]
    one.device.write(there)
    assert two.device.read(len(there)) == [arrives_as(p, kind) for p in there]
    two.device.write(back)
    assert one.device.read(len(back)) == [arrives_as(p, kind) for p in back]
    assert one.transport.carried == [on_the_wire(p, kind) for p in there]
    assert two.transport.carried == [on_the_wire(p, kind) for p in back]
    for host, sent, received in ((one, 3, 2), (two, 2, 3)):
        counters = host.pipeline.counter_summary()
        assert counters["egress"]["forwarded"] == sent
        assert counters["ingress"]["forwarded"] == received
        assert counters["drops"] == {}


def test_a_datagram_from_no_peer_is_dropped_and_counted(hosts):
    """127.0.0.3 holds no lease: host 2 drops what it sends, counted as unknown_sender, and
    writes nothing of it into the device."""
    one, two = hosts
    kind = one.settings.encap.backend
    payload = on_the_wire(pod_packet(one, two, ident=8), kind)  # valid, but from a stranger
    with udp_socket(host_address(3)) as stranger:
        stranger.sendto(payload, (host_address(2), two.settings.port))
        assert wait_for(lambda: two.drops().get("unknown_sender") == 1)
    assert two.pipeline.drops[INGRESS][int(Reason.UNKNOWN_SENDER)] == 1
    _only_the_next_packet_arrives(one, two)


@pytest.mark.parametrize("hosts", ["vxlan"], indirect=True)  # udp carries no VNI
def test_vxlan_a_peers_datagram_with_another_vni_is_dropped_and_counted(hosts):
    """From host 1's own address, a well-formed VXLAN datagram of VNI 8: dropped as
    wrong_vni, not delivered."""
    one, two = hosts
    frame = pod_packet(one, two, ident=8)
    with udp_socket(host_address(1)) as peer:
        peer.sendto(struct.pack("!B3xI", 0x08, (VNI + 1) << 8) + frame,
                    (host_address(2), two.settings.port))
        assert wait_for(lambda: two.drops().get("wrong_vni") == 1)
    _only_the_next_packet_arrives(one, two)


def _only_the_next_packet_arrives(one: Host, two: Host) -> None:
    """A packet sent after the dropped one is the first and only thing host 2's device gets:
    had the dropped one been delivered, it would have come first."""
    packet = pod_packet(one, two, ident=9)
    one.device.write([packet])
    assert two.device.read() == [arrives_as(packet, one.settings.encap.backend)]
    assert two.device.unread() == []
    assert sum(two.drops().values()) == 1


def test_vxlan_a_peer_lease_of_another_vni_is_not_programmed():
    """The backend's own check: a lease of VNI 8 never reaches our table (flannel would put
    its neighbour and route in the kernel and lose its packets as the VNI differs)."""
    config = network_config("vxlan", free_port())
    settings = encap_of(config.backend_type).settings(config, IFACE_MTU)
    assert config.network is not None
    table = Pipeline("vxlan", config.network, 24, vni=settings.vni).table
    lease = Lease(IPv4Network("10.1.3.0/24"),
                  LeaseAttrs(IPv4Address("127.0.0.3"), backend_type="vxlan",
                             backend_data={"VNI": VNI + 1, "VtepMAC": "02:00:00:00:00:03"}))
    with pytest.raises(ValueError, match=f"peer VNI {VNI + 1} differs from ours \\({VNI}\\)"):
        peer_vtep_mac(lease, settings.vni, table)
    assert len(table) == 0


def test_stop_wakes_the_threads_instead_of_waiting_for_their_poll(monkeypatch):
    # With the poll made long, only stop()'s wake-up can end the threads in time.
    monkeypatch.setattr(pyloop, "POLL_SECONDS", 10.0)
    config = network_config("udp", free_port(host_address(1)))
    host = start_host(config, 1)
    try:
        time.sleep(0.1)  # both threads asleep in select() now
        asked = time.monotonic()
        host.driver.stop()
        assert time.monotonic() - asked < 1.0
        assert not any(thread.is_alive() for thread in host.driver.threads)
    finally:
        stop(host)
