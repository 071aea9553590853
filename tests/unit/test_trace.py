"""weft trace offline (snapshot -> ofproto/trace-style report) and the TraceHub without devices."""

from __future__ import annotations

import argparse
import json
import struct
from ipaddress import IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap, wrpcap

from weft.control.registry import load_snapshot
from weft.observe.tracehub import FilterError, TraceHub, event_frames, parse_filter, row_key
from weft.packet.batch import Batch
from weft.status import TraceStatus
from weft.tools import trace
from weft.tools.commands import add_trace_parser
from weft.tools.offline import host_from_snapshot

LOCAL_MAC, PEER_MAC = "02:00:00:00:15:01", "7e:81:33:71:e9:51"
EGRESS_ICMP = "Ether()/IP(src='10.1.15.2',dst='10.1.16.2')/ICMP()"


def snapshot(tmp_path, backend: str = "vxlan") -> str:
    def lease(ip: str, mac: str) -> dict:
        if backend == "udp":
            return {"PublicIP": ip, "PublicIPv6": None}
        return {"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": mac}}

    doc = {"config": {"Network": "10.1.0.0/16", "Backend": {"Type": backend}}, "revision": 42,
           "leases": {"10.1.15.0/24": lease("192.0.2.11", LOCAL_MAC),
                      "10.1.16.0/24": lease("192.0.2.12", PEER_MAC)}}
    path = tmp_path / f"{backend}.json"
    path.write_text(json.dumps(doc))
    return str(path)


def run(tmp_path, packet: str, backend: str = "vxlan", **kw) -> dict:
    return trace.offline_trace(snapshot(tmp_path, backend), "10.1.15.0/24", packet, **kw)


def fields(doc: dict) -> dict:
    return {a["field"]: a["value"] for a in doc["actions"] if a["action"] == "set_field"}


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_trace_parser(parser.add_subparsers())
    args = parser.parse_args(["trace", *argv])
    return args.func(args)


# ---- offline ----------------------------------------------------------------------------------


def test_vxlan_egress_icmp_shows_lookup_and_every_written_field(tmp_path):
    doc = run(tmp_path, EGRESS_ICMP)
    assert doc["verdict"] == "forward" and doc["input"]["direction"] == "egress"
    assert doc["flow"]["nw_dst"] == "10.1.16.2" and doc["flow"]["icmp_type"] == 8
    (lookup,) = doc["lookup"]
    assert lookup["subnet_index"] == 16 and lookup["result"] == "peer"
    assert lookup["lease"] == "/coreos.com/network/subnets/10.1.16.0-24"
    assert lookup["public_ip"] == "192.0.2.12" and lookup["vtep_mac"] == PEER_MAC
    assert doc["host"]["revision"] == 42
    f = fields(doc)
    assert f["outer.ip.src"] == "192.0.2.11" and f["outer.ip.dst"] == "192.0.2.12"
    assert f["udp.dport"] == 8472 and f["udp.csum"] == 0
    assert f["vxlan.vni"] == 1 and f["vxlan.flags"] == 0x08
    assert f["inner.eth.dst"] == PEER_MAC and 32768 <= f["udp.sport"] <= 60999
    assert doc["output"]["action"] == "output: raw socket -> 192.0.2.12"
    assert doc["check"]["agree"], doc["check"]
    out = IP(bytes.fromhex(doc["final_flow"]["hex"]))  # the fields match the bytes sent
    assert out[UDP].dport == 8472 and out[UDP].sport == f["udp.sport"] and out[VXLAN].vni == 1
    assert out[IP].chksum == f["outer.ip.csum"]
    text = trace.format_trace(doc)
    for needle in ("lease /coreos.com/network/subnets/10.1.16.0-24", "set_field: udp.csum = 0x0000",
                   "set_field: outer.ip.dst = 192.0.2.12", "Verdict: FORWARD",
                   "Datapath actions: output: raw socket -> 192.0.2.12", "agree"):
        assert needle in text, text


def test_ingress_from_unknown_sender_is_dropped(tmp_path):
    doc = run(tmp_path, "Ether()/IP(src='192.0.2.99',dst='192.0.2.11')/UDP(sport=9,dport=8472)"
                        "/VXLAN(vni=1)/Ether()/IP(src='10.1.16.2',dst='10.1.15.2')/ICMP()")
    assert doc["input"]["direction"] == "ingress" and doc["flow"]["tun_src"] == "192.0.2.99"
    assert doc["verdict"] == "drop" and doc["reason"] == "unknown_sender"
    assert doc["lookup"][0] == {"table": "senders", "match": "tun_src=192.0.2.99",
                                "result": "unknown", "subnets": []}
    assert doc["check"]["agree"]
    assert "drop (unknown_sender" in trace.format_trace(doc)


