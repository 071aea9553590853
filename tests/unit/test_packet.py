"""The pure-Python twins: every verdict/reason case, scapy-checked output, checksums, hashes."""

import random
import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from datapath_world import LOCAL_MAC, NET, PEER_MAC, A, B, C, ip, make_world
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from weft.packet import fastpath_twin as packet
from weft.packet.reasons import RETIRED, Reason, Verdict, reason_name
from weft.packet.table import DatapathConfig, PeerTable


@pytest.fixture
def world() -> tuple[DatapathConfig, PeerTable]:
    """We are 10.1.15.0/24 at 192.0.2.1; peers .16 and .18 at .2, .17 at .3, .19 without MAC."""
    return make_world()


def tap_frame(dst: str = "10.1.16.3", **ip_kw: object) -> bytes:
    return bytes(Ether(src=LOCAL_MAC, dst=PEER_MAC) / IP(src="10.1.15.2", dst=dst, **ip_kw)
                 / TCP(sport=40000, dport=80) / b"payload")


def vxlan_payload(src: str = "10.1.16.3", dst: str = "10.1.15.2", flags: int = 0x08,
                  vni: int = 1, mac: str = LOCAL_MAC) -> bytes:
    inner = Ether(src=PEER_MAC, dst=mac) / IP(src=src, dst=dst) / ICMP() / b"ping"
    return struct.pack("!B3xI", flags, vni << 8) + bytes(inner)


# ---- helpers --------------------------------------------------------------------------------


def test_ipv4_checksum_matches_scapy() -> None:
    hdr = bytes(IP(src="10.1.15.2", dst="10.1.16.3", ttl=17, id=999, options=b"\x01" * 4))
    ihl = (hdr[0] & 15) * 4
    zeroed = hdr[:10] + b"\0\0" + hdr[12:ihl]
    assert packet.ipv4_checksum(zeroed) == int.from_bytes(hdr[10:12], "big")
    assert packet.ipv4_checksum(hdr[:ihl]) == 0  # a valid header sums to zero


def test_ttl_incremental_checksum_equals_full_recompute() -> None:
    rng = random.Random(1624)
    for _ in range(2000):
        hdr = bytearray(rng.randbytes(20))
        hdr[0] = 0x45
        hdr[8] = rng.randint(1, 255)
        hdr[10:12] = b"\0\0"
        hdr[10:12] = packet.ipv4_checksum(bytes(hdr)).to_bytes(2, "big")
        new = packet.ttl_decrement_checksum(int.from_bytes(hdr[10:12], "big"), hdr[8], hdr[9])
        hdr[8] -= 1
        hdr[10:12] = b"\0\0"
        assert new == packet.ipv4_checksum(bytes(hdr))


