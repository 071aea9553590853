"""`weft replay` and `weft trace` through the real command line (wiring, exit codes)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VXLAN = ROOT / "pcaps" / "vxlan"
WEFT = [sys.executable, "-m", "weft.cli"]


def weft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WEFT, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _as() -> str:
    return json.loads((VXLAN / "manifest.json").read_text())["as"]


def test_replay_json_through_the_cli():
    result = weft("replay", str(VXLAN / "adversarial.pcap"), "--leases",
                  str(VXLAN / "leases.json"), "--as", _as(), "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [json.loads(line) for line in
                (VXLAN / "expected" / "adversarial.json").read_text().splitlines()]
    assert [(r["verdict"], r["reason"]) for r in records] == \
        [(r["verdict"], r["reason"]) for r in expected]


def test_replay_of_a_non_pcap_exits_2(tmp_path):
    bogus = tmp_path / "x.pcap"
    bogus.write_text("not a capture")
    result = weft("replay", str(bogus), "--leases", str(VXLAN / "leases.json"), "--as", _as())
    assert result.returncode == 2 and result.stderr


def test_trace_through_the_cli():
    peer = next(s for s in json.loads((VXLAN / "leases.json").read_text())["leases"]
                if s != _as())
    dst = peer.split("/")[0].rsplit(".", 1)[0] + ".2"
    src = _as().split("/")[0].rsplit(".", 1)[0] + ".2"
    result = weft("trace", "--leases", str(VXLAN / "leases.json"), "--as", _as(), "--json",
                  f"Ether()/IP(src='{src}',dst='{dst}')/ICMP()")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert "forward" in json.dumps(doc).lower()
    refused = weft("trace", "--leases", str(VXLAN / "leases.json"), "--as", _as(),
                   "__import__('os').system('true')")
    assert refused.returncode == 2
