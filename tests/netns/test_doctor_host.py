"""`weft doctor` on a lab host: each test breaks one condition inside the host's namespace,
runs the real CLI there and checks that doctor names it, then puts the condition back.

One lab for the module: etcd in the fabric and `weft run` (vxlan) on two hosts, without
forward rules so that a FORWARD policy of DROP is left bare. Doctor runs on host 0 (its peer
is host 1) unless a test says otherwise.
"""

from __future__ import annotations

import json
import time

import pytest
from pyroute2 import IPRoute

from weft.control.lease import LeaseAttrs
from weft.tools.lab import netns
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import FABRIC_NET, Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LEASE_TTL = 4 * 3600  # host 0's lease: over the default margin (1 h), under a 10 h one


@pytest.fixture(scope="module")
def cluster():
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start_etcd()
        cluster.start_weft(0, "--iptables-forward-rules=false", "--lease-ttl", str(LEASE_TTL))
        cluster.start_weft(1, "--iptables-forward-rules=false")
        cluster.wait_leases()
        cluster.wait_synced()
        yield cluster


def doctor(cluster: Cluster, host: int = 0, *extra: str):
    """Run `weft doctor --json` in the host's namespace: (exit code, findings by check)."""
    result = cluster.weft_cli(host, "doctor", "--iface", "eth0", "--subnet-file",
                              str(cluster.subnet_file(host)), "--json", *extra)
    assert result.returncode in (0, 1), result.stderr
    findings = {item["check"]: item for item in json.loads(result.stdout)}
    return result.returncode, findings


def expect(findings: dict, check: str, status: str) -> dict:
    assert check in findings, sorted(findings)
    assert findings[check]["status"] == status, findings[check]
    return findings[check]


def iptables(cluster: Cluster, host: int, *args: str) -> None:
    cluster.lab.call(cluster.host(host).ns, ["iptables", "-w", *args], check=True)


def set_mtu(ns: str, ifname: str, mtu: int) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], mtu=mtu)


def test_healthy_host_exits_0(cluster):
    result = cluster.weft_cli(0, "doctor", "--iface", "eth0", "--subnet-file",
                              str(cluster.subnet_file(0)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in ("subnet_file", "etcd", "config", "lease", "ip_forward", "rp_filter", "mtu",
                  "vxlan_offload", "forward", "firewall", f"peer {cluster.host(1).subnet}"):
        assert any(line.startswith("ok") and line.split(None, 1)[1].startswith(check)
                   for line in lines), (check, result.stdout)
    assert not any(line.startswith("FAIL") for line in lines)
    assert lines[-1].endswith(" 0 FAIL")


def test_ip_forward_off(cluster):
    ns = cluster.host(0).ns
    netns.sysctl(ns, "net.ipv4.ip_forward", 0)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "ip_forward", "FAIL")
        assert code == 1 and "sysctl -w net.ipv4.ip_forward=1" in found["fix"]
    finally:
        netns.sysctl(ns, "net.ipv4.ip_forward", 1)


def test_strict_rp_filter_on_weft_device(cluster):
    ns = cluster.host(0).ns
    netns.sysctl(ns, "/proc/sys/net/ipv4/conf/weft.1/rp_filter", 1)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "rp_filter", "warn")
        assert "effective rp_filter 1 on weft.1" in found["found"]
        assert "net.ipv4.conf.weft.1.rp_filter=2" in found["fix"]
        assert code == 0  # a warning does not fail
    finally:
        netns.sysctl(ns, "/proc/sys/net/ipv4/conf/weft.1/rp_filter", 0)


def test_forward_policy_drop_without_forward_rules(cluster):
    iptables(cluster, 0, "-P", "FORWARD", "DROP")
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "forward", "FAIL")
        assert code == 1 and "10.1.0.0/16" in found["found"]
    finally:
        iptables(cluster, 0, "-P", "FORWARD", "ACCEPT")


def test_firewall_rejecting_the_vxlan_port(cluster):
    """Host 1 rejects udp/8472: its own doctor names the rule, and host 0's probe of host 1
    gets the ICMP port unreachable back."""
    rule = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "REJECT"]
    iptables(cluster, 1, "-I", *rule)
    try:
        code, findings = doctor(cluster, 1)
        found = expect(findings, "firewall", "FAIL")
        assert code == 1 and "--dport 8472 -j REJECT" in found["found"]
        assert found["fix"].startswith("iptables -D INPUT -p udp")
        code, findings = doctor(cluster, 0)
        peer = expect(findings, f"peer {cluster.host(1).subnet}", "FAIL")
        assert code == 1 and "ICMP port unreachable" in peer["found"]
    finally:
        iptables(cluster, 1, "-D", *rule)