def test_flow_hash_stable_and_spread() -> None:
    h = packet.flow_hash(ip("10.1.15.2"), ip("10.1.16.3"), 6, 40000, 80)
    assert h == packet.flow_hash(ip("10.1.15.2"), ip("10.1.16.3"), 6, 40000, 80)
    assert h == 0x3F2E522B  # pinned: a change would reshuffle flows across receive queues
    ports = {packet.flow_src_port(packet.flow_hash(ip("10.1.15.2"), ip("10.1.16.3"), 6, sp, 80))
             for sp in range(30000, 31000)}
    assert len(ports) > 960  # 1000 flows over 28231 ports: ~18 birthday collisions expected
    assert all(packet.SRC_PORT_MIN <= p < packet.SRC_PORT_MAX for p in ports)
    low = sum(p < (packet.SRC_PORT_MIN + packet.SRC_PORT_MAX) // 2 for p in ports)
    assert 400 < low < 600
    assert packet.flow_src_port(0) == 32768 and packet.flow_src_port(0xFFFFFFFF) == 60998


# ---- vxlan egress ---------------------------------------------------------------------------


def test_vxlan_egress_decodes_in_scapy(world) -> None:
    cfg, table = world
    frame = tap_frame()
    res = packet.vxlan_egress(frame, cfg.cfg, table, ip_id=0x1234)
    assert (res.verdict, res.reason) == (Verdict.FORWARD, Reason.OK)
    assert res.dst_ip == ip(B) and res.peer_index == 16
    outer = IP(res.out)
    assert outer.src == A and outer.dst == B and outer.ttl == 64 and outer.id == 0x1234
    assert outer.flags == 0 and outer.len == len(res.out) == len(frame) + 36
    assert packet.ipv4_checksum(res.out[:20]) == 0
    udp = outer[UDP]
    assert udp.dport == 8472 and udp.chksum == 0 and udp.len == len(res.out) - 20
    assert 32768 <= udp.sport < 61000
    raw = res.out[28:36]
    assert raw == b"\x08\0\0\0\0\0\x01\0"
    inner = Ether(res.out[36:])
    assert inner.dst == PEER_MAC and inner.src == LOCAL_MAC
    assert inner[IP].dst == "10.1.16.3" and bytes(inner[TCP].payload) == b"payload"
    vx = VXLAN(raw + res.out[36:])
    assert vx.vni == 1
    fields = dict(res.fields)
    assert fields["outer.ip.src"] == A and fields["outer.ip.dst"] == B
    assert fields["udp.sport"] == udp.sport and fields["udp.csum"] == 0
    assert fields["vxlan.flags"] == 0x08 and fields["vxlan.vni"] == 1


def test_vxlan_egress_rewrites_macs_and_trims_padding(world) -> None:
    cfg, table = world
    frame = bytes(Ether(src="aa:aa:aa:aa:aa:aa", dst="ba:bb:bb:bb:bb:bb")
                  / IP(src="10.1.15.2", dst="10.1.17.1") / ICMP())
    frame += b"\0" * (60 - len(frame))  # minimum Ethernet frame padding
    res = packet.vxlan_egress(frame, cfg.cfg, table)
    inner = res.out[36:]
    assert len(inner) == 14 + 28
    assert inner[:6] == bytes.fromhex("7e0000000017") and inner[6:12].hex(":") == LOCAL_MAC
    assert res.dst_ip == ip(C)


def test_vxlan_egress_sport_follows_flow(world) -> None:
    cfg, table = world
    def sport(fr: bytes) -> int:
        return int.from_bytes(packet.vxlan_egress(fr, cfg.cfg, table).out[20:22], "big")
    a = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3") / UDP(sport=1, dport=53))
    b = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3") / UDP(sport=2, dport=53))
    a2 = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3", id=7) / UDP(sport=1, dport=53) / b"x")
    assert sport(a) == sport(a2) != sport(b)


@pytest.mark.parametrize(
    ("frame", "verdict", "reason"),
    [
        (b"\x00" * 13, Verdict.DROP, Reason.TRUNCATED),
        (bytes(Ether() / ARP(pdst="10.1.16.0")), Verdict.SLOW, Reason.ARP),
        (bytes(Ether(type=0x86DD)) + b"\x60" + bytes(39), Verdict.SLOW, Reason.IPV6),
        (bytes(Ether(type=0x8100) / bytes(40)), Verdict.DROP, Reason.UNKNOWN_ETHERTYPE),
        (bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(dst="10.1.16.3")), Verdict.DROP,
         Reason.BROADCAST),
        (bytes(Ether(dst="01:00:5e:00:00:01") / IP(dst="10.1.16.3")), Verdict.DROP,
         Reason.MULTICAST),
        (tap_frame("10.1.20.1"), Verdict.SLOW, Reason.NO_ROUTE),
        (tap_frame("8.8.8.8"), Verdict.SLOW, Reason.OUTSIDE_NETWORK),
        (tap_frame("10.1.15.9"), Verdict.DROP, Reason.LOCAL_DST),
        (tap_frame("10.1.19.1"), Verdict.DROP, Reason.PEER_LOOKUP_MISS),
        (tap_frame()[:30], Verdict.DROP, Reason.TRUNCATED),
        (tap_frame()[:-1], Verdict.DROP, Reason.TRUNCATED),
        (tap_frame(ihl=4), Verdict.DROP, Reason.BAD_IP_HEADER),
        (tap_frame(version=5), Verdict.DROP, Reason.BAD_IP_HEADER),
        (tap_frame(len=19), Verdict.DROP, Reason.BAD_IP_HEADER),
    ],
)
def test_vxlan_egress_cases(world, frame: bytes, verdict: Verdict, reason: Reason) -> None:
    cfg, table = world
    res = packet.vxlan_egress(frame, cfg.cfg, table)
    assert (res.verdict, res.reason) == (verdict, reason)
    assert res.out == frame and res.dst_ip == 0


