"""The repair pass without root: a fake kernel (dumps as netlink.dump_kernel returns them, and
the replace calls recorded) and a fake backend."""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest
from fakes.netlink import FakeNetlink
from polling import wait_for
from status_samples import FULL, VXLAN, WAITING

from weft.backends.hostgw import HostGwBackend
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.peer_sync import PeerChanges
from weft.host import netlink, reconcile
from weft.host.reconcile import (
    Device,
    KernelView,
    Neighbour,
    Reconciler,
    Route,
    Wanted,
    device_problems,
    message_types,
    missing_neighbours,
    missing_routes,
    new_public_address,
)
from weft.observe.metrics import render_metrics
from weft.observe.status_text import format_status
from weft.status import RepairStatus

pytestmark = pytest.mark.unit

ETH0 = ExternalInterface("eth0", 2, IPv4Address("192.0.2.10"), 1500, IPv4Address("192.0.2.10"))
TAP = Device("weft.1", 5, IPv4Address("10.1.7.0"), 1450, "02:00:00:00:00:07")
PEER_NET = IPv4Network("10.1.8.0/24")
PEER_GW = IPv4Address("10.1.8.0")
PEER_MAC = "02:00:00:00:00:08"
NETWORK = IPv4Network("10.1.0.0/16")


def healthy_dump() -> dict:
    return {
        "links": [{"index": 2, "name": "eth0", "up": True, "mtu": 1500, "mac": "aa:bb:cc:00:00:01"},
                  {"index": 5, "name": "weft.1", "up": True, "mtu": 1450, "mac": TAP.mac}],
        "addrs": [{"index": 2, "address": "192.0.2.10", "prefixlen": 24},
                  {"index": 5, "address": "10.1.7.0", "prefixlen": 32}],
        "routes": [{"dst": "10.1.0.0/16", "oif": 5, "gateway": None, "flags": 0},
                   {"dst": "10.1.8.0/24", "oif": 5, "gateway": "10.1.8.0", "flags": 4},
                   {"dst": "192.0.2.0/24", "oif": 2, "gateway": None, "flags": 0}],
        "neighbours": [{"ifindex": 5, "ip": "10.1.8.0", "mac": PEER_MAC, "state": 0x80},
                       {"ifindex": 2, "ip": "192.0.2.1", "mac": "aa:aa:aa:aa:aa:aa",
                        "state": 0x02}],
    }


def vxlan_wanted(external: ExternalInterface = ETH0, device: Device = TAP) -> Wanted:
    return Wanted(external,
                  (Route(NETWORK, device.index), Route(PEER_NET, device.index, PEER_GW, True)),
                  (Neighbour(PEER_GW, PEER_MAC, device.index),), device)


# -- the comparisons ------------------------------------------------------------------------------

def test_a_healthy_kernel_needs_nothing():
    view = KernelView(healthy_dump())
    wanted = vxlan_wanted()
    assert missing_routes(wanted, view) == []
    assert missing_neighbours(wanted, view) == []
    assert device_problems(TAP, view) == []
    assert new_public_address(ETH0, view) is None


def test_a_deleted_route_or_one_with_another_gateway_or_without_onlink_is_missing():
    dump = healthy_dump()
    dump["routes"] = [r for r in dump["routes"] if r["dst"] != "10.1.8.0/24"]
    assert missing_routes(vxlan_wanted(), KernelView(dump)) == [
        Route(PEER_NET, 5, PEER_GW, True)]
    for change in ({"gateway": "10.1.9.0"}, {"flags": 0}, {"oif": 2}):
        dump = healthy_dump()
        dump["routes"][1].update(change)
        assert missing_routes(vxlan_wanted(), KernelView(dump)) == [
            Route(PEER_NET, 5, PEER_GW, True)], change


def test_a_neighbour_gone_changed_or_no_longer_permanent_is_missing():
    for change in (None, {"mac": "02:00:00:00:00:99"}, {"state": 0x02}):
        dump = healthy_dump()
        if change is None:
            dump["neighbours"].pop(0)
        else:
            dump["neighbours"][0].update(change)
        assert missing_neighbours(vxlan_wanted(), KernelView(dump)) == [
            Neighbour(PEER_GW, PEER_MAC, 5)], change
    dump = healthy_dump()
    dump["neighbours"][0]["mac"] = PEER_MAC.upper()  # same MAC, other spelling
    assert missing_neighbours(vxlan_wanted(), KernelView(dump)) == []


