"""The IPv6 half's kernels (fastpath6) against their twins: same verdicts, reasons and bytes,
and the checks each one stands for."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

import numpy as np
import pytest
from scapy.layers.inet6 import TCP, ICMPv6EchoRequest, ICMPv6MLReport2, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN as ScapyVXLAN

from weft.packet import fastpath6_twin as twin
from weft.packet.batch import Batch
from weft.packet.checksum import fold16, sum16
from weft.packet.counters import PATH_VXLAN6_EGRESS, PATH_VXLAN6_INGRESS, SLOT_CSUM_COMPLETED
from weft.packet.pipeline6 import Pipeline6
from weft.packet.reasons import Reason, Verdict
from weft.packet.slowpath6 import SlowPath6Context, handle_egress6

pytestmark = pytest.mark.unit

NET = IPv6Network("fd10::/48")
LOCAL = IPv6Network("fd10:0:0:3f::/64")
PEER = IPv6Network("fd10:0:0:5e::/64")
PEER_IP = IPv6Address("fd00::2")
OUR_MAC = bytes.fromhex("5e8f36c5db7a")
PEER_MAC = bytes.fromhex("62f737000e69")
TAP_MAC = bytes.fromhex("aabbccddeeff")


def _pipeline() -> Pipeline6:
    pipeline = Pipeline6(NET, 64, vni=1, port=8472, mtu=1430)
    pipeline.set_local(LOCAL, OUR_MAC)
    pipeline.table.set_peer(PEER, PEER_IP, PEER_MAC)
    return pipeline


def _frame(src: str, dst: str, payload=None, dst_mac: bytes = OUR_MAC) -> bytes:
    inner = IPv6(src=src, dst=dst, hlim=63) / (payload if payload is not None
                                               else ICMPv6EchoRequest(data=b"x" * 20))
    return bytes(Ether(src=TAP_MAC, dst=dst_mac) / inner)


EGRESS = {
    "to a peer": (_frame("fd10:0:0:3f::2", "fd10:0:0:5e::2"), Verdict.FORWARD, Reason.OK),
    "unleased": (_frame("fd10:0:0:3f::2", "fd10:0:0:77::2"), Verdict.SLOW, Reason.NO_ROUTE),
    "outside": (_frame("fd10:0:0:3f::2", "fd99::2"), Verdict.SLOW, Reason.OUTSIDE_NETWORK),
    "local": (_frame("fd10:0:0:3f::2", "fd10:0:0:3f::9"), Verdict.DROP, Reason.LOCAL_DST),
    "too big": (_frame("fd10:0:0:3f::2", "fd10:0:0:5e::2", ICMPv6EchoRequest(data=b"x" * 1400)),
                Verdict.SLOW, Reason.FRAG_NEEDED),
    "neighbour solicitation": (_frame("fe80::1", "ff02::1:ff00:2",
                                      ICMPv6ND_NS(tgt="fd10:0:0:5e::"), b"\x33\x33\xff\0\0\2"),
                               Verdict.DROP, Reason.NDP),
    "unicast NS": (_frame("fd10:0:0:3f::", "fd10:0:0:5e::", ICMPv6ND_NS(tgt="fd10:0:0:5e::")),
                   Verdict.DROP, Reason.NDP),
    "mld report": (_frame("fe80::1", "ff02::16", ICMPv6MLReport2(), b"\x33\x33\0\0\0\x16"),
                   Verdict.DROP, Reason.MLD),
    "link-local": (_frame("fe80::1", "fd10:0:0:5e::2"), Verdict.DROP, Reason.LINK_LOCAL),
    "ipv4": (bytes(Ether(dst=OUR_MAC, type=0x0800)) + bytes(20), Verdict.DROP,
             Reason.NOT_IPV6),
    "truncated": (_frame("fd10:0:0:3f::2", "fd10:0:0:5e::2")[:50], Verdict.DROP,
                  Reason.TRUNCATED),
    "short payload": (_frame("fd10:0:0:3f::2", "fd10:0:0:5e::2")[:70], Verdict.DROP,
                      Reason.TRUNCATED),
}


def _run_egress(frames: list[bytes]) -> tuple[Pipeline6, Batch]:
    pipeline = _pipeline()
    batch = Batch(len(frames))
    for i, frame in enumerate(frames):
        batch.load(i, frame)
    pipeline.egress(batch, len(frames))
    return pipeline, batch


def test_egress_kernel_agrees_with_twin_and_the_expected_reasons() -> None:
    names = list(EGRESS)
    pipeline, batch = _run_egress([EGRESS[name][0] for name in names])
    for i, name in enumerate(names):
        frame, verdict, reason = EGRESS[name]
        want = twin.vxlan6_egress(frame, pipeline.cfg, pipeline.table)
        assert (Verdict(batch.verdict[i]), Reason(batch.reason[i])) == (verdict, reason), name
        assert (want.verdict, want.reason) == (verdict, reason), name
        if verdict == Verdict.FORWARD:
            assert batch.output(i) == want.out, name
            assert IPv6Address(bytes(batch.dst_ip6[i])) == PEER_IP == IPv6Address(want.dst_ip)
    assert int(pipeline.counters[PATH_VXLAN6_EGRESS, Reason.NDP]) == 2


def test_egress_output_is_the_vxlan_payload_the_kernel_device_expects() -> None:
    _, batch = _run_egress([EGRESS["to a peer"][0]])
    packet = ScapyVXLAN(batch.output(0))
    assert packet.vni == 1 and packet.flags == 0x08
    inner = packet[Ether]
    assert (inner.dst, inner.src) == (PEER_MAC.hex(":"), OUR_MAC.hex(":"))
    assert inner[IPv6].hlim == 63  # as the kernel's VXLAN, the tunnel leaves it


def _payload(src: str, dst: str, payload=None, dst_mac: bytes = OUR_MAC, vni: int = 1) -> bytes:
    return bytes(ScapyVXLAN(vni=vni, flags=0x08)) + _frame(src, dst, payload, dst_mac)


def test_ingress_kernel_agrees_with_twin_and_checks_the_sender() -> None:
    cases = [
        (_payload("fd10:0:0:5e::2", "fd10:0:0:3f::2"), PEER_IP, Verdict.FORWARD, Reason.OK),
        (_payload("fd10:0:0:5e::2", "fd10:0:0:3f::2"), IPv6Address("fd00::9"), Verdict.DROP,
         Reason.SPOOFED_INNER_SRC),
        (_payload("fd10:0:0:77::2", "fd10:0:0:3f::2"), PEER_IP, Verdict.DROP,
         Reason.SPOOFED_INNER_SRC),
        (_payload("fd10:0:0:5e::2", "fd10:0:0:77::2"), PEER_IP, Verdict.DROP, Reason.NOT_FOR_US),
        (_payload("fd10:0:0:5e::2", "fd10:0:0:3f::2", vni=2), PEER_IP, Verdict.DROP,
         Reason.WRONG_VNI),
        (_payload("fd10:0:0:5e::2", "fd10:0:0:3f::2", dst_mac=PEER_MAC), PEER_IP, Verdict.DROP,
         Reason.WRONG_INNER_MAC),
        (_payload("fd10:0:0:5e::2", "fd10:0:0:3f::2")[:60], PEER_IP, Verdict.DROP,
         Reason.TRUNCATED),
        (b"\0" + _payload("fd10:0:0:5e::2", "fd10:0:0:3f::2")[1:], PEER_IP, Verdict.DROP,
         Reason.BAD_VXLAN_FLAGS),
    ]
    pipeline = _pipeline()
    batch = Batch(len(cases))
    for i, (payload, sender, _, _) in enumerate(cases):
        batch.load(i, payload)
        batch.src_ip6[i] = np.frombuffer(sender.packed, dtype=np.uint8)
    pipeline.ingress(batch, len(cases))
    for i, (payload, sender, verdict, reason) in enumerate(cases):
        want = twin.vxlan6_ingress(payload, sender, pipeline.cfg, pipeline.table)
        assert (Verdict(batch.verdict[i]), Reason(batch.reason[i])) == (verdict, reason), i
        assert (want.verdict, want.reason) == (verdict, reason), i
        if verdict == Verdict.FORWARD:
            assert batch.output(i) == want.out == payload[8:]


def test_a_partial_tcp_checksum_from_the_kernel_is_completed_both_alike() -> None:
    src, dst = "fd10:0:0:5e::2", "fd10:0:0:3f::2"
    good = IPv6(bytes(IPv6(src=src, dst=dst) / TCP(sport=1, dport=2) / (b"d" * 33)))
    # What a sender's kernel leaves for the NIC: the folded pseudo-header sum, not complemented.
    partial = IPv6(bytes(good))
    partial[TCP].chksum = 0
    raw = bytearray(bytes(partial))
    pseudo = fold16(sum16(raw[8:40]) + 6 + len(bytes(good[TCP])))
    raw[40 + 16:40 + 18] = pseudo.to_bytes(2, "big")
    payload = (bytes(ScapyVXLAN(vni=1, flags=0x08))
               + bytes(Ether(src=TAP_MAC, dst=OUR_MAC, type=0x86DD)) + raw)
    pipeline = _pipeline()
    batch = Batch(1)
    batch.load(0, payload)
    batch.src_ip6[0] = np.frombuffer(PEER_IP.packed, dtype=np.uint8)
    assert pipeline.ingress(batch, 1) == 1
    want = twin.vxlan6_ingress(payload, PEER_IP, pipeline.cfg, pipeline.table)
    assert batch.output(0) == want.out
    assert Ether(batch.output(0))[TCP].chksum == good[TCP].chksum
    assert int(pipeline.counters[PATH_VXLAN6_INGRESS, SLOT_CSUM_COMPLETED]) == 1


def test_packet_too_big_and_no_route_are_answered_errors_never() -> None:
    ctx = SlowPath6Context(LOCAL, OUR_MAC, 1430)
    big = EGRESS["too big"][0]
    answer = handle_egress6(big, Reason.FRAG_NEEDED, ctx)
    assert answer.reason == Reason.ICMP_ERROR_SENT
    reply = Ether(answer.writes[0])
    assert reply[IPv6].src == "fd10:0:0:3f::" and reply[IPv6].dst == "fd10:0:0:3f::2"
    assert reply.dst == TAP_MAC.hex(":") and reply[IPv6].nh == 58
    assert bytes(reply[IPv6].payload)[0] == 2 and reply["ICMPv6 Packet Too Big"].mtu == 1430
    assert len(answer.writes[0]) <= 14 + 1280
    unreachable = handle_egress6(EGRESS["unleased"][0], Reason.NO_ROUTE, ctx)
    assert bytes(Ether(unreachable.writes[0])[IPv6].payload)[0] == 1
    error = bytes(answer.writes[0])  # an ICMPv6 error itself is never answered
    assert handle_egress6(error, Reason.NO_ROUTE, ctx).reason == Reason.ICMP_SUPPRESSED
    assert handle_egress6(b"\0" * 20, Reason.NO_ROUTE, ctx).writes == ()


@pytest.mark.parametrize("network, subnet_len", [("fd10::/48", 64), ("fd10:8000::/17", 30),
                                                 ("8000::/1", 20), ("2001:db8::/32", 40)])
def test_the_kernel_numbers_subnets_as_the_table(network: str, subnet_len: int) -> None:
    from weft.packet.fastpath6 import _subnet_index6
    from weft.packet.table6 import DatapathConfig6, PeerTable6

    net = IPv6Network(network)
    table = PeerTable6(net, subnet_len)
    cfg = DatapathConfig6(net, subnet_len, vni=1, port=8472, mtu=1430).cfg
    rng = np.random.default_rng(7)
    base = int(net.network_address)
    span = 1 << (128 - net.prefixlen)
    edges = [base, base + span - 1, base - 1, base + span, 0, (1 << 128) - 1]
    randoms = [base + int(rng.integers(0, 1 << 62)) * (span >> 62 or 1) % span
               for _ in range(200)]
    for address in edges + randoms:
        address %= 1 << 128
        row = np.frombuffer(address.to_bytes(16, "big"), dtype=np.uint8)
        assert _subnet_index6(row, 0, cfg, table.size) == table.index_of(address), hex(address)