def test_vxlan_egress_mtu(world) -> None:
    cfg, table = world
    big = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3", flags="DF") / UDP() / bytes(1500))
    assert packet.vxlan_egress(big, cfg.cfg, table).reason == Reason.FRAG_NEEDED
    assert packet.vxlan_egress(big, cfg.cfg, table).verdict == Verdict.SLOW
    big_no_df = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3") / UDP() / bytes(1500))
    assert packet.vxlan_egress(big_no_df, cfg.cfg, table).verdict == Verdict.FORWARD
    fits = bytes(Ether() / IP(src="10.1.15.2", dst="10.1.16.3", flags="DF") / UDP() / bytes(1422))
    assert packet.vxlan_egress(fits, cfg.cfg, table).verdict == Verdict.FORWARD


# ---- vxlan ingress --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "sender", "reason"),
    [
        (vxlan_payload(), B, Reason.OK),
        (vxlan_payload(src="10.1.18.7"), B, Reason.OK),  # one host, two leases
        (vxlan_payload(flags=0xFF), B, Reason.OK),  # reserved bits ignored (RFC 7348)
        (vxlan_payload(mac="ff:ff:ff:ff:ff:ff"), B, Reason.OK),
        (vxlan_payload()[:41], B, Reason.TRUNCATED),
        (vxlan_payload(flags=0x00), B, Reason.BAD_VXLAN_FLAGS),
        (vxlan_payload(flags=0xF7), B, Reason.BAD_VXLAN_FLAGS),
        (vxlan_payload(vni=2), B, Reason.WRONG_VNI),
        (vxlan_payload(), "192.0.2.99", Reason.UNKNOWN_SENDER),
        (struct.pack("!B3xI", 8, 256) + bytes(Ether() / ARP()), B, Reason.NOT_IPV4),
        (vxlan_payload()[:-1], B, Reason.TRUNCATED),
        (vxlan_payload(src="10.1.17.3"), B, Reason.SPOOFED_INNER_SRC),
        (vxlan_payload(src="10.1.15.3"), B, Reason.SPOOFED_INNER_SRC),
        (vxlan_payload(src="8.8.8.8"), B, Reason.SPOOFED_INNER_SRC),
        (vxlan_payload(src="10.1.20.3"), B, Reason.SPOOFED_INNER_SRC),
        (vxlan_payload(dst="10.1.16.9"), B, Reason.NOT_FOR_US),
        (vxlan_payload(dst="8.8.8.8"), B, Reason.NOT_FOR_US),
        (vxlan_payload(mac="02:00:00:00:00:02"), B, Reason.WRONG_INNER_MAC),
    ],
)
def test_vxlan_ingress_cases(world, payload: bytes, sender: str, reason: Reason) -> None:
    cfg, table = world
    res = packet.vxlan_ingress(payload, ip(sender), cfg.cfg, table)
    assert res.reason == reason
    if reason == Reason.OK:
        assert res.verdict == Verdict.FORWARD and res.out == payload[8:]
    else:
        assert res.verdict == Verdict.DROP and res.out == payload


def test_vxlan_round_trip_between_two_hosts() -> None:
    """Host A encapsulates, host B (configured the other way round) accepts the inner frame."""
    mac_a, mac_b = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
    cfg_a, cfg_b = DatapathConfig(NET, 24), DatapathConfig(NET, 24)
    cfg_a.set_local(IPv4Network("10.1.15.0/24"), IPv4Address(A), mac_a)
    cfg_b.set_local(IPv4Network("10.1.16.0/24"), IPv4Address(B), mac_b)
    tab_a, tab_b = PeerTable(NET, 24), PeerTable(NET, 24)
    tab_a.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address(B), mac_b)
    tab_b.set_peer(IPv4Network("10.1.15.0/24"), IPv4Address(A), mac_a)
    sent = packet.vxlan_egress(tap_frame(), cfg_a.cfg, tab_a)
    got = packet.vxlan_ingress(sent.out[28:], ip(A), cfg_b.cfg, tab_b)
    assert got.verdict == Verdict.FORWARD and got.peer_index == 15
    assert Ether(got.out)[IP].dst == "10.1.16.3" and got.out[:6] == mac_b


