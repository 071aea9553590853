"""Multi-host behaviour in network namespaces: real devices, real etcd, real traffic."""

from __future__ import annotations

import json
import socket
import time

import pytest
from rogue import forged_frame, link_counter, rogue_lab, unknown_sender

from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

pytestmark = pytest.mark.netns

BACKENDS = ["vxlan", "udp", "host-gw"]


@pytest.fixture(params=BACKENDS)
def cluster(request):
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend=request.param)
        cluster.start(pods_per_host=2)
        yield cluster


def cross_host_pairs(cluster: Cluster):
    pods = cluster.pods()
    return [(a, b) for a in pods for b in pods if a.host != b.host]


def test_every_pod_reaches_every_pod_on_other_hosts(cluster):
    failures = []
    for src, dst in cross_host_pairs(cluster):
        replies = probe.ping(src.ns, str(dst.ip), count=2, timeout=1.0)
        if not any(replies):
            failures.append((str(src.ip), str(dst.ip)))
    assert failures == [], "\n".join(cluster.host_log(h.index)[-1500:] for h in cluster.hosts)


def test_ten_megabytes_of_tcp_arrive_intact(cluster):
    src = cluster.hosts[0].pods[0]
    dst = cluster.hosts[1].pods[1]
    result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=10 * 2**20, timeout=60)
    assert result["received"] == 10 * 2**20 and result["sha256_match"], result


def test_removed_lease_stops_routing_and_answers_unreachable(cluster):
    gone = cluster.hosts[2]
    src = cluster.hosts[0].pods[0]
    target = str(gone.pods[0].ip)
    assert any(probe.ping(src.ns, target, count=2))
    # A host that stopped (SIGTERM keeps its lease) and whose lease is then deleted: a running
    # weft would put its own lease back. Peers drop it after the removal grace (10 s).
    assert cluster.stop_weft(gone.index) == 0
    cluster.lab.etcdctl("del", f"/coreos.com/network/subnets/{gone.subnet.network_address}-"
                               f"{gone.subnet.prefixlen}")
    deadline = time.time() + 40
    while time.time() < deadline:
        peers = {p["subnet"] for p in cluster.status(0)["peers"]}
        if str(gone.subnet) not in peers:
            break
        time.sleep(0.1)
    assert str(gone.subnet) not in peers
    answers = probe.ping_detail(src.ns, target, count=2, timeout=1.0)
    assert not any(a.ok for a in answers)
    assert any(a.error and a.error[0] == 3 for a in answers), answers


def test_status_and_counters(cluster):
    src, dst = cluster.hosts[0].pods[0], cluster.hosts[1].pods[0]
    assert all(probe.ping(src.ns, str(dst.ip), count=3))
    status = cluster.status(0)
    assert status["ready"] and status["lease"]["subnet"] == str(cluster.hosts[0].subnet)
    if cluster.backend != "host-gw":
        # the compiled loop over a TSO device is the default where the device accepts it
        assert status["datapath"]["mode"] == "offload"
    assert {p["subnet"] for p in status["peers"]} == {str(h.subnet) for h in cluster.hosts[1:]}
    if cluster.backend != "host-gw":
        assert status["counters"]["egress"]["forwarded"] >= 3
        assert status["counters"]["ingress"]["forwarded"] >= 3
    text = cluster.weft_cli(0, "status", "--control-socket", cluster.socket_path(0))
    assert text.returncode == 0 and str(cluster.hosts[0].subnet) in text.stdout


@pytest.mark.parametrize("backend", ["vxlan", "udp"])
def test_plain_python_datapath_still_carries_traffic(backend):
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=backend, datapath="plain")
        cluster.start(pods_per_host=1)
        assert cluster.status(0)["datapath"]["mode"] == "plain"
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        assert any(probe.ping(src.ns, str(dst.ip), count=2))
        result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=4 * 2**20)
        assert result["sha256_match"]


