"""Slow path: ARP, ICMP errors, IPv6 and other drops, checked by dissecting outputs with scapy."""

import random
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6MLReport2,
    ICMPv6ND_NS,
    ICMPv6ND_RS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.utils import checksum

from weft.packet import fastpath_twin as twin
from weft.packet.batch import Batch
from weft.packet.pipeline import Pipeline
from weft.packet.reasons import Reason, Verdict
from weft.packet.slowpath import (
    UNREACHABLE_MAC,
    SlowPathContext,
    SlowResult,
    describe,
    handle_egress,
)
from weft.packet.table import DatapathConfig, PeerTable

NETWORK = IPv4Network("10.1.0.0/16")
LOCAL = IPv4Network("10.1.15.0/24")
PEER = IPv4Network("10.1.16.0/24")
PEER_MAC = bytes.fromhex("7e813371e951")
LOCAL_MAC = bytes.fromhex("0a5800000001")  # the TAP's MAC, the kernel's source MAC
KMAC, PMAC = "0a:58:00:00:00:01", "7e:81:33:71:e9:51"
PEER_V6 = IPv6Address("fd00:12:16::")
MTU = 1450


def peer_mac_for(ip):
    return PEER_MAC if ip in PEER else None


def make_ctx(backend="vxlan", **kw):
    return SlowPathContext(backend=backend, local_subnet=LOCAL, network=NETWORK,
                           local_mac=LOCAL_MAC, overlay_mtu=MTU, peer_mac_for=peer_mac_for, **kw)


VX = make_ctx("vxlan")
TUN = make_ctx("udp")


def ip_ok(ip):
    """The IPv4 header checksum verifies and scapy recomputes the same value."""
    assert checksum(bytes(ip)[: ip.ihl * 4]) == 0
    clone = ip.copy()
    del clone.chksum
    assert IP(bytes(clone)).chksum == ip.chksum


def icmp_ok(ip):
    assert checksum(bytes(ip)[ip.ihl * 4: ip.len]) == 0


# ---- ARP -----------------------------------------------------------------------------------


def arp_request(target, sender="10.1.15.0", dst="ff:ff:ff:ff:ff:ff", **kw):
    return bytes(Ether(src=KMAC, dst=dst) / ARP(op=1, hwsrc=KMAC, psrc=sender, pdst=target, **kw))


def check_arp_reply(result, target, answer_mac):
    assert result.reason == Reason.ARP_REPLIED
    assert len(result.writes) == 1
    frame = Ether(result.writes[0])
    assert frame.dst == KMAC and frame.src == answer_mac and frame.type == 0x0806
    arp = frame[ARP]
    assert (arp.hwtype, arp.ptype, arp.hwlen, arp.plen, arp.op) == (1, 0x0800, 6, 4, 2)
    assert arp.hwsrc == answer_mac and arp.psrc == target
    assert arp.hwdst == KMAC and arp.pdst == "10.1.15.0"


def test_arp_for_peer_answers_its_vtep_mac():
    result = handle_egress(arp_request("10.1.16.0"), Reason.ARP, VX)
    check_arp_reply(result, "10.1.16.0", PMAC)
    assert "10.1.16.0" in result.summary and "\n" not in result.summary


def test_arp_unicast_reprobe_is_answered():
    result = handle_egress(arp_request("10.1.16.7", dst=PMAC), Reason.ARP, VX)
    check_arp_reply(result, "10.1.16.7", PMAC)


def test_arp_unleased_in_network_gets_unreachable_mac():
    result = handle_egress(arp_request("10.1.99.1"), Reason.ARP, VX)
    check_arp_reply(result, "10.1.99.1", "02:77:65:66:74:00")
    assert UNREACHABLE_MAC[0] & 0x03 == 0x02  # locally administered unicast


def test_arp_unreachable_mac_can_be_ours():
    ctx = make_ctx(unreachable_mac=LOCAL_MAC)
    check_arp_reply(handle_egress(arp_request("10.1.99.1"), Reason.ARP, ctx), "10.1.99.1", KMAC)


@pytest.mark.parametrize("target, reason", [
    ("192.168.1.1", Reason.OUTSIDE_NETWORK),
    ("10.1.15.0", Reason.LOCAL_DST),
    ("10.1.15.9", Reason.LOCAL_DST),
])
def test_arp_not_answered(target, reason):
    result = handle_egress(arp_request(target, sender="10.1.15.1"), Reason.ARP, VX)
    assert result.reason == reason and result.writes == ()


