"""`weft trace --live` against real daemons in a two-host vxlan lab."""

from __future__ import annotations

import io
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from weft.observe.control_socket import ControlError, control_stream
from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab
from weft.tools.trace import live_trace

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def cluster():
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start(pods_per_host=1)
        yield cluster


def pods(cluster):
    return cluster.hosts[0].pods[0], cluster.hosts[1].pods[0]


def trace_while_pinging(cluster, count: int, **kw) -> tuple[int, str, str]:
    """Run live_trace in a thread while host 0's pod pings host 1's; (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(
        live_trace(cluster.socket_path(0), count=count, out=out, err=err, **kw)), daemon=True)
    thread.start()
    deadline = time.time() + 5
    while "tracing" not in err.getvalue() and time.time() < deadline:  # subscribed
        time.sleep(0.05)
    src, dst = pods(cluster)
    replies = probe.ping(src.ns, str(dst.ip), count=count, timeout=1.0)
    thread.join(timeout=20)
    assert not thread.is_alive(), err.getvalue()
    assert all(replies), replies
    return result[0], out.getvalue(), err.getvalue()


def test_four_icmp_events_with_forward_verdicts(cluster):
    rc, out, err = trace_while_pinging(cluster, 4, filter_text="proto icmp")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 4, (out, err)
    src, dst = pods(cluster)
    peer = cluster.hosts[1].public_ip
    for line in lines:
        assert " icmp " in line and line.rstrip().endswith("forward") and f"peer {peer}" in line
    assert any(line.split()[1] == "egress" and f"{src.ip} -> {dst.ip}" in line for line in lines)
    assert any(line.split()[1] == "ingress" and f"{dst.ip} -> {src.ip}" in line for line in lines)
    assert "# 4 events, 0 dropped" in err


def test_write_saves_inner_and_outer_packets(cluster, tmp_path):
    path = tmp_path / "trace.pcap"
    rc, out, _ = trace_while_pinging(cluster, 4, filter_text="proto icmp", write=str(path))
    assert rc == 0 and len(out.splitlines()) == 4
    frames = rdpcap(str(path))
    assert len(frames) == 8  # every forwarded event: its input and its output
    outer = [f for f in frames if f.haslayer(VXLAN)]
    assert len(outer) == 4 and all(f[UDP].dport == 8472 and f[VXLAN].vni == 1 for f in outer)
    assert all(f[VXLAN].payload.haslayer(ICMP) for f in outer)
    inner = [f for f in frames if not f.haslayer(VXLAN)]
    assert all(f.haslayer(ICMP) and f[IP].src.startswith("10.1.") for f in inner)


def test_filter_syntax_error_is_clear(cluster):
    err = io.StringIO()
    assert live_trace(cluster.socket_path(0), "proto icmp and", err=err) == 2
    assert "expected one of host" in err.getvalue()
    # The daemon parses strictly too, for clients that skip the local check.
    with pytest.raises(ControlError, match="bad proto 'bogus'"):
        next(control_stream(cluster.socket_path(0), "trace", filter="proto bogus"))


def test_reader_that_never_reads_does_not_stall_the_datapath(cluster):
    src, dst = pods(cluster)
    stalled = control_stream(cluster.socket_path(0), "trace", queue=8)
    try:
        assert next(stalled)["type"] == "hello"  # subscribed; nothing more is ever read
        deadline = time.time() + 5
        while cluster.status(0)["trace"]["subscribers"] != 1 and time.time() < deadline:
            time.sleep(0.05)
        result = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=4 * 2**20, timeout=60)
        assert result["sha256_match"], result
        assert all(probe.ping(src.ns, str(dst.ip), count=3))
        assert cluster.status(0)["trace"]["dropped"] > 0
    finally:
        stalled.close()
    deadline = time.time() + 5
    while cluster.status(0)["trace"]["subscribers"] and time.time() < deadline:
        time.sleep(0.1)
    assert cluster.status(0)["trace"]["subscribers"] == 0  # disconnect detaches the observer