@pytest.mark.parametrize("datapath", ["offload", "fast"])
@pytest.mark.parametrize("backend", ["vxlan", "udp"])
def test_compiled_datapaths_with_and_without_offload_carry_traffic(backend, datapath):
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=backend, datapath=datapath)
        cluster.start(pods_per_host=1)
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        assert all(probe.ping(src.ns, str(dst.ip), count=3))
        there = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=8 * 2**20, timeout=60)
        back = probe.tcp_transfer(dst.ns, src.ns, str(src.ip), nbytes=8 * 2**20, timeout=60)
        assert there["received"] == 8 * 2**20 and there["sha256_match"], there
        assert back["received"] == 8 * 2**20 and back["sha256_match"], back
        status = cluster.status(0)
        dp = status["datapath"]
        assert dp["mode"] == datapath and "refused" not in dp
        assert dp["device"] == ("offload" if datapath == "offload" else "plain")
        assert not any(k.startswith("offload_") for k in status["counters"]["drops"])
        if datapath == "offload":  # the pods' TCP crossed the device as super-frames
            loop = dp["loop"]
            assert loop["egress"]["packets"] > loop["egress"]["device_io"]
            assert loop["ingress"]["sent"] > loop["ingress"]["device_io"]


def test_restart_without_offload_on_a_device_left_in_offload_mode():
    """TSO settings outlive the daemon on a persistent device; the fast loop (no virtio header)
    must get them cleared, or the kernel would hand it 64 KiB frames it cannot read."""
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start(pods_per_host=1)
        assert cluster.status(0)["datapath"]["mode"] == "offload"
        assert cluster.stop_weft(0) == 0
        cluster.datapath = "fast"
        cluster.start_weft(0)
        cluster.wait_synced()
        dp = cluster.status(0)["datapath"]
        assert (dp["mode"], dp["device"]) == ("fast", "plain")
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=20)
        result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=4 * 2**20, timeout=60)
        assert result["sha256_match"], result
        loop = cluster.status(0)["datapath"]["loop"]
        assert loop["egress"]["packets"] == loop["egress"]["device_io"]  # one packet per read


# -- interop with the kernel's VXLAN, programmed exactly as flanneld programs it ---------------

@pytest.mark.parametrize("datapath", ["auto", "fast"])
def test_flannel_host_and_weft_host_reach_each_other(datapath):
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend="vxlan", datapath=datapath)
        cluster.start(pods_per_host=1, flannel_hosts=(0,))
        assert cluster.status(1)["datapath"]["mode"] == ("offload" if datapath == "auto"
                                                          else "fast")
        flannel_pod = cluster.host(0).pods[0]
        for weft_host in cluster.hosts[1:]:
            weft_pod = weft_host.pods[0]
            assert any(probe.ping(flannel_pod.ns, str(weft_pod.ip), count=2))
            assert any(probe.ping(weft_pod.ns, str(flannel_pod.ip), count=2))
        there = probe.tcp_transfer(flannel_pod.ns, cluster.host(1).pods[0].ns,
                                   str(cluster.host(1).pods[0].ip), nbytes=4 * 2**20)
        back = probe.tcp_transfer(cluster.host(2).pods[0].ns, flannel_pod.ns,
                                  str(flannel_pod.ip), nbytes=4 * 2**20)
        assert there["sha256_match"] and back["sha256_match"]
        if datapath == "auto":
            # wire-like links: the weft host's TCP left as tunnel-GSO frames, cut by its kernel
            # on the way out, and the kernel's VXLAN on the flannel host took every byte
            dp = cluster.status(2)["datapath"]
            assert dp["tunnel_gso"] == "on", dp
            assert dp["loop"]["egress"]["tunnel_frames"] > 0, dp["loop"]


# -- a rogue sender on the fabric, not in etcd ----------------------------------------------------

def _send_vxlan(dst: str, port: int, payloads: list[bytes]) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for payload in payloads:
            s.sendto(payload, (dst, port))
    return len(payloads)