@pytest.mark.parametrize("frame, reason", [
    (bytes(Ether(src=KMAC, dst=PMAC) / ARP(op=2, hwsrc=KMAC, psrc="10.1.15.0", pdst="10.1.16.0")),
     Reason.SLOW_PATH_DROP),  # a reply, not a question
    (arp_request("10.1.16.0", sender="10.1.16.0"), Reason.SLOW_PATH_DROP),  # gratuitous
    (arp_request("10.1.16.0", sender="0.0.0.0"), Reason.SLOW_PATH_DROP),  # address probe
    (arp_request("10.1.16.0", hwtype=6), Reason.SLOW_PATH_DROP),
    (arp_request("10.1.16.0")[:30], Reason.TRUNCATED),
])
def test_arp_malformed_or_not_a_request(frame, reason):
    result = handle_egress(frame, Reason.ARP, VX)
    assert result.reason == reason and result.writes == ()


def test_arp_lookup_failures_do_not_raise():
    def boom(ip):
        raise RuntimeError("table gone")

    ctx = SlowPathContext("vxlan", LOCAL, NETWORK, LOCAL_MAC, MTU, boom)
    assert handle_egress(arp_request("10.1.16.0"), Reason.ARP, ctx).reason == Reason.SLOW_PATH_DROP
    ctx = SlowPathContext("vxlan", LOCAL, NETWORK, LOCAL_MAC, MTU, lambda ip: b"\x01\x02")
    assert handle_egress(arp_request("10.1.16.0"), Reason.ARP, ctx).reason == (
        Reason.PEER_LOOKUP_MISS)


def test_unreachable_arp_leads_to_no_route_and_icmp():
    """The policy end to end: the kernel uses the unreachable MAC, the fast-path twin says
    NO_ROUTE, the slow path answers net unreachable back to the kernel."""
    table = PeerTable(NETWORK, 24)
    table.set_peer(PEER, IPv4Address("192.0.2.16"), PEER_MAC)
    dp = DatapathConfig(NETWORK, 24, mtu=MTU)
    dp.set_local(LOCAL, IPv4Address("192.0.2.15"), LOCAL_MAC)
    reply = Ether(handle_egress(arp_request("10.1.99.1"), Reason.ARP, VX).writes[0])
    frame = bytes(Ether(src=KMAC, dst=reply[ARP].hwsrc) / IP(src="10.1.15.0", dst="10.1.99.1")
                  / ICMP(type=8) / b"ping")
    step = twin.vxlan_egress(frame, dp.cfg, table)
    assert step.reason == Reason.NO_ROUTE
    result = handle_egress(frame, step.reason, VX)
    out = Ether(result.writes[0])
    assert out.dst == KMAC and out.src == "02:77:65:66:74:00"
    assert (out[ICMP].type, out[ICMP].code) == (3, 0)


# ---- ICMP errors ---------------------------------------------------------------------------

EXPECTED = {
    Reason.NO_ROUTE: (3, 0),
    Reason.OUTSIDE_NETWORK: (3, 0),
    Reason.TTL_EXCEEDED: (11, 0),
    Reason.FRAG_NEEDED: (3, 4),
}


def offending(dst="10.1.99.4", src="10.1.15.3", payload=None, **ip_kw):
    payload = UDP(sport=4000, dport=53) / (b"x" * 40) if payload is None else payload
    return IP(src=src, dst=dst, **ip_kw) / payload


def wrap(backend, ip, src_mac=KMAC, dst_mac=PMAC):
    return bytes(Ether(src=src_mac, dst=dst_mac) / ip) if backend == "vxlan" else bytes(ip)


def run(backend, ip, reason, **kw):
    return handle_egress(wrap(backend, ip, **kw), reason, VX if backend == "vxlan" else TUN)


def error_ip(backend, raw, dst=KMAC, src=PMAC):
    if backend == "vxlan":
        frame = Ether(raw)
        assert frame.dst == dst and frame.src == src and frame.type == 0x0800
        return frame[IP]
    return IP(raw)


