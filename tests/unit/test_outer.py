"""weft.packet.outer and weft.packet.checksum: one ingress rule and one outer wrapping, shared
by `weft replay`, `weft trace` and the live-trace pcap writer, checked on the same inputs."""

from __future__ import annotations

import json
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum as scapy_checksum

from weft.control.registry import load_snapshot
from weft.observe.tracehub import event_frames
from weft.packet.checksum import fold16, inet_checksum, sum16, udp_checksum
from weft.packet.outer import find_datagram, is_ingress, wrap_udp
from weft.packet.reasons import Reason
from weft.tools.offline import host_from_snapshot
from weft.tools.pcapio import LINKTYPE_ETHERNET, Record
from weft.tools.replay import Replayer
from weft.tools.trace_input import read_input

OURS, PEER, OTHER = "192.0.2.11", "192.0.2.12", "192.0.2.99"
LOCAL_MAC, PEER_MAC = "02:00:00:00:15:01", "7e:81:33:71:e9:51"
ADDR = {name: int(IPv4Address(ip)) for name, ip in (("ours", OURS), ("peer", PEER))}


def host(tmp_path, backend: str):
    def lease(ip: str, mac: str) -> dict:
        if backend == "udp":
            return {"PublicIP": ip}
        return {"PublicIP": ip, "BackendType": "vxlan",
                "BackendData": {"VNI": 1, "VtepMAC": mac}}

    doc = {"config": {"Network": "10.1.0.0/16", "Backend": {"Type": backend}}, "revision": 1,
           "leases": {"10.1.15.0/24": lease(OURS, LOCAL_MAC),
                      "10.1.16.0/24": lease(PEER, PEER_MAC)}}
    path = tmp_path / f"{backend}.json"
    path.write_text(json.dumps(doc))
    return host_from_snapshot(load_snapshot(path), IPv4Network("10.1.15.0/24"))


# ---- checksum -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x45\x00\x00\x1c", bytes(range(255)),
                                  b"\xff" * 64])
def test_inet_checksum_matches_scapy(data):
    assert inet_checksum(data) == scapy_checksum(data)


def test_udp_checksum_never_sends_zero():
    # Pick the last payload word so that the one's-complement sum is all ones (checksum 0):
    # the field must then carry 0xFFFF, since 0 means "no checksum" (RFC 768).
    src, dst = ADDR["ours"], ADDR["peer"]
    udp = bytearray(struct.pack("!HHHH", 8285, 8285, 10, 0) + b"\0\0")
    pseudo = struct.pack("!IIBBH", src, dst, 0, 17, len(udp))
    udp[8:10] = (0xFFFF - fold16(sum16(pseudo + bytes(udp)))).to_bytes(2, "big")
    assert inet_checksum(pseudo + bytes(udp)) == 0
    assert udp_checksum(src, dst, bytes(udp)) == 0xFFFF
    assert udp_checksum(src, dst, bytes(udp[:8]) + b"\0\1") not in (0, 0xFFFF)


# ---- wrapping -----------------------------------------------------------------------------


def test_wrap_udp_is_what_scapy_builds_with_checksums_filled():
    payload = b"\x45" + bytes(19)
    packet = wrap_udp(payload, ADDR["ours"], ADDR["peer"], 8285)
    parsed = IP(packet)
    assert parsed.id == 0 and parsed.flags == "DF" and parsed.ttl == 64
    assert parsed[UDP].sport == parsed[UDP].dport == 8285 and parsed[UDP].chksum != 0
    parsed.chksum = None
    parsed[UDP].chksum = None
    assert bytes(IP(bytes(parsed))) == packet  # scapy recomputes both checksums identically
    assert find_datagram(packet).payload == payload