def test_rogue_vxlan_sender_reaches_no_pod_and_is_counted():
    with rogue_lab() as (_lab, cluster, rogue):
        victim_host, other = cluster.host(0), cluster.host(1)
        pod = victim_host.pods[0]
        vtep = cluster.status(0)
        frames = [forged_frame(other.pods[0].ip, pod.ip, seq=i) for i in range(50)]
        assert vtep["ready"]
        before = netns.call_in(pod.ns, link_counter, "eth0", "rx_packets")
        sent = netns.call_in(rogue, _send_vxlan, victim_host.public_ip, 8472, frames)
        # Wait until the datapath has judged every frame; only then is "nothing reached the
        # pod" a finding rather than "nothing arrived yet".
        deadline = time.time() + 15
        while unknown_sender(cluster) < sent and time.time() < deadline:
            time.sleep(0.05)
        after = netns.call_in(pod.ns, link_counter, "eth0", "rx_packets")
        assert unknown_sender(cluster) == sent
        assert after == before


# -- daemon lifecycle and health endpoints ------------------------------------------------------

def _http_get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_restart_reuses_lease_and_device_and_serves_health():
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start_etcd()
        for h in cluster.hosts:
            cluster.start_weft(h.index, "--healthz-ip", "127.0.0.1", "--healthz-port", "10250")
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.add_pods(1)
        h0 = cluster.host(0)
        code, body = netns.call_in(h0.ns, _http_get, "http://127.0.0.1:10250/readyz")
        assert code == 200
        code, metrics = netns.call_in(h0.ns, _http_get, "http://127.0.0.1:10250/metrics")
        assert code == 200 and "weft_peers 1" in metrics and "weft_ready 1" in metrics
        before = cluster.status(0)
        leases_before = cluster.weft_cli(1, "leases", "--json").stdout
        started = time.time()
        assert cluster.stop_weft(0) == 0
        assert time.time() - started < 5
        cluster.start_weft(0)
        restarted = time.time()
        cluster.wait_synced()
        src, dst = cluster.host(1).pods[0], h0.pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=20)
        took = time.time() - restarted
        after = cluster.status(0)
        assert after["lease"]["subnet"] == before["lease"]["subnet"]
        assert "reusing device weft.1" in cluster.host_log(0)
        leases_after = cluster.weft_cli(1, "leases", "--json").stdout
        assert json.loads(leases_after)["leases"] == json.loads(leases_before)["leases"]
        assert took < 15, f"restarted daemon forwarded only after {took:.1f}s"


def test_host_gw_refuses_a_public_ip_that_is_not_the_interface_address():
    with Lab(hosts=1) as lab:
        cluster = Cluster(lab, backend="host-gw")
        cluster.start_etcd()
        cluster.start_weft(0, "--public-ip", "198.51.100.7")
        code = cluster.host(0).proc.wait(timeout=30)
        assert code == 1
        assert "your PublicIP differs from interface IP, meaning that probably you're on a NAT" \
            in cluster.host_log(0)


def test_host_gw_reports_a_peer_off_our_l2_segment():
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="host-gw")
        cluster.start(pods_per_host=1)
        far = '{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"host-gw"}'
        lab.etcdctl("put", "/coreos.com/network/subnets/10.1.250.0-24", far)
        deadline = time.time() + 10
        while time.time() < deadline:
            unprogrammed = cluster.status(0).get("unprogrammed", {})
            if "10.1.250.0/24" in unprogrammed:
                break
            time.sleep(0.1)
        assert "is not on our L2 segment" in unprogrammed["10.1.250.0/24"]
        assert "10.1.250.0/24" not in {p["subnet"] for p in cluster.status(0)["peers"]}
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        assert any(probe.ping(src.ns, str(dst.ip), count=2))  # the others still work


# -- UDP GSO / GRO in offload mode ------------------------------------------------------------

@pytest.mark.parametrize(("backend", "wire_like"), [("vxlan", True), ("udp", True),
                                                    ("vxlan", False), ("udp", False)],
                         ids=["vxlan-wire", "udp-wire", "vxlan-veth", "udp-veth"])
