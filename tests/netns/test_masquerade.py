"""--ip-masq and forward rules with real iptables in the lab's host namespaces.

Two weft hosts run `weft run --ip-masq --iptables-resync 1`; an "outside" namespace on the
fabric (no route to any pod subnet) runs a TCP server that answers each connection with the
source address it saw. The iptables rules live in the host namespaces and vanish with them.
"""

from __future__ import annotations

import socket
import time

import pytest

from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.outside import OUTSIDE_IP, add_outside
from weft.tools.lab.topology import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 7007
RESYNC = 1  # seconds: --iptables-resync of the hosts


def _whoami_server(ip: str, port: int, lifetime: float) -> None:
    """Answer every connection with the peer's address, until killed (or `lifetime` ends)."""
    lsock = probe.listening_socket(ip, port, lifetime, backlog=16)
    while True:
        conn, peer = lsock.accept()
        conn.sendall(peer[0].encode())
        conn.close()


def _whoami(ip: str, port: int, timeout: float) -> str | None:
    """The source address the server saw for our connection; None if it could not be asked."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            return sock.recv(64).decode()
    except OSError:
        return None


def seen_by(cluster: Cluster, src_ns: str, server_ns: str, server_ip: str,
            tries: int = 10) -> str | None:
    """Run a whoami server in server_ns and ask it from src_ns (a few tries: the server child
    may not listen yet)."""
    server = netns.spawn_in(server_ns, _whoami_server, server_ip, PORT, 60.0)
    try:
        for _ in range(tries):
            seen = netns.call_in(src_ns, _whoami, server_ip, PORT, 1.0, timeout=10)
            if seen is not None:
                return seen
            time.sleep(0.2)
        return None
    finally:
        server.kill()


def iptables(cluster: Cluster, host: int, *args: str) -> str:
    return cluster.lab.call(cluster.host(host).ns, ["iptables", *args], timeout=30,
                            check=True).stdout


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def masq(request):
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=request.param)
        cluster.start_etcd()
        for h in cluster.hosts:
            cluster.start_weft(h.index, "--ip-masq", "--iptables-resync", str(RESYNC))
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.add_pods(1)
        outside = add_outside(lab)
        yield cluster, outside


def test_pod_reaches_the_outside_with_the_hosts_address(masq):
    cluster, outside = masq
    for h in cluster.hosts:
        seen = seen_by(cluster, h.pods[0].ns, outside, str(OUTSIDE_IP))
        assert seen == h.public_ip, cluster.host_log(h.index)[-2000:]


def test_pod_to_pod_across_hosts_keeps_the_pod_address(masq):
    cluster, _ = masq
    src, dst = cluster.hosts[0].pods[0], cluster.hosts[1].pods[0]
    assert seen_by(cluster, src.ns, dst.ns, str(dst.ip)) == str(src.ip)
    assert seen_by(cluster, dst.ns, src.ns, str(src.ip)) == str(dst.ip)


def test_rules_are_ours_and_commented(masq):
    cluster, _ = masq
    h = cluster.hosts[0]
    nat = iptables(cluster, 0, "-t", "nat", "-S", "WEFT-POSTRTG")
    assert f"-s {h.subnet} -d {cluster.network}" in nat
    assert nat.count('--comment "weft masq"') == 6
    assert "-A FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD" in iptables(
        cluster, 0, "-S", "FORWARD")
    assert cluster.status(0)["iptables"]["resyncs"] == 0  # nothing disturbed them so far


def test_flushed_nat_table_is_repaired_within_the_resync_period_and_counted(masq):
    cluster, outside = masq
    before = cluster.status(0)["iptables"]["resyncs"]
    iptables(cluster, 0, "-t", "nat", "-F")
    # (no look at the flushed table here: a resync may already have put the rules back, and
    # the counter below is what tells a repair happened)
    deadline = time.monotonic() + RESYNC * 10 + 5
    while cluster.status(0)["iptables"]["resyncs"] == before:
        assert time.monotonic() < deadline, cluster.host_log(0)[-2000:]
        time.sleep(0.1)
    status = cluster.status(0)
    assert status["iptables"]["resyncs"] == before + 1
    assert "WEFT-POSTRTG" in iptables(cluster, 0, "-t", "nat", "-S", "POSTROUTING")
    assert seen_by(cluster, cluster.hosts[0].pods[0].ns, outside,
                   str(OUTSIDE_IP)) == cluster.hosts[0].public_ip
    metrics_line = f"iptables:  nat/WEFT-POSTRTG, filter/WEFT-FWD applied, {before + 1} resyncs"
    assert metrics_line in cluster.weft_cli(0, "status", "--control-socket",
                                            cluster.socket_path(0)).stdout


def test_forward_policy_drop_does_not_break_pod_traffic(masq):
    cluster, outside = masq
    src, dst = cluster.hosts[0].pods[0], cluster.hosts[1].pods[0]
    try:
        for h in cluster.hosts:
            iptables(cluster, h.index, "-P", "FORWARD", "DROP")
            iptables(cluster, h.index, "-Z", "WEFT-FWD")
        assert seen_by(cluster, src.ns, dst.ns, str(dst.ip)) == str(src.ip)
        assert seen_by(cluster, src.ns, outside, str(OUTSIDE_IP)) == cluster.hosts[0].public_ip
        # Bulk TCP too: with tunnel GSO its super-frames leave through the TX TAP, which the
        # host forwards (FORWARD chain) like any routed packet.
        moved = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=4 << 20, timeout=20)
        assert moved["received"] == 4 << 20 and moved["sha256_match"], moved
        # Our ACCEPT rules are what let the packets through the DROP policy, on both hosts.
        for h in cluster.hosts:
            counts = iptables(cluster, h.index, "-L", "WEFT-FWD", "-v", "-n", "-x")
            packets = [int(line.split()[0]) for line in counts.splitlines()[2:]]
            rules = 3 if cluster.backend == "vxlan" else 2  # + the TX TAP's, for tunnel GSO
            assert len(packets) == rules and sum(packets) > 0, counts
    finally:
        for h in cluster.hosts:
            iptables(cluster, h.index, "-P", "FORWARD", "ACCEPT")


def test_rules_stay_when_weft_stops(masq):
    """As flanneld's: pods keep their way out while the daemon restarts."""
    cluster, outside = masq
    assert cluster.stop_weft(1) == 0
    assert "WEFT-POSTRTG" in iptables(cluster, 1, "-t", "nat", "-S", "POSTROUTING")
    assert seen_by(cluster, cluster.hosts[1].pods[0].ns, outside,
                   str(OUTSIDE_IP)) == cluster.hosts[1].public_ip
