"""Dual-stack vxlan (EnableIPv6): a weft host beside a host whose kernel VXLAN devices are set up
as flanneld sets up flannel.1 and flannel-v6.1 (the reference peer), and a weft-weft pair, carry
pod traffic over IPv4 and IPv6 both ways; TCP over IPv6 crosses intact."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Network

from pyroute2 import IPRoute

from weft.control.lease import LeaseAttrs, subnet_key
from weft.tools.lab import kernel_vxlan, netns, probe
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import Lab

IPV6_NETWORK = "fd10::/48"
FLANNEL_SUBNET = IPv4Network("10.1.200.0/24")
FLANNEL_SUBNET6 = IPv6Network("fd10:0:0:c8::/64")
TWO_MB = 2 * 2**20


def _unreached(cluster: Cluster) -> list[str]:
    failures = []
    for src in cluster.pods():
        for dst in cluster.pods():
            if src.host == dst.host:
                continue
            if probe.ping(src.ns, str(dst.ip), count=3, timeout=1.0) == [None] * 3:
                failures.append(f"{src.ip} -> {dst.ip}")
            assert src.ip6 is not None and dst.ip6 is not None
            if probe.ping6(src.ns, str(dst.ip6), count=3, timeout=1.0) == [None] * 3:
                failures.append(f"{src.ip6} -> {dst.ip6}")
    return failures


def _lease_of(cluster: Cluster, index: int) -> LeaseAttrs:
    h = cluster.host(index)
    key = f"{PREFIX}/subnets/{subnet_key(h.subnet, h.subnet6)}"
    return LeaseAttrs.from_json(cluster.lab.etcdctl("get", key, "--print-value-only").strip())


def test_weft_and_a_flanneld_style_kernel_vxlan_host_carry_both_families() -> None:
    with Lab(hosts=2, ipv6=True) as lab:
        cluster = Cluster(lab, backend="vxlan", ipv6_network=IPV6_NETWORK, datapath="plain")
        cluster.start_etcd()
        flannel = cluster.host(1)
        flannel.kind, flannel.subnet, flannel.subnet6 = "flannel", FLANNEL_SUBNET, FLANNEL_SUBNET6
        flannel.mtu = 1450
        mac, mac6 = kernel_vxlan.random_mac(), kernel_vxlan.random_mac()
        flannel.vtep_mac = mac
        kernel_vxlan.setup_device(flannel.ns, 1, 8472, flannel.public_ip, FLANNEL_SUBNET, 1450,
                                  mac)
        kernel_vxlan.setup_device6(flannel.ns, 1, 8472, str(lab.host_ips6[1]), FLANNEL_SUBNET6,
                                   mac6)
        attrs = LeaseAttrs(IPv4Address(flannel.public_ip), lab.host_ips6[1], "vxlan",
                           {"VNI": 1, "VtepMAC": mac}, {"VNI": 1, "VtepMAC": mac6})
        lab.etcdctl("put", f"{PREFIX}/subnets/{subnet_key(FLANNEL_SUBNET, FLANNEL_SUBNET6)}",
                    attrs.to_json())
        cluster.start_weft(0)
        cluster.wait_leases()
        cluster.wait_synced()
        weft = cluster.host(0)
        ours = _lease_of(cluster, 0)
        assert ours.public_ipv6 == lab.host_ips6[0]
        v6_mac = ours.backend_v6_data["VtepMAC"]
        assert ours.backend_v6_data == {"VNI": 1, "VtepMAC": v6_mac} and v6_mac != ours.vtep_mac
        # flanneld on the kernel host, on our lease: both halves
        kernel_vxlan.add_peer(flannel.ns, 1, weft.subnet, ours.vtep_mac, weft.public_ip)
        kernel_vxlan.add_peer6(flannel.ns, 1, weft.subnet6, v6_mac, str(lab.host_ips6[0]))

        # weft's device is flannel-v6.1's twin: MTU, address, neighbour, onlink route
        with IPRoute(netns=weft.ns) as ipr:
            [link] = ipr.get_links(ifname="weft-v6.1")
            kernel_mtu = ipr.get_links(ifname="eth0")[0].get_attr("IFLA_MTU") - 70
            assert link.get_attr("IFLA_MTU") == kernel_mtu
            assert link.get_attr("IFLA_ADDRESS") == v6_mac
        with IPRoute(netns=flannel.ns) as ipr:
            [kernel] = ipr.get_links(ifname="flannel-v6.1")
            assert kernel.get_attr("IFLA_MTU") == kernel_mtu  # what flanneld's device gets
        routes = lab.call(weft.ns, ["ip", "-6", "route"], check=True).stdout
        assert (f"{FLANNEL_SUBNET6} via {FLANNEL_SUBNET6.network_address} dev weft-v6.1"
                in routes and "onlink" in routes), routes
        assert f"{IPV6_NETWORK} dev weft-v6.1" in routes, routes
        neigh = lab.call(weft.ns, ["ip", "-6", "neigh", "show", "dev", "weft-v6.1"],
                         check=True).stdout
        assert f"{FLANNEL_SUBNET6.network_address} lladdr {mac6} PERMANENT" in neigh, neigh
        addrs = lab.call(weft.ns, ["ip", "-6", "addr", "show", "dev", "weft-v6.1"],
                         check=True).stdout
        assert f"{weft.subnet6.network_address}/128" in addrs, addrs

        cluster.add_pods(1)
        failures = _unreached(cluster)
        assert not failures, (failures, cluster.host_log(0)[-3000:])
        there, back = cluster.pods()[1], cluster.pods()[0]
        for src, dst in ((back, there), (there, back)):
            result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip6), nbytes=TWO_MB,
                                        timeout=60.0)
            assert result["received"] == TWO_MB and result["sha256_match"], result
        status = cluster.status(0)
        assert status is not None
    assert netns.list_prefixed(lab.prefix) == []


def test_two_weft_hosts_carry_both_families_over_vxlan() -> None:
    with Lab(hosts=2, ipv6=True) as lab:
        cluster = Cluster(lab, backend="vxlan", ipv6_network=IPV6_NETWORK, datapath="plain")
        cluster.start()  # pods on each host, dual-stack
        for host in (0, 1):
            assert cluster.host(host).subnet6 is not None
        failures = _unreached(cluster)
        assert not failures, (failures, cluster.host_log(0)[-3000:], cluster.host_log(1)[-3000:])
        a, b = cluster.pods()[0], cluster.pods()[-1]
        result = probe.tcp_transfer(a.ns, b.ns, str(b.ip6), nbytes=TWO_MB, timeout=60.0)
        assert result["received"] == TWO_MB and result["sha256_match"], result
    assert netns.list_prefixed(lab.prefix) == []