def test_offload_mode_sends_with_udp_gso_and_receives_with_udp_gro(backend, wire_like):
    """8 MB each way with UDP GSO and GRO on; status says so and the loop figures show it.

    wire_like: the hosts' eth0 cut GSO datagrams before they cross (as a NIC does) and do no
    GRO, so every receive holds one datagram; without it the GSO datagrams cross whole and
    reach the UDP_GRO socket as one message each.
    """
    with Lab(hosts=2, wire_like=wire_like) as lab:
        cluster = Cluster(lab, backend=backend, datapath="offload")
        cluster.start(pods_per_host=1)
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=20)
        there = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=8 * 2**20, timeout=60)
        back = probe.tcp_transfer(dst.ns, src.ns, str(src.ip), nbytes=8 * 2**20, timeout=60)
        assert there["received"] == 8 * 2**20 and there["sha256_match"], there
        assert back["received"] == 8 * 2**20 and back["sha256_match"], back
        for host in (0, 1):
            dp = cluster.status(host)["datapath"]
            assert (dp["mode"], dp["udp_gso"], dp["udp_gro"]) == ("offload", "on", "on"), dp
            assert dp["errors"]["send"] == 0, dp["errors"]
            loop = dp["loop"]
            if backend == "vxlan":
                # TCP super-frames left whole through the TX TAP (tunnel GSO), the kernel cut
                # them; what the sockets sent (ACKs) went one datagram a message
                assert dp["tunnel_gso"] == "on", dp
                assert loop["egress"]["tunnel_frames"] * 10 < loop["egress"]["sent"], loop
            else:
                # Many datagrams per sendmmsg message: UDP_SEGMENT did the cutting.
                assert loop["egress"]["messages"] * 4 < loop["egress"]["sent"], loop
            if not wire_like:  # many datagrams per received message: UDP GRO merged them
                assert loop["ingress"]["messages"] * 4 < loop["ingress"]["packets"], loop


def test_kernel_vxlan_gso_packets_reach_weft_offload_hosts():
    """veth offloads on: flannel's kernel VXLAN sends 64 KiB GSO packets, which reach weft's
    UDP_GRO socket whole (partial inner checksums included); weft's tunnel-GSO frames reach
    the kernel's VXLAN whole too. 4 MB each way, every byte checked."""
    with Lab(hosts=3, wire_like=False) as lab:
        cluster = Cluster(lab, backend="vxlan", datapath="offload")
        cluster.start(pods_per_host=1, flannel_hosts=(0,))
        flannel_pod = cluster.host(0).pods[0]
        for weft_host in (1, 2):
            dp = cluster.status(weft_host)["datapath"]
            assert (dp["mode"], dp["udp_gso"], dp["udp_gro"]) == ("offload", "on", "on"), dp
            weft_pod = cluster.host(weft_host).pods[0]
            probe.wait_reachable(flannel_pod.ns, str(weft_pod.ip), timeout=20)
            there = probe.tcp_transfer(flannel_pod.ns, weft_pod.ns, str(weft_pod.ip),
                                       nbytes=4 * 2**20, timeout=60)
            back = probe.tcp_transfer(weft_pod.ns, flannel_pod.ns, str(flannel_pod.ip),
                                      nbytes=4 * 2**20, timeout=60)
            assert there["received"] == 4 * 2**20 and there["sha256_match"], there
            assert back["received"] == 4 * 2**20 and back["sha256_match"], back
        loop = cluster.status(1)["datapath"]["loop"]
        assert loop["ingress"]["messages"] < loop["ingress"]["packets"], loop
        # The kernel's 64 KiB tunnel GSO packets arrived whole and went to the TAP whole
        # (one TSO write each), not dropped; ours reached its VXLAN device whole as well.
        assert loop["ingress"]["tunnel_gso"] > 0, loop
        assert loop["ingress"]["tunnel_gso_whole"] > 0, loop
        assert loop["egress"]["tunnel_frames"] > 0, loop
        assert "truncated" not in cluster.status(1)["counters"]["drops"]