@pytest.mark.parametrize("backend", ["vxlan", "udp"])
@pytest.mark.parametrize("reason", list(EXPECTED))
def test_icmp_error_built_like_a_router(backend, reason):
    bad = offending(dst="192.168.5.5" if reason == Reason.OUTSIDE_NETWORK else "10.1.99.4",
                    ttl=1 if reason == Reason.TTL_EXCEEDED else 64,
                    flags="DF" if reason == Reason.FRAG_NEEDED else 0, tos=0x10)
    result = run(backend, bad, reason)
    assert result.reason == Reason.ICMP_ERROR_SENT and len(result.writes) == 1
    ip = error_ip(backend, result.writes[0])
    assert ip.src == "10.1.15.0" and ip.dst == "10.1.15.3"
    assert ip.ttl == 64 and ip.proto == 1 and ip.frag == 0 and ip.tos == 0xD0
    assert ip.len == 20 + 8 + 28 and len(bytes(ip)) == ip.len
    ip_ok(ip)
    icmp_ok(ip)
    icmp = ip[ICMP]
    assert (icmp.type, icmp.code) == EXPECTED[reason]
    header = bytes(icmp)[:8]
    if reason == Reason.FRAG_NEEDED:
        assert icmp.nexthopmtu == MTU and header[4:8] == MTU.to_bytes(4, "big")
    else:
        assert header[4:8] == bytes(4)
    assert bytes(icmp)[8:] == bytes(bad)[:28]  # offending header + 8 bytes, as received
    assert "10.1.15.3" in result.summary


def test_icmp_quotes_ip_options_and_no_ethernet_padding():
    bad = IP(src="10.1.15.3", dst="10.1.99.4", proto=17, options=[IPOption_RR()]) / b"ab"
    frame = wrap("vxlan", bad)
    frame += bytes(max(0, 60 - len(frame))) + b"\xee" * 4  # padding the quote must not carry
    result = handle_egress(frame, Reason.NO_ROUTE, VX)
    ip = error_ip("vxlan", result.writes[0])
    quoted = bytes(ip[ICMP])[8:]
    ihl = IP(bytes(bad)).ihl
    assert ihl > 5 and quoted == bytes(bad) and len(quoted) == ihl * 4 + 2
    longer = bad / (b"c" * 20)
    result = handle_egress(wrap("vxlan", longer), Reason.NO_ROUTE, VX)
    assert bytes(error_ip("vxlan", result.writes[0])[ICMP])[8:] == bytes(longer)[: ihl * 4 + 8]
    ip_ok(ip)
    icmp_ok(ip)


def test_icmp_short_payload_quoted_whole():
    bad = offending(payload=b"abc", proto=17)
    result = run("udp", bad, Reason.NO_ROUTE)
    assert bytes(IP(result.writes[0])[ICMP])[8:] == bytes(bad)


def test_icmp_about_echo_request_and_first_fragment_is_sent():
    echo = offending(payload=ICMP(type=8) / b"ping")
    assert run("udp", echo, Reason.NO_ROUTE).reason == Reason.ICMP_ERROR_SENT
    first = offending(flags="MF")
    assert run("vxlan", first, Reason.NO_ROUTE).reason == Reason.ICMP_ERROR_SENT


@pytest.mark.parametrize("backend", ["vxlan", "udp"])
@pytest.mark.parametrize("bad, reason", [
    (offending(payload=ICMP(type=3, code=1) / IP(dst="10.1.15.3") / UDP()), Reason.ICMP_SUPPRESSED),
    (offending(payload=ICMP(type=11) / (b"x" * 28)), Reason.ICMP_SUPPRESSED),
    (offending(frag=185), Reason.ICMP_SUPPRESSED),  # non-first fragment
    (offending(src="0.0.0.0"), Reason.ICMP_SUPPRESSED),
    (offending(src="127.0.0.1"), Reason.ICMP_SUPPRESSED),
    (offending(src="224.0.0.5"), Reason.ICMP_SUPPRESSED),
    (offending(dst="255.255.255.255"), Reason.BROADCAST),
    (offending(dst="10.1.255.255"), Reason.BROADCAST),  # network broadcast
    (offending(dst="10.1.99.255"), Reason.BROADCAST),  # subnet-directed broadcast
    (offending(dst="239.1.2.3"), Reason.MULTICAST),
])
def test_icmp_error_suppressed(backend, bad, reason):
    result = run(backend, bad, Reason.NO_ROUTE)
    assert result.reason == reason and result.writes == ()


@pytest.mark.parametrize("dst_mac, reason", [
    ("ff:ff:ff:ff:ff:ff", Reason.BROADCAST),
    ("01:00:5e:01:02:03", Reason.MULTICAST),
])
def test_link_layer_broadcast_multicast_dropped(dst_mac, reason):
    result = run("vxlan", offending(), Reason.NO_ROUTE, dst_mac=dst_mac)
    assert result.reason == reason and result.writes == ()