# ---- udp backend ----------------------------------------------------------------------------


def test_udp_egress_decrements_ttl(world) -> None:
    cfg, table = world
    pkt = bytes(IP(src="10.1.15.2", dst="10.1.17.4", ttl=64) / UDP() / b"data")
    res = packet.udp_egress(pkt, cfg.cfg, table)
    assert (res.verdict, res.dst_ip) == (Verdict.FORWARD, ip(C))
    out = IP(res.out)
    assert out.ttl == 63 and packet.ipv4_checksum(res.out[:20]) == 0
    assert dict(res.fields)["ip.ttl"] == 63


@pytest.mark.parametrize(
    ("pkt", "verdict", "reason"),
    [
        (b"", Verdict.DROP, Reason.TRUNCATED),
        (b"\x60" + bytes(39), Verdict.SLOW, Reason.IPV6),
        (b"\x75" + bytes(39), Verdict.DROP, Reason.NOT_IPV4),
        (bytes(IP(dst="10.1.16.3", ttl=1)), Verdict.SLOW, Reason.TTL_EXCEEDED),
        (bytes(IP(dst="10.1.20.3")), Verdict.SLOW, Reason.NO_ROUTE),
        (bytes(IP(dst="8.8.8.8")), Verdict.SLOW, Reason.OUTSIDE_NETWORK),
        (bytes(IP(dst="10.1.15.3")), Verdict.DROP, Reason.LOCAL_DST),
        (bytes(IP(dst="10.1.16.3", flags="DF") / bytes(1500)), Verdict.SLOW, Reason.FRAG_NEEDED),
        (bytes(IP(dst="10.1.16.3", ihl=3)), Verdict.DROP, Reason.BAD_IP_HEADER),
        (bytes(IP(dst="10.1.16.3"))[:19], Verdict.DROP, Reason.TRUNCATED),
    ],
)
def test_udp_egress_cases(world, pkt: bytes, verdict: Verdict, reason: Reason) -> None:
    cfg, table = world
    res = packet.udp_egress(pkt, cfg.cfg, table)
    assert (res.verdict, res.reason, res.out) == (verdict, reason, pkt)


@pytest.mark.parametrize(
    ("pkt", "sender", "reason"),
    [
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=9) / ICMP()), B, Reason.OK),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=1)), B, Reason.TTL_EXCEEDED),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=0)), B, Reason.TTL_EXCEEDED),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2")), "192.0.2.99", Reason.UNKNOWN_SENDER),
        (bytes(IP(src="10.1.17.3", dst="10.1.15.2")), B, Reason.SPOOFED_INNER_SRC),
        (bytes(IP(src="10.1.16.3", dst="10.1.17.2")), B, Reason.NOT_FOR_US),
        (b"\x60" + bytes(39), B, Reason.NOT_IPV4),
        (b"", B, Reason.TRUNCATED),
    ],
)
def test_udp_ingress_cases(world, pkt: bytes, sender: str, reason: Reason) -> None:
    cfg, table = world
    res = packet.udp_ingress(pkt, ip(sender), cfg.cfg, table)
    assert res.reason == reason
    if reason == Reason.OK:
        assert IP(res.out).ttl == 8 and packet.ipv4_checksum(res.out[:20]) == 0
    else:
        assert res.verdict == Verdict.DROP and res.out == pkt


def test_retired_reason_codes_stay_reserved_and_named() -> None:
    # Old logs and metrics carry 25 (nd_replied); no current reason may take the number over.
    assert not set(RETIRED) & {int(r) for r in Reason}
    assert reason_name(25) == "nd_replied"
    assert reason_name(99) == "reason_99"
