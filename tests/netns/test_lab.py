"""The lab itself: two hosts wired exactly as flanneld's vxlan backend would wire them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest
from pyroute2 import IPRoute

from weft.tools.lab import kernel_vxlan, netns, probe
from weft.tools.lab.topology import MARKER_DIR, Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


SUBNETS = [IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24")]
VNI, PORT, MTU = 1, 8472, 1450


@pytest.fixture(scope="module")
def flannel_lab() -> Iterator[Lab]:
    with Lab(hosts=2) as lab:
        macs = [kernel_vxlan.random_mac() for _ in lab.hosts]
        for i, host in enumerate(lab.hosts):
            lab.add_pods(host, SUBNETS[i], count=2, mtu=MTU)
            kernel_vxlan.setup_device(host, VNI, PORT, str(lab.host_ips[i]), SUBNETS[i], MTU,
                                      macs[i])
        for i, host in enumerate(lab.hosts):
            for j in range(len(lab.hosts)):
                if j != i:
                    kernel_vxlan.add_peer(host, VNI, SUBNETS[j], macs[j], str(lab.host_ips[j]))
        yield lab
    assert netns.list_prefixed(lab.prefix) == []


def test_every_pod_reaches_every_remote_pod(flannel_lab: Lab) -> None:
    a, b = flannel_lab.hosts
    for src in flannel_lab.pods[a] + flannel_lab.pods[b]:
        others = flannel_lab.pods[b] if src.host == a else flannel_lab.pods[a]
        for dst in others:
            rtts = probe.ping(src.ns, str(dst.ip), count=2, timeout=1.0)
            assert all(r is not None for r in rtts), (src, dst, rtts)


def test_tcp_transfer_arrives_intact(flannel_lab: Lab) -> None:
    src = flannel_lab.pods[flannel_lab.hosts[0]][0]
    dst = flannel_lab.pods[flannel_lab.hosts[1]][1]
    result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=10 * 2**20)
    assert result["received"] == result["sent"] == 10 * 2**20
    assert result["sha256_match"]
    assert result["gbit_s"] > 0


def test_unrouted_destination_gets_net_unreachable(flannel_lab: Lab) -> None:
    pod = flannel_lab.pods[flannel_lab.hosts[0]][0]
    probes = probe.ping_detail(pod.ns, "10.1.9.2", count=2, timeout=0.5)
    assert all(p.rtt is None for p in probes)
    # The host has no route for 10.1.9.0/24, so its cni0 gateway answers net unreachable.
    assert all(p.error == (3, 0) and p.sender == "10.1.1.1" for p in probes), probes


def test_kernel_vxlan_peer_can_be_removed(flannel_lab: Lab) -> None:
    h0, h1 = flannel_lab.hosts
    dst = flannel_lab.pods[h1][0]
    with IPRoute(netns=h1) as ipr:
        mac1 = ipr.link("get", ifname=kernel_vxlan.device_name(VNI))[0].get("address")
    kernel_vxlan.remove_peer(h0, VNI, SUBNETS[1], mac1, str(flannel_lab.host_ips[1]))
    pod = flannel_lab.pods[h0][0]
    assert probe.ping(pod.ns, str(dst.ip), count=1, timeout=0.3) == [None]
    kernel_vxlan.add_peer(h0, VNI, SUBNETS[1], mac1, str(flannel_lab.host_ips[1]))
    assert probe.ping(pod.ns, str(dst.ip), count=1)[0] is not None


def test_etcd_and_processes(flannel_lab: Lab) -> None:
    url = flannel_lab.start_etcd()
    assert url == flannel_lab.etcd_endpoint == "http://192.0.2.1:2379"
    flannel_lab.etcdctl("put", "/coreos.com/network/config", '{"Network":"10.1.0.0/16"}')
    out = flannel_lab.etcdctl("get", "/coreos.com/network/config", "--print-value-only")
    assert out.strip() == '{"Network":"10.1.0.0/16"}'
    done = flannel_lab.call(0, [sys.executable, "-c", "print(1)"])
    assert done.returncode == 0 and done.stdout.strip() == "1"
    # Hosts reach the fabric (where etcd listens).
    assert probe.ping(flannel_lab.hosts[0], "192.0.2.1", count=1)[0] is not None


def test_exception_inside_with_still_tears_down() -> None:
    prefix = None
    with pytest.raises(RuntimeError), Lab(hosts=1) as lab:
        prefix = lab.prefix
        lab.add_pods(0, IPv4Network("10.1.3.0/24"), count=1)
        lab.run(lab.hosts[0], ["sleep", "60"])
        assert len(netns.list_prefixed(prefix)) == 3
        raise RuntimeError("boom")
    assert prefix is not None and netns.list_prefixed(prefix) == []


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_cleanup_stale_removes_only_crashed_labs() -> None:
    with Lab(hosts=1) as live:
        assert Lab.cleanup_stale(live.prefix) == []
        assert len(netns.list_prefixed(live.prefix)) == 2
    # A lab whose owner died without tearing down (SIGKILL) leaves namespaces and a marker.
    crashed = f"weft-{os.urandom(3).hex()}-"
    os.makedirs(MARKER_DIR, exist_ok=True)
    with open(os.path.join(MARKER_DIR, crashed), "w") as f:
        f.write(str(_dead_pid()))
    netns.create(crashed + "h0")
    try:
        assert Lab.cleanup_stale(crashed) == [crashed + "h0"]
        assert netns.list_prefixed(crashed) == []
        assert not os.path.exists(os.path.join(MARKER_DIR, crashed))
    finally:
        netns.remove_by_prefix(crashed)