def test_no_icmp_to_multicast_source_mac():
    result = run("vxlan", offending(), Reason.NO_ROUTE, src_mac="01:00:5e:00:00:01")
    assert result.reason == Reason.ICMP_SUPPRESSED and result.writes == ()


def test_bad_ipv4_dropped():
    raw = bytearray(bytes(offending()))
    raw[10] ^= 0xFF  # header checksum
    assert handle_egress(bytes(raw), Reason.NO_ROUTE, TUN).reason == Reason.BAD_IP_HEADER
    assert handle_egress(bytes(offending())[:30], Reason.NO_ROUTE, TUN).reason == Reason.TRUNCATED
    assert handle_egress(bytes(offending())[:12], Reason.NO_ROUTE, TUN).reason == Reason.TRUNCATED
    raw = bytearray(bytes(offending()))
    raw[0] = 0x44  # IHL 4
    assert handle_egress(bytes(raw), Reason.NO_ROUTE, TUN).reason == Reason.BAD_IP_HEADER


def test_reason_without_an_answer_is_a_slow_path_drop():
    result = run("udp", offending(), Reason.LOCAL_DST)
    assert result.reason == Reason.SLOW_PATH_DROP and result.writes == ()


@pytest.mark.parametrize("frame, reason", [
    (bytes(Ether(src=KMAC, dst=PMAC, type=0x88CC) / (b"lldp" * 10)), Reason.UNKNOWN_ETHERTYPE),
    (bytes(Ether(src=KMAC, dst=PMAC) / Dot1Q(vlan=5) / offending()), Reason.UNKNOWN_ETHERTYPE),
    (bytes(Ether(src=KMAC, dst=PMAC))[:10], Reason.TRUNCATED),
    (b"", Reason.TRUNCATED),
])
def test_tap_drops(frame, reason):
    result = handle_egress(frame, Reason.UNKNOWN_ETHERTYPE, VX)
    assert result.reason == reason and result.writes == ()


@pytest.mark.parametrize("packet, reason", [
    (b"", Reason.TRUNCATED),
    (b"\x50" + bytes(30), Reason.NOT_IPV4),
    (bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP()), Reason.IPV6),
])
def test_tun_drops(packet, reason):
    result = handle_egress(packet, Reason.NO_ROUTE, TUN)
    assert result.reason == reason and result.writes == ()


# ---- IPv6 ----------------------------------------------------------------------------------

SNM = "33:33:ff:00:00:00"


def ns(target=str(PEER_V6), src="fe80::858:ff:fe00:1", hlim=255, sll=True):
    pkt = IPv6(src=src, dst="ff02::1:ff00:0", hlim=hlim) / ICMPv6ND_NS(tgt=target)
    if sll:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=KMAC)
    return Ether(src=KMAC, dst=SNM) / pkt


@pytest.mark.parametrize("sll", [True, False])
def test_ns_is_dropped_not_answered(sll):
    # weft carries IPv4 only: even a solicitation for a peer's address gets no answer.
    result = handle_egress(bytes(ns(sll=sll)), Reason.IPV6, VX)
    assert result.reason == Reason.IPV6 and result.writes == ()
    assert "neighbour solicitation" in result.summary


def test_pipeline_counts_an_ipv6_ns_as_dropped():
    """What the daemon does with an NS read from the TAP: fast path SLOW, slow path drops."""
    pl = Pipeline("vxlan", NETWORK, 24, mtu=MTU)
    pl.set_local(LOCAL, IPv4Address("192.0.2.11"), LOCAL_MAC)
    pl.table.set_peer(PEER, IPv4Address("192.0.2.12"), PEER_MAC)
    frame = bytes(ns())
    batch = Batch(1)
    batch.load(0, frame)
    pl.egress(batch, 1)
    assert batch.verdict[0] == Verdict.SLOW and batch.reason[0] == Reason.IPV6
    result = pl.slow(frame, int(batch.reason[0]))
    assert result.reason == Reason.IPV6 and result.writes == ()
    summary = pl.counter_summary()
    assert summary["drops"] == {"ipv6": 1} and summary["slow_path"] == {"ipv6": 1}