def test_live_trace_pcap_wraps_as_replay_does(tmp_path):
    """A udp egress packet: the wire packet `weft replay` writes is the one `--write` saves."""
    inner = bytes(IP(src="10.1.15.2", dst="10.1.16.2", ttl=9) / ICMP())
    replayer = Replayer(host(tmp_path, "udp"))
    (outcome,) = replayer.run([Record(0, inner, 101, 0, 0, len(inner))])
    (side, wire), = outcome.outputs
    assert side == "wire" and IP(wire)[UDP].chksum != 0
    forwarded = IP(wire)[UDP].load  # the pipeline's output, TTL decremented
    event = {"dir": "egress", "peer": PEER, "in": inner.hex(), "out": forwarded.hex()}
    frames = event_frames(event, {"backend": "udp", "public_ip": OURS, "port": 8285})
    assert frames[1][14:] == wire
    ingress = {"dir": "ingress", "peer": PEER, "in": forwarded.hex()}
    assert event_frames(ingress, {"backend": "udp", "public_ip": OURS, "port": 8285})[0][14:] \
        == wrap_udp(forwarded, ADDR["peer"], ADDR["ours"], 8285)


# ---- ingress classification: replay and trace on the same input ------------------------------


def _vxlan_wire(dst: str, dport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
                 / IP(src=PEER, dst=dst) / UDP(sport=40000, dport=dport) / VXLAN(vni=1)
                 / Ether(src=PEER_MAC, dst=LOCAL_MAC) / IP(src="10.1.16.2", dst="10.1.15.2")
                 / ICMP())


@pytest.mark.parametrize(("dst", "dport", "direction"), [
    (OURS, 8472, "ingress"),  # to our PublicIP on our port: the tunnel socket receives it
    (OTHER, 8472, "egress"),  # our port, another host: routed, never delivered to the socket
    (OURS, 4789, "egress"),  # our PublicIP, another port: not the tunnel socket's
])
def test_replay_and_trace_classify_alike(tmp_path, dst, dport, direction):
    frame = _vxlan_wire(dst, dport)
    offline = host(tmp_path, "vxlan")
    outcome, data, sender = Replayer(offline).classify(
        Record(0, frame, LINKTYPE_ETHERNET, 0, 0, len(frame)))
    traced = read_input(offline, frame.hex())
    assert outcome.direction == traced.direction == direction
    if direction == "ingress":
        assert data == traced.data == frame[42:]  # the UDP payload: VXLAN + inner frame
        assert sender == traced.src_ip == ADDR["peer"]
    else:
        assert traced.data == data == frame  # the TAP frame as it is


def test_is_ingress_rule():
    dgram = find_datagram(bytes(IP(src=PEER, dst=OURS) / UDP(dport=8472) / b"x"))
    assert is_ingress(dgram, ADDR["ours"], 8472)
    assert not is_ingress(dgram, ADDR["peer"], 8472) and not is_ingress(dgram, ADDR["ours"], 8285)
    assert not is_ingress(None, ADDR["ours"], 8472)


def test_trace_forced_ingress_to_another_address_says_so(tmp_path):
    frame = _vxlan_wire(OTHER, 8472)
    traced = read_input(host(tmp_path, "vxlan"), frame.hex(), direction="ingress")
    assert traced.direction == "ingress" and traced.data == frame[42:]
    assert any("is not our PublicIP" in note for note in traced.notes)


def test_undeliverable_datagram_is_refused_by_trace_and_dropped_by_replay(tmp_path):
    ip = bytearray(bytes(IP(src=PEER, dst=OURS) / UDP(sport=1, dport=8472) / VXLAN()))
    ip[6:8] = b"\x20\x00"  # more fragments: the socket never sees a fragment
    ip[10:12] = b"\0\0"
    ip[10:12] = inet_checksum(bytes(ip[:20])).to_bytes(2, "big")
    assert find_datagram(bytes(ip)).error == Reason.BAD_UDP
    offline = host(tmp_path, "vxlan")
    outcome, data, _ = Replayer(offline).classify(Record(0, bytes(ip), 101, 0, 0, len(ip)))
    assert outcome.direction == "ingress" and data is None and outcome.reason == Reason.BAD_UDP
    with pytest.raises(ValueError, match="bad_udp"):
        read_input(offline, bytes(ip).hex())