def test_device_gone_renamed_down_or_without_its_address():
    dump = healthy_dump()
    dump["links"].pop(1)
    assert device_problems(TAP, KernelView(dump)) == ["device"]
    dump = healthy_dump()
    dump["links"][1]["index"] = 9  # another device took the name: ours is gone
    assert device_problems(TAP, KernelView(dump)) == ["device"]
    dump = healthy_dump()
    dump["links"][1]["up"] = False
    dump["addrs"].pop(1)
    assert device_problems(TAP, KernelView(dump)) == ["link", "address"]
    dump = healthy_dump()
    dump["links"][1]["mac"] = "02:00:00:00:00:99"
    assert device_problems(TAP, KernelView(dump)) == ["link"]
    tun = Device("weft0", 5, IPv4Address("10.1.7.0"), 1450)  # a TUN has no MAC to keep
    dump = healthy_dump()
    dump["links"][1].update(name="weft0", mac=None)
    assert device_problems(tun, KernelView(dump)) == []


def test_public_address_change_only_when_a_new_one_is_there_and_not_overridden():
    dump = healthy_dump()
    dump["addrs"][0]["address"] = "192.0.2.30"
    assert new_public_address(ETH0, KernelView(dump)) == IPv4Address("192.0.2.30")
    dump["addrs"].pop(0)  # no address at all (a DHCP renewal in progress): wait
    assert new_public_address(ETH0, KernelView(dump)) is None
    nat = ExternalInterface("eth0", 2, IPv4Address("192.0.2.10"), 1500,
                            IPv4Address("198.51.100.1"))  # --public-ip: the operator's word
    dump = healthy_dump()
    dump["addrs"][0]["address"] = "192.0.2.30"
    assert new_public_address(nat, KernelView(dump)) is None


# -- a pass ---------------------------------------------------------------------------------------

class FakeKernel:
    def __init__(self, dump: dict) -> None:
        self.dump = dump
        self.calls: list[tuple] = []
        self.refuse_routes: Exception | None = None

    def dump_kernel(self, ipv6: bool = False) -> dict:
        self.asked_ipv6 = ipv6
        return self.dump

    def route_replace(self, dst, *, oif, gateway=None, onlink=False) -> None:
        if self.refuse_routes is not None:
            raise self.refuse_routes
        self.calls.append(("route", dst, oif, gateway, onlink))

    def neigh_replace(self, ip, mac, *, ifindex) -> None:
        self.calls.append(("neigh", ip, mac, ifindex))


class FakeBackend:
    def __init__(self, kernel: FakeKernel) -> None:
        self.lock = threading.RLock()
        self.kernel = kernel
        self.device = TAP
        self.external = ETH0
        self.events: list = []

    def wanted(self) -> Wanted:
        return vxlan_wanted(self.external, self.device)

    def setup_device(self) -> None:
        self.events.append("setup")

    def recreate_device(self) -> None:
        self.events.append("recreate")
        self.device = Device(TAP.name, 11, TAP.address, TAP.mtu, TAP.mac)
        self.kernel.dump = healthy_dump()  # a fresh device: up, addressed, nothing else
        self.kernel.dump["links"][1]["index"] = 11
        self.kernel.dump["addrs"][1]["index"] = 11
        self.kernel.dump["routes"] = self.kernel.dump["routes"][2:]
        self.kernel.dump["neighbours"] = self.kernel.dump["neighbours"][1:]

    def public_ip_changed(self, address) -> None:
        self.events.append(("public_ip", address))


def test_a_pass_over_a_healthy_kernel_changes_nothing():
    kernel = FakeKernel(healthy_dump())
    backend = FakeBackend(kernel)
    assert Reconciler(backend, kernel=kernel).run_once() == {}
    assert kernel.calls == [] and backend.events == []


def test_a_pass_restores_routes_and_neighbours_and_counts_them():
    kernel = FakeKernel(healthy_dump())
    kernel.dump["routes"] = kernel.dump["routes"][2:]
    kernel.dump["neighbours"] = kernel.dump["neighbours"][1:]
    reconciler = Reconciler(FakeBackend(kernel), kernel=kernel)
    assert reconciler.run_once() == {"route": 2, "neighbour": 1}
    assert ("neigh", PEER_GW, PEER_MAC, 5) in kernel.calls
    assert ("route", PEER_NET, 5, PEER_GW, True) in kernel.calls
    assert ("route", NETWORK, 5, None, False) in kernel.calls
    assert reconciler.status().repairs == {"route": 2, "neighbour": 1}