def test_firewall_dropping_the_vxlan_port(cluster):
    rule = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"]
    iptables(cluster, 0, "-A", *rule)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "firewall", "FAIL")
        assert code == 1 and "drops udp/8472" in found["found"]
    finally:
        iptables(cluster, 0, "-D", *rule)


def test_underlay_mtu_below_pod_mtu_plus_overhead(cluster):
    ns = cluster.host(0).ns
    set_mtu(ns, "eth0", 1400)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "mtu", "FAIL")
        assert code == 1 and "eth0 MTU 1400 - 50" in found["found"]
        assert "FLANNEL_MTU 1450" in found["found"]
    finally:
        set_mtu(ns, "eth0", 1500)


def test_kernel_vxlan_with_tx_checksum_offload(cluster):
    ns = cluster.host(0).ns
    with IPRoute(netns=ns) as ipr:  # left down: weft already holds udp/8472 here
        ipr.link("add", ifname="flannel.7", kind="vxlan", vxlan_id=7, vxlan_port=8999)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "vxlan_offload", "warn")
        assert found["fix"] == "ethtool -K flannel.7 tx-checksum-ip-generic off"
        assert code == 0
        netns.call_in(ns, netns.disable_tx_offloads, "flannel.7")  # what that fix does
        _, findings = doctor(cluster)
        assert "flannel.7: tx-checksum-ip-generic off" in expect(
            findings, "vxlan_offload", "ok")["found"]
    finally:
        with IPRoute(netns=ns) as ipr:
            for index in ipr.link_lookup(ifname="flannel.7"):
                ipr.link("del", index=index)


def test_peer_whose_public_ip_does_not_answer(cluster):
    ghost = FABRIC_NET[99]  # on the fabric, but nobody has it
    key = f"{PREFIX}/subnets/10.1.250.0-24"
    attrs = LeaseAttrs(ghost, backend_type="vxlan",
                       backend_data={"VNI": 1, "VtepMAC": "0a:00:00:00:00:99"})
    cluster.lab.etcdctl("put", key, attrs.to_json())
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "peer 10.1.250.0/24", "FAIL")
        assert code == 1 and f"ICMP echo to {ghost}: no reply" in found["found"]
        assert "no ARP reply" in found["found"]
        expect(findings, f"peer {cluster.host(1).subnet}", "ok")
    finally:
        cluster.lab.etcdctl("del", key)


def test_lease_inside_the_renew_margin(cluster):
    # host 0's lease has LEASE_TTL (4 h) at most; with a 10 h margin renewals look overdue
    code, findings = doctor(cluster, 0, "--subnet-lease-renew-margin", "600")
    found = expect(findings, "lease", "warn")
    assert code == 0 and "inside the renew margin" in found["found"]


def test_config_missing_or_invalid(cluster):
    key = f"{PREFIX}/config"
    cluster.lab.etcdctl("del", key)
    try:
        code, findings = doctor(cluster)
        found = expect(findings, "config", "FAIL")
        assert code == 1 and found["found"] == f"{key} missing"
        cluster.lab.etcdctl("put", key, '{"Network":"10.1.0.0/16","SubnetLen":31}')
        code, findings = doctor(cluster)
        found = expect(findings, "config", "FAIL")
        assert code == 1 and "SubnetLen must be less than /31" in found["found"]
    finally:
        cluster.lab.etcdctl("put", key, json.dumps(cluster.config))


def test_etcd_stopped(cluster):
    cluster.lab.kill_etcd()
    try:
        start = time.monotonic()
        code, findings = doctor(cluster)
        elapsed = time.monotonic() - start
        found = expect(findings, "etcd", "FAIL")
        assert code == 1 and "192.0.2.1:2379" in found["found"]
        expect(findings, "config", "warn")
        expect(findings, "lease", "warn")
        expect(findings, "ip_forward", "ok")  # the host's own checks still run
        assert elapsed < 15, elapsed  # one bounded try, no retry loop
    finally:
        cluster.lab.start_etcd()