def test_ingress_with_wrong_vni_is_dropped(tmp_path):
    # No UDP dport given: the VXLAN layer gets our port (scapy alone would say 4789).
    doc = run(tmp_path, "IP(src='192.0.2.12')/UDP()/VXLAN(vni=2)/Ether()"
                        "/IP(src='10.1.16.2',dst='10.1.15.2')/ICMP()")
    assert doc["input"]["direction"] == "ingress" and doc["flow"]["tun_id"] == 2
    assert doc["verdict"] == "drop" and doc["reason"] == "wrong_vni" and doc["check"]["agree"]


def test_ingress_from_peer_is_forwarded_to_the_tap(tmp_path):
    doc = run(tmp_path, "VXLAN(vni=1)/Ether()/IP(src='10.1.16.2',dst='10.1.15.2')/ICMP()")
    assert doc["input"]["direction"] == "ingress" and doc["flow"]["tun_src"] == "192.0.2.12"
    assert doc["verdict"] == "forward" and doc["output"]["action"] == "output: write to TAP weft.1"


def test_no_lease_goes_to_the_slow_path_and_answers_net_unreachable(tmp_path):
    doc = run(tmp_path, "Ether()/IP(src='10.1.15.2',dst='10.1.99.2')/ICMP()")
    assert doc["verdict"] == "slow" and doc["reason"] == "no_route"
    assert doc["classification"]["path"] == "slow"
    assert doc["lookup"][0]["result"] == "no lease"
    slow = doc["slow_path"]
    assert slow["reason"] == "icmp_error_sent" and len(slow["writes"]) == 1
    assert "network-unreachable" in slow["writes"][0]["summary"]
    assert "write to TAP weft.1" in trace.format_trace(doc)


def test_udp_backend_shows_the_ttl_decrement(tmp_path):
    doc = run(tmp_path, "IP(src='10.1.15.2',dst='10.1.16.2',ttl=9)/UDP(sport=1,dport=53)",
              backend="udp")
    assert doc["verdict"] == "forward" and fields(doc)["ip.ttl"] == 8
    assert IP(bytes.fromhex(doc["final_flow"]["hex"])).ttl == 8
    assert doc["output"]["action"] == "output: udp socket :8285 -> 192.0.2.12:8285"
    assert "set_field: ip.ttl = 8" in trace.format_trace(doc)
    assert doc["check"]["agree"]


def test_hex_and_pcap_inputs(tmp_path):
    frame = bytes(Ether(src=LOCAL_MAC, dst=PEER_MAC) / IP(src="10.1.15.2", dst="10.1.16.2")
                  / ICMP())
    assert run(tmp_path, frame.hex())["verdict"] == "forward"
    wire = (Ether() / IP(src="192.0.2.12", dst="192.0.2.11") / UDP(sport=5, dport=8472)
            / VXLAN(vni=1) / Ether(src=PEER_MAC, dst=LOCAL_MAC)
            / IP(src="10.1.16.2", dst="10.1.15.2") / ICMP())
    wrpcap(str(tmp_path / "in.pcap"), [Ether() / IP(), wire])
    doc = run(tmp_path, None, pcap=str(tmp_path / "in.pcap"), index=1)
    assert doc["input"]["direction"] == "ingress" and doc["verdict"] == "forward"
    with pytest.raises(trace.TraceInputError, match="no packet number 5"):
        run(tmp_path, None, pcap=str(tmp_path / "in.pcap"), index=5)


def test_json_output_shape(tmp_path, capsys):
    assert cli("--leases", snapshot(tmp_path), "--as", "10.1.15.0/24", "--json", EGRESS_ICMP) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"input", "host", "flow", "classification", "lookup", "actions", "verdict",
                        "reason", "output", "final_flow", "slow_path", "check"}
    assert doc["host"] == {"subnet": "10.1.15.0/24", "public_ip": "192.0.2.11",
                           "vtep_mac": LOCAL_MAC, "backend": "vxlan", "network": "10.1.0.0/16",
                           "vni": 1, "port": 8472, "mtu": 1450, "device": "TAP weft.1",
                           "revision": 42}
    assert all({"action", "field", "value"} >= set(a) for a in doc["actions"])


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch /tmp/pwned')",
    "Ether().__class__.__base__",
    "[c for c in ()]",
    "open('/etc/passwd')",
    "Ether(**{'dst': 'x'})",
    "Raw('x' * 10**9)",
    "(lambda: 1)()",
])
def test_malicious_expressions_are_refused(tmp_path, capsys, expr):
    assert cli("--leases", snapshot(tmp_path), "--as", "10.1.15.0/24", expr) == 2
    assert "packet expression" in capsys.readouterr().err


def test_usage_errors(tmp_path, capsys):
    assert cli("--leases", snapshot(tmp_path), "--as", "10.1.99.0/24", EGRESS_ICMP) == 2
    assert "no lease for 10.1.99.0/24" in capsys.readouterr().err
    assert cli("--live", "--leases", "x") == 2
    assert cli("--filter", "proto icmp") == 2