def test_a_deleted_device_is_recreated_then_everything_on_it_restored():
    kernel = FakeKernel(healthy_dump())
    kernel.dump["links"].pop(1)
    kernel.dump["routes"] = kernel.dump["routes"][2:]
    kernel.dump["neighbours"] = kernel.dump["neighbours"][1:]
    kernel.dump["addrs"].pop(1)
    backend = FakeBackend(kernel)
    done = Reconciler(backend, kernel=kernel).run_once()
    assert done == {"device": 1, "route": 2, "neighbour": 1}
    assert backend.events == ["recreate"]
    assert {c[2] if c[0] == "route" else c[3] for c in kernel.calls} == {11}  # the new index


def test_link_and_address_are_one_setup_counted_twice():
    kernel = FakeKernel(healthy_dump())
    kernel.dump["links"][1]["up"] = False
    kernel.dump["addrs"].pop(1)
    backend = FakeBackend(kernel)
    assert Reconciler(backend, kernel=kernel).run_once() == {"link": 1, "address": 1}
    assert backend.events == ["setup"]


def test_a_refused_repair_is_retried_and_logged_once(caplog):
    kernel = FakeKernel(healthy_dump())
    kernel.dump["routes"] = [r for r in kernel.dump["routes"] if r["dst"] != "10.1.8.0/24"]
    kernel.refuse_routes = OSError(101, "Network is unreachable")
    reconciler = Reconciler(FakeBackend(kernel), kernel=kernel)
    with caplog.at_level("WARNING", logger=reconcile.__name__):
        for _ in range(3):
            assert reconciler.run_once() == {}
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 1
    assert list(reconciler.status().failing) == [f"route {PEER_NET} via {PEER_GW} "
                                                            f"dev #5"]
    kernel.refuse_routes = None  # the interface is back
    assert reconciler.run_once() == {"route": 1}
    assert reconciler.status() == RepairStatus(repairs={"route": 1}, failing={})


def test_a_moved_public_address_is_reported_to_the_backend():
    kernel = FakeKernel(healthy_dump())
    kernel.dump["addrs"][0]["address"] = "192.0.2.30"
    backend = FakeBackend(kernel)
    assert Reconciler(backend, kernel=kernel).run_once() == {"public_ip": 1}
    assert backend.events == [("public_ip", IPv4Address("192.0.2.30"))]


def test_notifications_that_wake_a_pass():
    def msg(kind: int, body: bytes = b"") -> bytes:
        length = 16 + len(body)
        return struct.pack("=IHHII", length, kind, 0, 0, 0) + body + bytes(-length % 4)

    data = msg(24, b"x" * 5) + msg(25) + msg(17)
    assert message_types(data) == [24, 25, 17]
    assert message_types(b"\x00" * 8) == []


# -- IPv6 (host-gw dual-stack): compared in its own family, counted apart ----------------------

PEER6_NET = IPv6Network("fd10:0:0:8::/64")
PEER6_GW = IPv6Address("fd00::8")


def dual_stack_dump() -> dict:
    dump = healthy_dump()
    dump["routes"] += [
        {"family": 6, "dst": "fd10:0:0:8::/64", "oif": 2, "gateway": "fd00::8", "flags": 0},
        {"family": 6, "dst": "fd00::/64", "oif": 2, "gateway": None, "flags": 0},
        {"family": 6, "dst": "::/0", "oif": 2, "gateway": "fe80::1", "flags": 0}]
    return dump


def hostgw_wanted() -> Wanted:
    return Wanted(ETH0, (Route(PEER_NET, 2, IPv4Address("192.0.2.8")),
                         Route(PEER6_NET, 2, PEER6_GW)))


def test_an_ipv6_route_present_compares_equal_and_a_missing_one_is_missing():
    dump = dual_stack_dump()
    dump["routes"][1].update(oif=2, gateway="192.0.2.8", flags=0)
    assert missing_routes(hostgw_wanted(), KernelView(dump)) == []
    dump["routes"][3]["gateway"] = "fd00:0:0:0:0:0:0:8"  # another spelling, the same address
    assert missing_routes(hostgw_wanted(), KernelView(dump)) == []
    for change in ({"gateway": "fd00::9"}, {"oif": 5}):
        changed = dual_stack_dump()
        changed["routes"][1].update(oif=2, gateway="192.0.2.8", flags=0)
        changed["routes"][3].update(change)
        assert missing_routes(hostgw_wanted(), KernelView(changed)) == [
            Route(PEER6_NET, 2, PEER6_GW)], change


