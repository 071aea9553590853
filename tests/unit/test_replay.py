"""weft replay against the lab goldens in pcaps/: bytes, verdicts, determinism, bad files.

The goldens were written by the tool itself (pcaps/make_pcaps.py); what makes them more than a
snapshot is checked here too: replaying what arrived on the fabric gives exactly what the live
daemon wrote to its TAP/TUN, and replaying what left the pods gives what the live daemon sent on
the wire (apart from the outer IP id, a counter the running daemon had already advanced).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from weft.control.registry import load_snapshot
from weft.tools.offline import host_from_snapshot
from weft.tools.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapOut, read_records
from weft.tools.replay import device_path, replay_capture, run_replay

ROOT = Path(__file__).resolve().parents[2]
PCAPS = ROOT / "pcaps"
BACKENDS = ["vxlan", "udp"]
INPUTS = ["egress", "fabric", "adversarial"]
RECORD_KEYS = {"index", "direction", "verdict", "reason", "peer", "in_len", "out_len", "slow"}


def replay(*argv: str) -> tuple[int, str]:
    return run_replay(list(argv))


def manifest(backend: str) -> dict:
    return json.loads((PCAPS / backend / "manifest.json").read_text())


def replay_golden(backend: str, name: str, out: Path) -> tuple[int, str]:
    return replay(str(PCAPS / backend / f"{name}.pcap"), "--leases",
                  str(PCAPS / backend / "leases.json"), "--as", manifest(backend)["as"],
                  "--json", "--out", str(out))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", INPUTS)
def test_golden_bytes_and_verdicts(backend, name, tmp_path):
    out = tmp_path / "out.pcap"
    code, text = replay_golden(backend, name, out)
    assert code == 0
    expected = PCAPS / backend / "expected"
    assert text == (expected / f"{name}.json").read_text()
    assert out.read_bytes() == (expected / f"{name}.out.pcap").read_bytes()
    assert device_path(out).read_bytes() == (expected / f"{name}.out.device.pcap").read_bytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_adversarial_records_hit_their_reasons(backend, tmp_path):
    _, text = replay_golden(backend, "adversarial", tmp_path / "o.pcap")
    got = [json.loads(line)["reason"] for line in text.splitlines()]
    assert got == manifest(backend)["adversarial"]
    assert {"truncated", "unknown_sender", "spoofed_inner_src", "not_for_us"} <= set(got)
    if backend == "vxlan":
        assert {"wrong_vni", "bad_vxlan_flags", "arp_replied"} <= set(got)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fabric_replay_writes_what_the_live_daemon_wrote(backend, tmp_path):
    out = tmp_path / "o.pcap"
    replay_golden(backend, "fabric", out)
    replayed = [r.data for r in read_records(device_path(out))]
    assert replayed and replayed == [r.data for r in read_records(PCAPS / backend / "arrived.pcap")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_egress_replay_sends_what_the_live_daemon_sent(backend, tmp_path):
    out = tmp_path / "o.pcap"
    replay_golden(backend, "egress", out)

    def without_ip_id(ip: bytes) -> bytes:
        return ip[:4] + ip[6:10] + ip[12:]  # id and header checksum

    replayed = [without_ip_id(r.data) for r in read_records(out)]
    live = [without_ip_id(r.data[14:]) for r in read_records(PCAPS / backend / "fabric-out.pcap")]
    assert replayed and replayed == live


def test_runs_are_deterministic(tmp_path):
    first, second = tmp_path / "a.pcap", tmp_path / "b.pcap"
    runs = [replay_golden("vxlan", "egress", path) for path in (first, second)]
    assert runs[0] == runs[1]
    assert first.read_bytes() == second.read_bytes()
    assert device_path(first).read_bytes() == device_path(second).read_bytes()


def test_output_link_types_and_timestamps(tmp_path):
    out = tmp_path / "o.pcap"
    replay_golden("vxlan", "fabric", out)
    wire, device = read_records(out), read_records(device_path(out))
    assert wire == [] and all(r.linktype == LINKTYPE_ETHERNET for r in device)
    inputs = read_records(PCAPS / "vxlan" / "fabric.pcap")
    assert [(r.sec, r.frac) for r in device] == [(r.sec, r.frac) for r in inputs]
    replay_golden("udp", "egress", out)
    assert {r.linktype for r in read_records(out)} == {LINKTYPE_RAW}


def test_json_record_shape(tmp_path):
    _, text = replay_golden("vxlan", "egress", tmp_path / "o.pcap")
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["index"] for r in records] == list(range(len(records)))
    for r in records:
        assert set(r) == RECORD_KEYS
        assert r["direction"] in ("egress", "ingress")
        assert r["verdict"] in ("forward", "drop", "slow")
    forwarded = [r for r in records if r["verdict"] == "forward"]
    assert forwarded and all(r["peer"]["subnet"] and r["peer"]["public_ip"] for r in forwarded)
    assert all(r["out_len"] == r["in_len"] + 36 for r in forwarded)  # outer IP+UDP+VXLAN
    assert all(r["slow"] for r in records if r["verdict"] == "slow")


def test_summary_text_mode():
    code, text = replay(str(PCAPS / "udp" / "fabric.pcap"), "--leases",
                        str(PCAPS / "udp" / "leases.json"), "--as", manifest("udp")["as"])
    assert code == 0 and "ingress" in text and '"forwarded": 12' in text


@pytest.mark.parametrize("argv", [
    ["bad/not-a-pcap.pcap"],
    ["does-not-exist.pcap"],
])
def test_not_a_capture_exits_2(argv, capsys):
    code, _ = replay(str(PCAPS / argv[0]), "--leases", str(PCAPS / "vxlan" / "leases.json"),
                     "--as", manifest("vxlan")["as"])
    assert code == 2
    assert "weft replay:" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys):
    vx = str(PCAPS / "vxlan" / "egress.pcap")
    leases = str(PCAPS / "vxlan" / "leases.json")
    assert replay(vx)[0] == 2
    assert replay(vx, "--leases", leases, "--as", "10.99.0.0/24")[0] == 2  # no such lease
    assert replay(vx, "--leases", leases, "--as", "bogus")[0] == 2
    assert replay(vx, "--leases", vx, "--as", manifest("vxlan")["as"])[0] == 2  # not JSON
    assert replay(vx, "--decap-only", "--port", "0")[0] == 2
    assert "weft replay:" in capsys.readouterr().err


def test_unknown_linktype_and_cut_record_get_reasons():
    leases, subnet = str(PCAPS / "vxlan" / "leases.json"), manifest("vxlan")["as"]
    for name, reason in (("unknown-linktype", "unsupported_linktype"),
                         ("cut-record", "truncated")):
        code, text = replay(str(PCAPS / "bad" / f"{name}.pcap"), "--leases", leases,
                            "--as", subnet, "--json")
        assert code == 0
        assert [json.loads(line)["reason"] for line in text.splitlines()] == [reason]


def test_raw_ip_record_in_a_vxlan_replay_is_unsupported(tmp_path):
    path = tmp_path / "raw.pcap"
    with PcapOut(path, LINKTYPE_RAW) as out:
        out.write(read_records(PCAPS / "udp" / "egress.pcap")[0].data, 1, 0)
    code, text = replay(str(path), "--leases", str(PCAPS / "vxlan" / "leases.json"),
                        "--as", manifest("vxlan")["as"], "--json")
    assert code == 0 and json.loads(text)["reason"] == "unsupported_linktype"


def test_pcapng_input_gives_the_same_verdicts(tmp_path):
    from scapy.utils import PcapNgWriter, rdpcap

    path = tmp_path / "in.pcapng"
    with PcapNgWriter(str(path)) as writer:
        for pkt in rdpcap(str(PCAPS / "vxlan" / "fabric.pcap")):
            writer.write(pkt)
    snap = load_snapshot(PCAPS / "vxlan" / "leases.json")
    from ipaddress import IPv4Network

    host = host_from_snapshot(snap, IPv4Network(manifest("vxlan")["as"]))
    _, outcomes, _ = replay_capture(path, host)
    expected = (PCAPS / "vxlan" / "expected" / "fabric.json").read_text().splitlines()
    assert [json.dumps(o.to_json()) for o in outcomes] == expected


def test_python_c_entry_point():
    """The function is usable from a plain `python -c`, as the lead wires it into the CLI."""
    code = ("import argparse, sys; from weft.tools.commands import add_replay_parser; "
            "p = argparse.ArgumentParser(); add_replay_parser(p.add_subparsers(), []); "
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    result = subprocess.run(
        [sys.executable, "-c", code, "replay", str(PCAPS / "bad" / "not-a-pcap.pcap"),
         "--decap-only"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a pcap" in result.stderr


def test_host_gw_has_nothing_to_replay(tmp_path, capsys):
    snapshot = json.loads((PCAPS / "vxlan" / "leases.json").read_text())
    snapshot["config"]["Backend"] = {"Type": "host-gw"}
    path = tmp_path / "leases.json"
    path.write_text(json.dumps(snapshot))
    code, _ = replay(str(PCAPS / "vxlan" / "egress.pcap"), "--leases", str(path),
                     "--as", manifest("vxlan")["as"])
    assert code == 2 and "host-gw" in capsys.readouterr().err