# ---- the hub ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,error", [
    ("proto icmpx", "bad proto 'icmpx' at column 7"),
    ("host", "expected a value after 'host'"),
    ("hots 10.1.1.1", "expected one of host"),
    ("proto icmp and", "expected one of host"),
    ("(proto icmp", "expected ')'"),
    ("proto icmp verdict drop", "expected 'and', 'or' or end of filter"),
    ("host 10.1.1", "bad host"),
    ("port 70000", "bad port"),
])
def test_filter_syntax_errors_are_clear(text, error):
    with pytest.raises(FilterError) as info:
        parse_filter(text)
    assert error in str(info.value)


def _frame(src="10.1.15.2", dst="10.1.16.2", l4=None) -> bytes:
    return bytes(Ether(src=LOCAL_MAC, dst=PEER_MAC) / IP(src=src, dst=dst) / (l4 or ICMP()))


def test_filter_matches():
    icmp = row_key(_frame(), "vxlan", "egress", 0, 0, 0)
    udp = row_key(_frame(l4=UDP(sport=1000, dport=53)), "vxlan", "egress", 1, 6, 0)
    assert parse_filter("host 10.1.16.2 and proto icmp and verdict forward")(icmp)
    assert not parse_filter("proto icmp")(udp) and parse_filter("port 53 and verdict drop")(udp)
    assert parse_filter("net 10.1.16.0/24 and not (proto tcp or dir ingress)")(udp)
    assert parse_filter("reason unknown_sender")(udp) and parse_filter("")(udp)
    ingress = row_key(struct.pack("!B3xI", 8, 1 << 8) + _frame("10.1.16.2", "10.1.15.2"),
                      "vxlan", "ingress", 0, 0, 0xC000020C)
    assert parse_filter("src 10.1.16.2 and dst 10.1.15.2 and peer 192.0.2.12")(ingress)


class FakeDatapath:
    observer = None


def _batch(frames: list[bytes]) -> Batch:
    batch = Batch(len(frames))
    for i, frame in enumerate(frames):
        batch.load(i, frame)
    return batch


def test_hub_attaches_only_while_subscribed_and_drops_when_full():
    hub, dp = TraceHub("vxlan"), FakeDatapath()
    hub.bind(dp)
    assert dp.observer is None  # nobody tracing: the data path does not even call us
    stream = hub.stream({"filter": "proto icmp", "queue": 2})
    assert next(stream)["type"] == "hello" and dp.observer == hub.observe
    batch = _batch([_frame(), _frame(l4=UDP()), _frame(), _frame(), _frame()])
    dp.observer("egress", batch, 5)  # 4 ICMP rows match, the queue holds 2
    events = [next(stream), next(stream)]
    assert [e["proto"] for e in events] == ["icmp", "icmp"]
    assert events[0]["dir"] == "egress" and "in" not in events[0]
    assert hub.stats() == TraceStatus(subscribers=1, dropped=2)
    stream.close()
    assert dp.observer is None and hub.stats() == TraceStatus(subscribers=0, dropped=2)


def test_hub_count_ends_the_stream_and_bytes_only_on_request():
    hub, dp = TraceHub("vxlan"), FakeDatapath()
    hub.bind(dp, {"public_ip": "192.0.2.11", "port": 8472})
    stream = hub.stream({"count": 1, "bytes": True})
    next(stream)
    batch = _batch([_frame()])
    batch.verdict[0], batch.reason[0] = 1, 18  # drop, local_dst: no output bytes
    dp.observer("egress", batch, 1)
    event = next(stream)
    assert event["verdict"] == "drop" and event["reason"] == "local_dst"
    assert bytes.fromhex(event["in"]) == _frame() and "out" not in event
    assert next(stream) == {"type": "end", "events": 1, "dropped": 0}
    assert dp.observer is None


def test_event_frames_are_ethernet_pcap_records(tmp_path):
    info = {"backend": "udp", "public_ip": "192.0.2.11", "port": 8285}
    inner = bytes(IP(src="10.1.15.2", dst="10.1.16.2") / ICMP())
    event = {"dir": "egress", "peer": "192.0.2.12", "in": inner.hex(), "out": inner.hex()}
    frames = event_frames(event, info)
    wrpcap(str(tmp_path / "f.pcap"), [Ether(f) for f in frames])
    first, second = rdpcap(str(tmp_path / "f.pcap"))
    assert first[IP].dst == "10.1.16.2"
    assert second[IP].dst == "192.0.2.12" and second[UDP].dport == 8285
    assert bytes(second[UDP].payload) == inner


def test_offline_host_matches_snapshot(tmp_path):
    host = host_from_snapshot(load_snapshot(snapshot(tmp_path)), IPv4Network("10.1.15.0/24"))
    assert trace.device_of(host) == "TAP weft.1"
