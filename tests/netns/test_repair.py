"""Kernel state repair with real traffic: break what weft programmed in a lab host, then see
pod-to-pod traffic come back and the repair counted in `weft status` and /metrics.

Each test prints the time from the break to the counted repair and to the first echo reply
(run with -s to see them).
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

import pytest
from pyroute2 import IPRoute

from weft.control.lease import LeaseAttrs, subnet_key
from weft.observe.metrics import render_metrics
from weft.status import DaemonStatus
from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import Lab

pytestmark = pytest.mark.netns

REPAIR_WAIT = 15.0  # the promise is 10 s; the cap leaves room for a slow machine


ALL = ["vxlan", "udp", "host-gw"]
OVERLAYS = ["vxlan", "udp"]  # the backends with a device of their own


@pytest.fixture(scope="module")
def cluster(request):
    """One lab per backend for the tests below (each leaves it repaired); chosen by
    parametrizing `cluster` indirectly."""
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=request.param)
        cluster.start(pods_per_host=1)
        yield cluster


def _in_host(cluster: Cluster, host: int, fn, *args):
    return netns.call_in(cluster.host(host).ns, fn, *args)


def _repairs(cluster: Cluster, host: int) -> dict:
    return dict((cluster.status(host) or {}).get("repairs") or {})


def _wait_repaired(cluster: Cluster, host: int, what: str, before: int, t0: float) -> float:
    """Seconds from t0 until repairs[what] rose above `before`."""
    deadline = t0 + REPAIR_WAIT
    while time.time() < deadline:
        if _repairs(cluster, host).get(what, 0) > before:
            return time.time() - t0
        time.sleep(0.05)
    raise AssertionError(f"no {what} repair within {REPAIR_WAIT}s: {_repairs(cluster, host)}\n"
                         f"{cluster.host_log(host)[-3000:]}")


def _reachable_after(cluster: Cluster, src_host: int, dst_host: int, t0: float) -> float:
    src, dst = cluster.host(src_host).pods[0], cluster.host(dst_host).pods[0]
    probe.wait_reachable(src.ns, str(dst.ip), timeout=max(REPAIR_WAIT - (time.time() - t0), 1))
    return time.time() - t0


def _report(what: str, backend: str, repaired: float, reachable: float) -> None:
    print(f"\nREPAIR {what:<12} {backend:<8} repaired {repaired:6.2f}s  "
          f"ping again {reachable:6.2f}s")


def _check_repair(cluster: Cluster, what: str, break_it, host: int = 0) -> None:
    """Traffic works, break it in `host`, then the repair is counted and traffic works again."""
    _reachable_after(cluster, 0, 1, time.time())
    before = _repairs(cluster, host).get(what, 0)
    t0 = time.time()
    _in_host(cluster, host, break_it)
    repaired = _wait_repaired(cluster, host, what, before, t0)
    reachable = _reachable_after(cluster, 0, 1, t0)
    _report(what, cluster.backend, repaired, reachable)
    metrics = render_metrics(DaemonStatus.from_json(cluster.status(host)))
    assert f'weft_repairs_total{{what="{what}"}}' in metrics
    text = cluster.weft_cli(host, "status", "--control-socket", cluster.socket_path(host))
    assert f"{what}=" in text.stdout, text.stdout


# -- what gets broken, run inside the host namespace ------------------------------------------

def _delete_route(dst: str) -> None:
    with IPRoute() as ipr:
        ipr.route("del", dst=dst)


def _delete_neighbour(ip: str, device: str) -> None:
    with IPRoute() as ipr:
        ipr.neigh("del", dst=ip, ifindex=ipr.link_lookup(ifname=device)[0])


def _delete_addresses(device: str) -> None:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=device)[0]
        for addr in ipr.get_addr(family=2, index=index):
            ipr.addr("del", index=index, address=addr.get_attr("IFA_ADDRESS"),
                     prefixlen=addr["prefixlen"])


def _delete_link(device: str) -> None:
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=device)[0])


def _link_state(device: str, state: str) -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=device)[0], state=state)


def _link_facts(device: str) -> dict:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=device)
        if not found:
            return {}
        link = ipr.get_links(found[0])[0]
        return {"index": found[0], "mac": link.get_attr("IFLA_ADDRESS"),
                "mtu": link.get_attr("IFLA_MTU"),
                "addrs": [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2,
                                                                            index=found[0])]}


def _neighbour_mac(ip: str, device: str) -> str | None:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=device)[0]
        for n in ipr.get_neighbours(family=2, ifindex=index):
            if n.get_attr("NDA_DST") == ip:
                return n.get_attr("NDA_LLADDR")
    return None


def _replace_address(device: str, old: str, new: str, prefixlen: int) -> None:
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=device)[0]
        # Deleting a primary address takes its secondaries along (promote_secondaries is off
        # by default), so the old one goes first, as a DHCP client with a new lease does.
        ipr.addr("del", index=index, address=old, prefixlen=prefixlen)
        ipr.addr("add", index=index, address=new, prefixlen=prefixlen)


def _device(cluster: Cluster) -> str:
    return "weft.1" if cluster.backend == "vxlan" else "weft0"


# -- the conditions -----------------------------------------------------------------------------

@pytest.mark.parametrize("cluster", ALL, indirect=True)
def test_deleted_route_is_restored(cluster):
    # vxlan and host-gw: the route to the peer's subnet; udp programs only the network route.
    dst = str(cluster.network if cluster.backend == "udp" else cluster.host(1).subnet)
    _check_repair(cluster, "route", lambda: _delete_route(dst))


@pytest.mark.parametrize("cluster", ["vxlan"], indirect=True)  # the one with neighbours
def test_deleted_neighbour_is_restored(cluster):
    gateway = str(cluster.host(1).subnet.network_address)
    _check_repair(cluster, "neighbour", lambda: _delete_neighbour(gateway, "weft.1"))


@pytest.mark.parametrize("cluster", OVERLAYS, indirect=True)
def test_deleted_device_address_is_restored(cluster):
    device = _device(cluster)
    _check_repair(cluster, "address", lambda: _delete_addresses(device))
    facts = _in_host(cluster, 0, _link_facts, device)
    assert facts["addrs"] == [str(cluster.host(0).subnet.network_address)]


@pytest.mark.parametrize("cluster", OVERLAYS, indirect=True)
def test_deleted_device_is_recreated_with_its_mac_and_mtu(cluster):
    device = _device(cluster)
    old = _in_host(cluster, 0, _link_facts, device)
    _check_repair(cluster, "device", lambda: _delete_link(device))
    new = _in_host(cluster, 0, _link_facts, device)
    assert new["index"] != old["index"]  # really a new device
    assert (new["mtu"], new["addrs"]) == (old["mtu"], old["addrs"])
    if cluster.backend == "vxlan":
        assert new["mac"] == old["mac"]  # our published VtepMAC
    # both directions, and TCP, across the new device
    src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
    result = probe.tcp_transfer(dst.ns, src.ns, str(src.ip), nbytes=2 * 2**20, timeout=30)
    assert result["sha256_match"], result
    status = cluster.status(0)
    assert status["datapath"]["mode"] == "offload" and not status["datapath"]["errors"].get(
        "fatal_egress"), status["datapath"]


@pytest.mark.parametrize("cluster", ALL, indirect=True)
def test_external_interface_down_and_up(cluster):
    before = _repairs(cluster, 0).get("route", 0)
    _reachable_after(cluster, 0, 1, time.time())
    _in_host(cluster, 0, _link_state, "eth0", "down")
    time.sleep(1.0)
    t0 = time.time()
    _in_host(cluster, 0, _link_state, "eth0", "up")
    reachable = _reachable_after(cluster, 0, 1, t0)
    if cluster.backend == "host-gw":  # its routes via eth0 went with the link
        repaired = _wait_repaired(cluster, 0, "route", before, t0)
        _report("eth0 up", cluster.backend, repaired, reachable)
    else:
        _report("eth0 up", cluster.backend, 0.0, reachable)


# -- leases that change: our PublicIP, a peer's VtepMAC -----------------------------------------

def _lease_attrs(cluster: Cluster, host: int) -> LeaseAttrs:
    out = cluster.lab.etcdctl("get", f"{PREFIX}/subnets/{subnet_key(cluster.host(host).subnet)}",
                              "--print-value-only")
    return LeaseAttrs.from_json(out.strip())


def _peer(cluster: Cluster, host: int, subnet) -> dict:
    peers = (cluster.status(host) or {}).get("peers") or []
    return next((p for p in peers if p["subnet"] == str(subnet)), {})


@pytest.mark.parametrize("backend", ALL)
def test_changed_external_address_is_republished_and_followed(backend):
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=backend)
        cluster.start(pods_per_host=1)
        _reachable_after(cluster, 0, 1, time.time())
        old, new = cluster.host(1).public_ip, "192.0.2.31"
        t0 = time.time()
        netns.call_in(cluster.host(1).ns, _replace_address, "eth0", old, new, 24)
        repaired = _wait_repaired(cluster, 1, "public_ip", 0, t0)
        # The etcd connection from the old address is dead without an error: gRPC's pings
        # (every 10 s, 5 s to answer) find it, then the lease goes out from the new address.
        deadline = t0 + 45
        while time.time() < deadline:
            if (_lease_attrs(cluster, 1).public_ip == IPv4Address(new)
                    and _peer(cluster, 0, cluster.host(1).subnet).get("public_ip") == new):
                break
            time.sleep(0.1)
        assert _lease_attrs(cluster, 1).public_ip == IPv4Address(new), cluster.host_log(1)[-3000:]
        assert cluster.status(1)["lease"]["public_ip"] == new
        assert _peer(cluster, 0, cluster.host(1).subnet).get("public_ip") == new
        published = time.time() - t0
        reachable = _reachable_after(cluster, 0, 1, time.time()) + published
        _reachable_after(cluster, 1, 0, time.time())
        _report("public_ip", backend, repaired, reachable)
        print(f"       lease republished and followed by the peer after {published:.2f}s")


def test_peer_with_a_new_vtep_mac_is_followed():
    """A peer whose device was lost over a restart publishes a new VtepMAC: our neighbour
    entry and the fast path's peer table follow it."""
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start(pods_per_host=1)
        _reachable_after(cluster, 0, 1, time.time())
        subnet = cluster.host(1).subnet
        old_mac = _lease_attrs(cluster, 1).vtep_mac
        assert cluster.stop_weft(1) == 0
        netns.call_in(cluster.host(1).ns, _delete_link, "weft.1")
        t0 = time.time()
        cluster.start_weft(1)
        deadline = t0 + 60  # the new daemon may compile its loops first
        while time.time() < deadline:
            new_mac = _lease_attrs(cluster, 1).vtep_mac
            if new_mac != old_mac and _peer(cluster, 0, subnet).get("vtep_mac") == new_mac:
                break
            time.sleep(0.1)
        assert new_mac != old_mac
        assert _peer(cluster, 0, subnet).get("vtep_mac") == new_mac  # the fast path's table
        gateway = str(subnet.network_address)
        assert netns.call_in(cluster.host(0).ns, _neighbour_mac, gateway, "weft.1") == new_mac
        cluster.wait_synced()
        _reachable_after(cluster, 0, 1, time.time())
