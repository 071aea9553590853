"""The daemon does not load scapy (~50 MB) until the slow path first needs it."""

import subprocess
import sys

SCRIPT = r"""
import sys
from ipaddress import IPv4Address, IPv4Network

import weft.backends.hostgw, weft.backends.udp, weft.backends.vxlan, weft.cli, weft.daemon
from weft.packet.batch import Batch
from weft.packet.pipeline import Pipeline

pipeline = Pipeline("vxlan", IPv4Network("10.1.0.0/16"), 24)
LOCAL_MAC, PEER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
pipeline.set_local(IPv4Network("10.1.1.0/24"), IPv4Address("192.0.2.1"), LOCAL_MAC)
pipeline.table.set_peer(IPv4Network("10.1.2.0/24"), IPv4Address("192.0.2.2"), PEER_MAC)
batch = Batch(4)
eth = bytes.fromhex("020000000002" "020000000001" "0800")
ip = bytearray(bytes.fromhex("4500001c00004000400100000a0101020a010202") + bytes(8))
batch.load(0, eth + bytes(ip))
pipeline.egress(batch, 1)
print("after fast path:", "scapy" in sys.modules)
arp = (b"\xff" * 6 + bytes.fromhex("020000000009") + bytes.fromhex("0806")
       + bytes.fromhex("0001080006040001") + bytes.fromhex("020000000009")
       + IPv4Address("10.1.1.2").packed + bytes(6) + IPv4Address("10.1.2.0").packed)
result = pipeline.slow(arp, 0)
print("after slow path:", "scapy" in sys.modules, result.summary)
"""


def test_scapy_is_loaded_by_the_first_slow_path_packet_only():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "after fast path: False" in out.stdout
    assert "after slow path: True" in out.stdout
    assert "is-at 02:00:00:00:00:02" in out.stdout  # the slow path really answered
