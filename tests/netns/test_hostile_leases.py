"""Hostile lease keys and values beside good leases, in a lab with real etcd and real hosts.

Before the lease policy, four such keys gave a host-gw host `default via 192.0.2.77`,
`10.0.0.0/8 via 192.0.2.77`, a /32 route for etcd's address and its peer's subnet via the
wrong address, broke pod traffic and left a third host "out of subnets" (issue 20). Here each
key is written while two hosts run: no route or neighbour appears for any of them, the pods
keep talking, a third host still gets a subnet, and every host shows each refusal and its
reason in `weft status`, /metrics and `weft doctor`.
"""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.control.lease import LeaseAttrs, subnet_key
from weft.observe.metrics import render_metrics
from weft.status import DaemonStatus
from weft.tools.lab import probe
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HIJACKER = "192.0.2.77"  # on the fabric, but no host has it
WAIT = 30.0


def hostile_leases(backend: str, victim: IPv4Network,
                   held: set[IPv4Network]) -> dict[str, tuple[str, str]]:
    """key below subnets/ -> (value, the reason every host must give).

    Keys of well-formed subnets are picked among those no host holds: a hostile value under a
    host's own key is the revocation flannel defines, tested elsewhere."""
    free = iter(f"10.1.{n}.0-24" for n in range(99, 0, -1)
                if IPv4Network(f"10.1.{n}.0/24") not in held)
    data = {"VNI": 1, "VtepMAC": "02:00:00:00:00:77"} if backend == "vxlan" else None

    def value(ip: str = HIJACKER, backend_type: str = backend, backend_data=data) -> str:
        return LeaseAttrs(IPv4Address(ip), None, backend_type, backend_data).to_json()

    victim_key = subnet_key(victim)
    return {
        "0.0.0.0-0": (value(), "subnet_size"),
        "192.0.2.1-32": (value(), "subnet_size"),  # etcd's address
        "10.0.0.0-8": (value(), "subnet_size"),
        "10.1.99.0-25": (value(), "subnet_size"),
        "10.9.0.0-24": (value(), "outside_network"),
        victim_key.replace("-24", "-024"): (value(), "key_not_canonical"),
        f"x/{victim_key}": (value(), "malformed_key"),
        f"{victim_key}\n": (value(), "malformed_key"),
        next(free): (value(ip="127.0.0.1"), "public_ip"),
        next(free): (value(ip="224.0.0.5"), "public_ip"),
        next(free): (value(ip="255.255.255.255"), "public_ip"),
        next(free): (value(ip="10.1.50.1"), "public_ip"),  # a pod address
        next(free): (value(backend_type="vxlan",
                               backend_data={"VNI": 1, "VtepMAC": "ff:ff:ff:ff:ff:ff"}),
                         "vtep_mac"),
    }


def kernel_state(lab: Lab, host: int) -> dict[str, str]:
    """What weft programs for peers: every IPv4 route, and permanent neighbours."""
    ns = lab.host(host)
    routes = lab.call(ns, ["ip", "-4", "route", "show", "table", "all"], check=True).stdout
    neigh = lab.call(ns, ["ip", "-4", "neigh", "show", "nud", "permanent"], check=True).stdout
    return {"routes": routes, "neigh": neigh}


def refused(cluster: Cluster, host: int) -> dict[str, str]:
    status = cluster.status(host) or {}
    current = (status.get("leases_rejected") or {}).get("current") or {}
    return {key: why["reason"] for key, why in current.items()}


def wait_refused(cluster: Cluster, host: int, want: dict[str, str]) -> None:
    deadline = time.monotonic() + WAIT
    while refused(cluster, host) != want:
        assert time.monotonic() < deadline, (
            f"host {host} refuses {refused(cluster, host)}, expected {want}\n"
            f"{cluster.host_log(host)[-3000:]}")
        time.sleep(0.2)


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_hostile_leases_touch_no_host(backend):
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend=backend)
        cluster.start_etcd()
        cluster.hosts[2].kind = "idle"  # joins after the hostile keys are in
        cluster.start_weft(0)
        cluster.start_weft(1)
        cluster.wait_leases()
        cluster.wait_synced()
        for index in (0, 1):
            h = cluster.host(index)
            h.pods = lab.add_pods(index, h.subnet, count=1, mtu=h.mtu)
        before = {i: kernel_state(lab, i) for i in (0, 1)}

        hostile = hostile_leases(backend, cluster.host(1).subnet,
                                 {cluster.host(i).subnet for i in (0, 1)})
        for key, (value, _) in hostile.items():
            lab.etcdctl("put", f"{PREFIX}/subnets/{key}", value)
        want = {key: reason for key, (_, reason) in hostile.items()}
        for index in (0, 1):
            wait_refused(cluster, index, want)

        # Nothing reached the kernel; the good peers still carry pod traffic.
        time.sleep(1.0)  # a repair pass or a late batch would show by now
        for index in (0, 1):
            after = kernel_state(lab, index)
            assert after == before[index], (index, before[index], after)
            assert HIJACKER not in after["routes"] + after["neigh"]
            assert "default" not in after["routes"]
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=10)
        probe.wait_reachable(dst.ns, str(src.ip), timeout=10)

        # A third host still finds a free subnet, and sees the same refusals.
        cluster.start_weft(2)
        cluster.wait_leases()
        cluster.wait_synced()
        assert cluster.host(2).subnet.prefixlen == 24
        wait_refused(cluster, 2, want)

        # Visible: metrics by reason, and doctor names them.
        metrics = render_metrics(DaemonStatus.from_json(cluster.status(0)))
        assert 'weft_leases_rejected_total{reason="subnet_size"} 4.0' in metrics
        assert f"weft_leases_refused {float(len(hostile))}" in metrics
        result = cluster.weft_cli(0, "doctor", "--iface", "eth0", "--subnet-file",
                                  str(cluster.subnet_file(0)), "--json")
        findings = {item["check"]: item for item in json.loads(result.stdout)}
        assert findings["leases"]["status"] == "warn", findings.get("leases")
        assert f"{len(hostile)} lease key(s) refused" in findings["leases"]["found"]
        assert HIJACKER not in {f["found"].split()[-1] for c, f in findings.items()
                                if c.startswith("peer")}  # refused leases are not probed

        # Deleted keys are refused no more; the count stays.
        for key in hostile:
            lab.etcdctl("del", f"{PREFIX}/subnets/{key}")
        for index in (0, 1, 2):
            wait_refused(cluster, index, {})
        totals = cluster.status(0)["leases_rejected"]["total"]
        assert totals["subnet_size"] == 4 and totals["key_not_canonical"] == 1
