"""Dual-stack (EnableIPv6) in the lab: weft host-gw hosts and a host set up as flanneld's host-gw
sets one up (its lease written with flannel's combined key, routes via PublicIP and PublicIPv6)
carry pod traffic over IPv4 and IPv6 both ways; a backend weft cannot carry IPv6 on is refused."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyroute2 import IPRoute

from weft.control.lease import LeaseAttrs, subnet_key
from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import PREFIX, WEFT, Cluster
from weft.tools.lab.topology import Lab

IPV6_NETWORK = "fd10::/48"
FLANNEL_SUBNET = IPv4Network("10.1.200.0/24")
FLANNEL_SUBNET6 = IPv6Network("fd10:0:0:c8::/64")


def _route(ns: str, dst: str, via: str, family: int) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.route("replace", dst=dst, gateway=via, family=family)


def test_dual_stack_host_gw_pods_reach_each_other_over_both_families() -> None:
    with Lab(hosts=3, ipv6=True) as lab:
        cluster = Cluster(lab, backend="host-gw", ipv6_network=IPV6_NETWORK)
        cluster.start_etcd()
        flannel = cluster.host(2)  # what flanneld v0.20+ with EnableIPv6 writes for itself
        flannel.kind, flannel.subnet, flannel.subnet6 = "flannel", FLANNEL_SUBNET, FLANNEL_SUBNET6
        attrs = LeaseAttrs(IPv4Address(flannel.public_ip), lab.host_ips6[2], "host-gw")
        lab.etcdctl("put", f"{PREFIX}/subnets/{subnet_key(FLANNEL_SUBNET, FLANNEL_SUBNET6)}",
                    attrs.to_json())
        cluster.start_weft(0, "--ip-masq")
        cluster.start_weft(1)
        cluster.wait_leases()
        cluster.wait_synced()

        keys = lab.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--keys-only").split()
        for index in (0, 1):
            h = cluster.host(index)
            assert h.subnet6 is not None and h.subnet6.subnet_of(IPv6Network(IPV6_NETWORK))
            key = f"{PREFIX}/subnets/{subnet_key(h.subnet, h.subnet6)}"
            assert key in keys, keys
            value = json.loads(lab.etcdctl("get", key, "--print-value-only"))
            assert value["PublicIPv6"] == str(lab.host_ips6[index])
            env = cluster.subnet_file(index).read_text()
            assert f"FLANNEL_IPV6_NETWORK={IPV6_NETWORK}\n" in env
            assert f"FLANNEL_IPV6_SUBNET={h.subnet6[1]}/64\n" in env
            # flanneld's host-gw on the third host: routes via each weft host's addresses
            _route(flannel.ns, str(h.subnet), h.public_ip, 2)
            _route(flannel.ns, str(h.subnet6), str(lab.host_ips6[index]), 10)
        cluster.add_pods(1)

        failures = []
        for src in cluster.pods():
            for dst in cluster.pods():
                if src.host == dst.host:
                    continue
                if probe.ping(src.ns, str(dst.ip), count=2, timeout=1.0) == [None, None]:
                    failures.append(f"{src.ip} -> {dst.ip}")
                assert src.ip6 is not None and dst.ip6 is not None
                if probe.ping6(src.ns, str(dst.ip6), count=2, timeout=1.0) == [None, None]:
                    failures.append(f"{src.ip6} -> {dst.ip6}")
        assert not failures, (failures, cluster.host_log(0)[-2000:])

        # the kernel routes weft programmed: each peer's IPv6 half via its PublicIPv6
        routes = lab.call(cluster.host(0).ns, ["ip", "-6", "route"], check=True).stdout
        assert f"{FLANNEL_SUBNET6} via {lab.host_ips6[2]}" in routes, routes
        # --ip-masq: flanneld's masquerade rules for the IPv6 half too, through ip6tables
        nat6 = lab.call(cluster.host(0).ns, ["ip6tables-save", "-t", "nat"], check=True).stdout
        assert f"-A WEFT-POSTRTG -s {IPV6_NETWORK} ! -d ff00::/8" in nat6, nat6
        assert f"-d {cluster.host(0).subnet6} " in nat6


def test_enable_ipv6_with_a_backend_weft_cannot_carry_it_on_exits_2(tmp_path) -> None:
    with Lab(hosts=1, ipv6=True) as lab:
        cluster = Cluster(lab, backend="udp", ipv6_network=IPV6_NETWORK)
        cluster.start_etcd()
        done = lab.call(lab.hosts[0], [*WEFT, "run", "--iface", "eth0", "--subnet-file",
                                       str(tmp_path / "subnet.env"), "--control-socket",
                                       str(tmp_path / "weft.sock")], env=cluster.env)
        assert done.returncode == 2, done.stderr
        assert "EnableIPv6: backend 'udp' carries IPv4 only" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "subnet.env").exists()
    assert netns.list_prefixed(lab.prefix) == []


def test_ipv6_address_found_on_the_interface_is_published() -> None:
    """No --public-ipv6: the interface's global IPv6 address (never its fe80:: one)."""
    from weft.control.iface import find_external_interface

    with Lab(hosts=1, ipv6=True) as lab:
        iface = netns.call_in(lab.hosts[0], find_external_interface, "eth0", None, (), None,
                              True, None)
        assert iface.public_ipv6 == lab.host_ips6[0]
        given = IPv6Address("fd00:c0:0:2::99")
        iface = netns.call_in(lab.hosts[0], find_external_interface, "eth0", None, (), None,
                              True, given)
        assert iface.public_ipv6 == given


def test_a_deleted_ipv6_host_gw_route_is_put_back_and_shown() -> None:
    """`ip -6 route del` of a peer's IPv6 route: the repair pass puts it back within its
    period, counts it as route_ipv6, and `weft status` shows both halves of our lease."""
    import time

    with Lab(hosts=2, ipv6=True) as lab:
        cluster = Cluster(lab, backend="host-gw", ipv6_network=IPV6_NETWORK)
        cluster.start_etcd()
        cluster.start_weft(0)
        cluster.start_weft(1)
        cluster.wait_leases()
        cluster.wait_synced()
        peer = cluster.host(1)
        ns = cluster.host(0).ns
        route = f"{peer.subnet6} via {lab.host_ips6[1]}"
        deadline = time.time() + 15
        while route not in lab.call(ns, ["ip", "-6", "route"], check=True).stdout:
            assert time.time() < deadline, cluster.host_log(0)[-2000:]
            time.sleep(0.1)
        time.sleep(4)  # a few passes over the programmed state: none of them repairs anything
        assert not (cluster.status(0) or {}).get("repairs"), cluster.status(0)

        lab.call(ns, ["ip", "-6", "route", "del", str(peer.subnet6)], check=True)
        t0 = time.time()
        while (cluster.status(0) or {}).get("repairs", {}).get("route_ipv6", 0) < 1:
            assert time.time() - t0 < 10, (cluster.status(0), cluster.host_log(0)[-2000:])
            time.sleep(0.05)
        assert route in lab.call(ns, ["ip", "-6", "route"], check=True).stdout
        assert cluster.status(0)["repairs"] == {"route_ipv6": 1}  # the IPv4 route untouched

        status = lab.call(ns, [*WEFT, "status", "--control-socket", cluster.socket_path(0)],
                          check=True).stdout
        assert f"IPv6:      {cluster.host(0).subnet6}, public IPv6 {lab.host_ips6[0]}" in status
        assert "route_ipv6=1" in status
        assert f"{peer.subnet6}" in status and str(lab.host_ips6[1]) in status