@pytest.mark.parametrize("frame", [
    ns(target="fd00:12:99::1"),  # unknown target
    ns(src="::", sll=False),  # duplicate address detection
    ns(hlim=64),  # not on-link: invalid
    Ether(src=KMAC, dst="33:33:00:00:00:02") / IPv6(src="fe80::1", dst="ff02::2", hlim=255)
    / ICMPv6ND_RS(),
    Ether(src=KMAC, dst="33:33:00:00:00:16") / IPv6(src="fe80::1", dst="ff02::16", hlim=1)
    / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLReport2(),
    Ether(src=KMAC, dst="33:33:00:00:00:16") / IPv6(src="fe80::1", dst="ff02::16", hlim=1)
    / ICMPv6MLReport2(),
    Ether(src=KMAC, dst=PMAC) / IPv6(src="fd00::1", dst="fd00::2") / TCP(),
])
def test_ipv6_dropped_under_ipv6(frame):
    result = handle_egress(bytes(frame), Reason.IPV6, VX)
    assert result.reason == Reason.IPV6 and result.writes == ()


def test_ns_bad_checksum_or_truncated_dropped():
    raw = bytearray(bytes(ns()))
    raw[14 + 40 + 2] ^= 0x55
    assert handle_egress(bytes(raw), Reason.IPV6, VX).reason == Reason.IPV6
    assert handle_egress(bytes(ns())[:60], Reason.IPV6, VX).reason == Reason.TRUNCATED
    assert handle_egress(bytes(ns())[:50], Reason.IPV6, VX).reason == Reason.TRUNCATED


# ---- context, describe, fuzz ---------------------------------------------------------------


def test_context_validation():
    with pytest.raises(ValueError):
        make_ctx("host-gw")
    with pytest.raises(ValueError):
        make_ctx(unreachable_mac=b"\x02")
    assert VX.tunnel_address == IPv4Address("10.1.15.0")


def test_describe():
    assert "ARP" in describe(arp_request("10.1.16.0"), "ether")
    assert "ICMP" in describe(bytes(offending(payload=ICMP())), "ip")
    assert "IPv6" in describe(bytes(IPv6() / UDP()), "raw")
    assert describe(b"", "ip") == "empty packet"
    assert "unsupported" in describe(b"abc", "ppp")
    assert "not IP" in describe(b"\x00" * 20, "tun")
    for junk in (b"\xff" * 3, b"\x45" + bytes(5), b"\x60\x00", bytes(range(256))):
        for linktype in ("ether", "ip"):
            text = describe(junk, linktype)
            assert isinstance(text, str) and "\n" not in text


def _seeds():
    frames = [arp_request("10.1.16.0"), arp_request("10.1.99.1"), bytes(ns()),
              wrap("vxlan", offending()), wrap("vxlan", offending(payload=ICMP(type=8) / b"p")),
              bytes(Ether(src=KMAC, dst=PMAC) / offending(options=[IPOption_RR()]))]
    packets = [bytes(offending()), bytes(offending(flags="DF", ttl=1)),
               bytes(offending(payload=TCP())), bytes(IPv6() / UDP())]
    return [("vxlan", f) for f in frames] + [("udp", p) for p in packets]


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.75:
            del data[rng.randrange(len(data) + 1):]
        else:
            data += rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def test_fuzz_never_raises():
    rng = random.Random(20240607)
    seeds = _seeds()
    reasons = [int(r) for r in Reason] + [99, -1]
    ctxs = {"vxlan": VX, "udp": TUN}
    start = time.monotonic()
    for i in range(20_000):
        if i % 4 == 0:
            backend, data = rng.choice(("vxlan", "udp")), rng.randbytes(rng.randint(0, 80))
        else:
            backend, seed = rng.choice(seeds)
            data = _mutate(rng, seed)
        reason = rng.choice(reasons) if i % 3 else int(Reason.NO_ROUTE)
        result = handle_egress(data, reason, ctxs[backend])
        assert isinstance(result, SlowResult) and isinstance(result.summary, str)
        assert "\n" not in result.summary
        Reason(result.reason)
        assert all(isinstance(w, bytes) for w in result.writes)
        if result.reason == Reason.ICMP_ERROR_SENT:
            macs = {} if backend == "udp" else {"dst": Ether(data).src, "src": Ether(data).dst}
            ip = error_ip(backend, result.writes[0], **macs)
            ip_ok(ip)
            icmp_ok(ip)
        if i % 20 == 0:
            assert "\n" not in describe(data, "ether" if backend == "vxlan" else "ip")
    assert time.monotonic() - start < 60