def test_ipv6_is_dumped_only_for_a_backend_that_programs_some():
    kernel = FakeKernel(healthy_dump())
    Reconciler(FakeBackend(kernel), kernel=kernel).run_once()
    assert kernel.asked_ipv6 is False  # an IPv4-only pass: the dumps it always made
    assert hostgw_wanted().ipv6 and not vxlan_wanted().ipv6
    assert Wanted(ETH0, neighbours=(Neighbour(PEER6_GW, PEER_MAC, 5),)).ipv6


def _dual_stack_hostgw(kernel: FakeNetlink, monkeypatch) -> HostGwBackend:
    """host-gw with EnableIPv6 on eth0 (192.0.2.1, fd00::1), one dual-stack peer programmed
    through the fake kernel."""
    segments = {2: [IPv4Network("192.0.2.0/24")], 10: [IPv6Network("fd00::/64")]}
    monkeypatch.setattr(netlink, "connected_networks",
                        lambda _index, family=2: segments[family])
    config = SimpleNamespace(network=NETWORK, subnet_len=24, enable_ipv6=True)
    backend = HostGwBackend(config, ExternalInterface(
        "eth0", 2, IPv4Address("192.0.2.1"), 1500, IPv4Address("192.0.2.1"),
        public_ipv6=IPv6Address("fd00::1")))
    peer = Lease(PEER_NET, LeaseAttrs(IPv4Address("192.0.2.8"), PEER6_GW, "host-gw"),
                 ipv6_subnet=PEER6_NET)
    backend.handle(PeerChanges(added=(peer,)))
    assert kernel.routes == {PEER_NET: (2, IPv4Address("192.0.2.8")), PEER6_NET: (2, PEER6_GW)}
    return backend


def test_hostgw_dual_stack_routes_as_programmed_need_no_repair(monkeypatch):
    kernel = FakeNetlink().install(monkeypatch)
    reconciler = Reconciler(_dual_stack_hostgw(kernel, monkeypatch), kernel=kernel)
    assert reconciler.run_once() == {}
    assert reconciler.run_once() == {}  # no churn: nothing put back pass after pass
    assert kernel.repaired == [] and kernel.dumps == [True, True]


def test_hostgw_deleted_ipv6_route_is_put_back_and_counted_apart(monkeypatch):
    kernel = FakeNetlink().install(monkeypatch)
    reconciler = Reconciler(_dual_stack_hostgw(kernel, monkeypatch), kernel=kernel)
    del kernel.routes[PEER6_NET]  # ip -6 route del fd10:0:0:8::/64
    assert reconciler.run_once() == {"route_ipv6": 1}
    assert kernel.routes[PEER6_NET] == (2, PEER6_GW)
    del kernel.routes[PEER_NET]
    assert reconciler.run_once() == {"route": 1}  # the IPv4 half as it always was counted
    assert reconciler.status().repairs == {"route": 1, "route_ipv6": 1}


# -- where repairs show ---------------------------------------------------------------------------

def test_repairs_in_metrics_and_status_text():
    repair = RepairStatus(repairs={"route": 3, "device": 1},
                          failing={"route 10.1.8.0/24 via 192.0.2.11 dev #2": "unreachable"})
    status = replace(FULL, backend=replace(VXLAN, repair=repair))
    metrics = render_metrics(status)
    assert 'weft_repairs_total{what="device"} 1' in metrics
    assert 'weft_repairs_total{what="route"} 3' in metrics
    text = format_status(status)
    assert "repairs:   device=1, route=3" in text
    assert "failing: route 10.1.8.0/24 via 192.0.2.11 dev #2: unreachable" in text
    assert "repairs:   none" in format_status(WAITING)


def test_stop_ends_both_threads_at_once():
    # The notification thread sleeps in select() with no timeout: only stop()'s wake-up
    # ends it, and the pass loop's long interval must not hold stop() up either.
    kernel = FakeKernel(healthy_dump())
    reconciler = Reconciler(FakeBackend(kernel), interval=60.0, kernel=kernel)
    reconciler.start()
    assert wait_for(lambda: reconciler.passes >= 1)
    time.sleep(0.05)  # both threads asleep now: the pass loop on its interval
    asked = time.monotonic()
    reconciler.stop()
    assert time.monotonic() - asked < 0.2
    assert not any(thread.is_alive() for thread in reconciler._threads)
    reconciler.stop()  # a second stop is harmless
