"""Decapsulation and robustness against captures made by other projects.

Those captures live outside the repository, in ../shared/captures next to it (present in CI),
and are read in place, never copied; the tests that need them are skipped where the folder is
absent. Tests that need only the repository's own pcaps/ always run.

tcpdump's `.out` decodes are an independent oracle: each decapsulated inner frame is decoded
with scapy and compared field by field with what tcpdump printed for the same packet.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from weft.control.registry import load_snapshot
from weft.packet.reasons import Reason
from weft.tools.offline import host_from_snapshot
from weft.tools.pcapio import read_records
from weft.tools.replay import decap, replay_capture

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = (ROOT / ".." / "shared" / "captures").resolve()
PCAPS = ROOT / "pcaps"

needs_captures = pytest.mark.skipif(not CAPTURES.is_dir(),
                                    reason=f"third-party captures not found at {CAPTURES}")

TCPDUMP = "the-tcpdump-group+tcpdump__"
ZEEK = "zeek+zeek__tunnels_"
SURICATA = "OISF+suricata-verify__"
OK = int(Reason.OK)


def capture(name: str) -> Path:
    return CAPTURES / name


def decap_all(name: str, port: int = 4789):
    return [decap(record, port) for record in read_records(capture(name))]


# ---- tcpdump's decode as the oracle ---------------------------------------------------------

_OUTER = re.compile(r"^\s*\d+\s+\S+ \S+ .*: VXLAN, flags \[I\] \(0x08\), vni (\d+)$")
_INNER = re.compile(r"^(\S+) > (\S+), ethertype \S+ \(0x([0-9a-f]{4})\), length (\d+): (.*)$")
_ICMP = re.compile(r"^(\S+) > (\S+): ICMP echo (request|reply), id (\d+), seq (\d+), "
                   r"length (\d+)$")
_ARP_REQ = re.compile(r"^Request who-has (\S+) tell (\S+), length (\d+)$")
_ARP_REP = re.compile(r"^Reply (\S+) is-at (\S+), length (\d+)$")


def tcpdump_decode(path: Path) -> list[dict]:
    """Per packet: vni, inner MACs, ethertype, length and the ICMP/ARP fields tcpdump printed."""
    lines = path.read_text().splitlines()
    assert len(lines) % 2 == 0
    packets = []
    for outer, inner in zip(lines[::2], lines[1::2], strict=True):
        vni = int(_OUTER.match(outer).group(1))
        src, dst, ethertype, length, rest = _INNER.match(inner).groups()
        fields = {"vni": vni, "src": src, "dst": dst, "type": int(ethertype, 16),
                  "len": int(length)}
        if m := _ICMP.match(rest):
            fields.update(ip_src=m[1], ip_dst=m[2], icmp=8 if m[3] == "request" else 0,
                          id=int(m[4]), seq=int(m[5]), icmp_len=int(m[6]))
        elif m := _ARP_REQ.match(rest):
            fields.update(op=1, pdst=m[1], psrc=m[2], arp_len=int(m[3]))
        elif m := _ARP_REP.match(rest):
            fields.update(op=2, psrc=m[1], hwsrc=m[2], arp_len=int(m[3]))
        else:
            raise AssertionError(f"unexpected inner decode: {rest}")
        packets.append(fields)
    return packets


def scapy_decode(vni: int, frame: bytes, oracle: dict) -> dict:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP, Ether

    eth = Ether(frame)
    fields = {"vni": vni, "src": eth.src, "dst": eth.dst, "type": eth.type, "len": len(frame)}
    if ICMP in eth:
        fields.update(ip_src=eth[IP].src, ip_dst=eth[IP].dst, icmp=eth[ICMP].type,
                      id=eth[ICMP].id, seq=eth[ICMP].seq,
                      icmp_len=eth[IP].len - eth[IP].ihl * 4)
    elif ARP in eth:
        arp = eth[ARP]
        fields.update(op=arp.op, psrc=arp.psrc, arp_len=28)
        if arp.op == 1:
            fields["pdst"] = arp.pdst
        else:
            fields["hwsrc"] = arp.hwsrc
    return {key: fields.get(key) for key in oracle}


@needs_captures
@pytest.mark.parametrize("stem,port", [("vxlan", 4789), ("vxlan_port_8472", 8472)])
def test_tcpdump_decap_matches_tcpdump_decode(stem, port):
    oracle = tcpdump_decode(capture(f"{TCPDUMP}{stem}.out"))
    outcomes = decap_all(f"{TCPDUMP}{stem}.pcap", port)
    assert len(outcomes) == len(oracle) == 10
    kinds = set()
    for outcome, expected in zip(outcomes, oracle, strict=True):
        assert outcome.reason == OK, outcome
        (_, frame), = outcome.outputs
        assert scapy_decode(outcome.vni, frame, expected) == expected
        kinds.add(expected.get("op", expected.get("icmp")))
    assert kinds == {0, 1, 2, 8}  # echo reply, ARP request, ARP reply, echo request all seen


@needs_captures
def test_tcpdump_capture_on_the_wrong_port_is_not_decapsulated():
    outcomes = decap_all(f"{TCPDUMP}vxlan.pcap", 8472)
    assert {o.reason for o in outcomes} == {int(Reason.WRONG_PORT)}
    assert all(not o.outputs for o in outcomes)


# ---- VNIs -----------------------------------------------------------------------------------


@needs_captures
@pytest.mark.parametrize("name,vni,count", [
    (f"{ZEEK}vxlan.pcap", 123, 10),
    (f"{SURICATA}vxlan-decoder-03_vxlan.pcap", 5569041, 100),  # 0x54FA11: byte order, shifts
    (f"{ZEEK}vxlan-encapsulated-http.pcap", 1, 12),  # includes a 9100-byte jumbo frame
    (f"{TCPDUMP}gso-ipv4-vxlan-ipv6.pcap", 5001, 1),  # 4270-byte GSO super-frame
])
def test_vni_is_decoded(name, vni, count):
    outcomes = decap_all(name)
    assert len(outcomes) == count
    assert [(o.reason, o.vni) for o in outcomes] == [(OK, vni)] * count
    assert all(o.out_len == o.in_len - 50 for o in outcomes)  # Ethernet+IPv4+UDP+VXLAN


@needs_captures
def test_decap_json_reports_the_vni():
    record = decap_all(f"{SURICATA}vxlan-decoder-03_vxlan.pcap")[0].to_json()
    assert record["vni"] == 5569041 and record["direction"] == "decap"
    assert record["verdict"] == "forward" and record["reason"] == "ok"


@needs_captures
def test_nested_vxlan_loses_exactly_one_layer(tmp_path):
    from weft.tools.pcapio import LINKTYPE_ETHERNET, PcapOut

    path = capture(f"{ZEEK}vxlan-triple-v2.pcap")
    for vni in (1, 2, 3):
        (outcome,) = [decap(record, 4789) for record in read_records(path)]
        assert (outcome.reason, outcome.vni) == (OK, vni)
        assert outcome.out_len == outcome.in_len - 50
        path = tmp_path / f"layer{vni}.pcap"
        with PcapOut(path, LINKTYPE_ETHERNET) as out:
            out.write(outcome.outputs[0][1], 0, 0)
    (last,) = [decap(record, 4789) for record in read_records(path)]
    assert last.reason == int(Reason.WRONG_PORT)  # plain DNS (port 53) is left: no VXLAN
    from scapy.layers.dns import DNS
    from scapy.layers.l2 import Ether

    assert DNS in Ether(read_records(path)[0].data)


# ---- RFC 7348 reserved bits -----------------------------------------------------------------


@needs_captures
def test_reserved_bits_are_ignored_on_receipt():
    """flags 0xff and non-zero reserved fields: only the I bit counts (RFC 7348 section 5)."""
    records = read_records(capture(f"{SURICATA}vxlan-non-zero-reserved-fields_input.pcap"))
    vxlan_headers = [r.data[42:50] for r in records]
    assert all(h[0] == 0xFF and h[1:4] != b"\0\0\0" for h in vxlan_headers)  # not vacuous
    outcomes = [decap(record, 4789) for record in records]
    assert [(o.reason, o.vni) for o in outcomes] == [(OK, 11)] * 10
    assert all(o.outputs[0][1] == r.data[50:] for o, r in zip(outcomes, records, strict=True))


def test_pipeline_ignores_reserved_bits_too():
    """The same policy in the daemon's pipeline: the lab golden's flags-0xff record forwards."""
    manifest = json.loads((PCAPS / "vxlan" / "manifest.json").read_text())
    reasons = manifest["adversarial"]
    records = [json.loads(line) for line in
               (PCAPS / "vxlan" / "expected" / "adversarial.json").read_text().splitlines()]
    data = read_records(PCAPS / "vxlan" / "adversarial.pcap")
    reserved = [i for i, r in enumerate(data) if len(r.data) > 50 and r.data[42] == 0xFF]
    assert reserved and all(records[i]["verdict"] == "forward" for i in reserved)
    assert reasons[reserved[0]] == "ok"


# ---- truncated, malformed and fuzzed inputs -------------------------------------------------


@needs_captures
@pytest.mark.parametrize("name,reasons", [
    ("zeek+zeek__tunnels_geneve-vxlan-dns-truncated.pcap", {Reason.WRONG_PORT}),  # Geneve 6081
    ("kYroL01+peafowl__L3_truncated_ip.pcap", {Reason.BAD_IP_HEADER}),
    (f"{TCPDUMP}udp-length-heapoverflow.pcap", {Reason.WRONG_PORT, Reason.TRUNCATED}),
])
def test_malformed_captures_get_per_packet_reasons(name, reasons):
    records = read_records(capture(name))
    outcomes = [decap(record, 4789) for record in records]
    assert len(outcomes) == len(records) >= 1
    assert {Reason(o.reason) for o in outcomes} <= reasons
    assert all(not o.outputs for o in outcomes)


@needs_captures
def test_truncated_records_are_marked():
    records = read_records(capture("zeek+zeek__tunnels_geneve-vxlan-dns-truncated.pcap"))
    assert all(r.truncated and len(r.data) == 176 for r in records)
    fuzz = read_records(capture(f"{TCPDUMP}udp-length-heapoverflow.pcap"))
    assert fuzz[0].truncated and fuzz[0].linktype == 1  # 0x30000001: libpcap's LT_LINKTYPE


@needs_captures
@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.glob("*.pcap"))
                         if CAPTURES.is_dir() else [])
@pytest.mark.parametrize("backend", ["vxlan", "udp"])
def test_every_capture_replays_without_exception(name, backend):
    """Full replay (lab leases) over every third-party capture: one outcome per record."""
    snapshot = load_snapshot(PCAPS / backend / "leases.json")
    subnet = json.loads((PCAPS / backend / "manifest.json").read_text())["as"]
    host = host_from_snapshot(snapshot, IPv4Network(subnet))
    capture_, outcomes, summary = replay_capture(capture(name), host)
    assert len(outcomes) == len(read_records(capture(name)))
    assert capture_.error is None
    for outcome in outcomes:
        json.dumps(outcome.to_json())
        assert outcome.direction in ("egress", "ingress")
    assert summary["egress"]["packets"] + summary["ingress"]["packets"] + sum(
        summary.get("before_pipeline", {}).values()) == len(outcomes)
