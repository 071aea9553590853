"""numba kernels vs their pure-Python twins: same verdicts, reasons, bytes and counters."""

import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import numpy as np
import pytest
from datapath_world import LOCAL_MAC, PEER_MAC, A, B, C, ip, make_world
from kernel_runs import run_udp_egress, run_udp_ingress, run_vxlan_egress, run_vxlan_ingress
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import RawPcapReader

from weft.packet import fastpath
from weft.packet import fastpath_twin as packet
from weft.packet.batch import BUFSIZE, HEADROOM, Batch
from weft.packet.checksum import fold16, sum16
from weft.packet.counters import (
    PATH_UDP_EGRESS,
    PATH_UDP_INGRESS,
    PATH_VXLAN_EGRESS,
    PATH_VXLAN_INGRESS,
    REASON_SLOTS,
    SLOT_CSUM_COMPLETED,
    SLOT_IP_ID,
    SLOT_RX_BYTES,
    SLOT_RX_PACKETS,
    SLOT_TX_BYTES,
    SLOT_TX_PACKETS,
    SLOT_VERDICT,
    new_counters,
)
from weft.packet.reasons import Reason, Verdict
from weft.packet.table import DatapathConfig, PeerTable

CAPTURES = Path(__file__).resolve().parents[3] / "shared" / "captures"


# name -> (runner, twin(data, src, cfg, table, ip_id), counters row)
PATHS: dict[str, tuple[Callable, Callable, int]] = {
    "vxlan_egress": (run_vxlan_egress,
                     lambda d, s, c, t, i: packet.vxlan_egress(d, c, t, i), PATH_VXLAN_EGRESS),
    "vxlan_ingress": (run_vxlan_ingress,
                      lambda d, s, c, t, i: packet.vxlan_ingress(d, s, c, t), PATH_VXLAN_INGRESS),
    "udp_egress": (run_udp_egress,
                   lambda d, s, c, t, i: packet.udp_egress(d, c, t), PATH_UDP_EGRESS),
    "udp_ingress": (run_udp_ingress,
                    lambda d, s, c, t, i: packet.udp_ingress(d, s, c, t), PATH_UDP_INGRESS),
}


def agree(kind: str, items: list[tuple[bytes, int]], cfg: DatapathConfig,
          table: PeerTable) -> tuple[Batch, np.ndarray, list[packet.StepResult]]:
    """Run one batch through kernel and twin; assert they agree packet by packet."""
    run, twin, path = PATHS[kind]
    longest = max((len(d) for d, _ in items), default=0)
    batch = Batch(len(items), max(BUFSIZE, HEADROOM + longest))
    for i, (data, src) in enumerate(items):
        batch.load(i, data, src)
    counters = new_counters()
    forwarded = run(batch, len(items), cfg.cfg, table, counters)
    ip_id, results = 0, []
    for i, (data, src) in enumerate(items):
        want = twin(data, src, cfg.cfg, table, ip_id)
        got = (Verdict(batch.verdict[i]), Reason(batch.reason[i]), batch.output(i),
               int(batch.dst_ip[i]))
        assert got == (want.verdict, want.reason, want.out, want.dst_ip), (kind, i)
        ip_id += want.verdict == Verdict.FORWARD
        results.append(want)
    n_fwd = sum(r.verdict == Verdict.FORWARD for r in results)
    assert forwarded == n_fwd
    row = counters[path]
    assert row[:REASON_SLOTS].sum() == len(items) == row[SLOT_RX_PACKETS]
    assert row[SLOT_VERDICT:SLOT_VERDICT + 3].sum() == len(items)
    assert row[SLOT_TX_PACKETS] == n_fwd
    assert row[SLOT_TX_BYTES] == sum(len(r.out) for r in results if r.verdict == Verdict.FORWARD)
    assert row[SLOT_RX_BYTES] == sum(len(d) for d, _ in items)
    for reason in Reason:
        assert row[reason] == sum(r.reason == reason for r in results)
    return batch, counters, results


# ---- crafted packets ------------------------------------------------------------------------


def tap(dst: str = "10.1.16.3", eth: dict | None = None, **ip_kw: object) -> bytes:
    e = Ether(**(eth or {"src": LOCAL_MAC, "dst": PEER_MAC}))
    return bytes(e / IP(src="10.1.15.2", dst=dst, **ip_kw) / TCP(sport=40000, dport=80) / b"hi")


def vx(src: str = "10.1.16.3", dst: str = "10.1.15.2", flags: int = 8, vni: int = 1,
       mac: str = LOCAL_MAC, size: int = 0) -> bytes:
    inner = Ether(src=PEER_MAC, dst=mac) / IP(src=src, dst=dst) / ICMP() / bytes(size)
    return struct.pack("!B3xI", flags, vni << 8) + bytes(inner)


def egress_frames() -> list[bytes]:
    frames = [
        tap(), tap("10.1.17.200"), tap("10.1.18.1"), tap(options=b"\x01\x01\x01\x01"),
        tap(flags="MF", frag=10), tap(ttl=1),
        bytes(Ether(dst=PEER_MAC) / IP(src="10.1.15.2", dst="10.1.16.3") / UDP(sport=5, dport=6)),
        bytes(Ether(dst=PEER_MAC) / IP(src="10.1.15.2", dst="10.1.16.3") / ICMP()) + bytes(20),
        bytes(Ether(dst=PEER_MAC) / IP(dst="10.1.16.3", flags="DF") / UDP() / bytes(1500)),
        bytes(Ether(dst=PEER_MAC) / IP(dst="10.1.16.3") / UDP() / bytes(1500)),
        bytes(Ether(dst=PEER_MAC) / IP(dst="10.1.16.3", flags="DF") / UDP() / bytes(1422)),
        b"", b"\x00" * 13, bytes(Ether() / ARP()), bytes(Ether(type=0x86DD)) + bytes(40),
        bytes(Ether(type=0x8100)) + bytes(40),
        tap(eth={"dst": "ff:ff:ff:ff:ff:ff"}), tap(eth={"dst": "33:33:00:00:00:01"}),
        tap("10.1.20.1"), tap("8.8.8.8"), tap("10.1.15.9"), tap("10.1.19.1"), tap("10.1.0.0"),
        tap("10.1.255.255"), tap()[:30], tap()[:-1], tap(ihl=4), tap(version=5), tap(len=19),
        tap(ihl=15),
    ]
    return frames


def ingress_payloads() -> list[tuple[bytes, int]]:
    b = ip(B)
    return [
        (vx(), b), (vx(src="10.1.18.7"), b), (vx(src="10.1.17.3"), ip(C)), (vx(flags=0xFF), b),
        (vx(mac="ff:ff:ff:ff:ff:ff"), b), (vx(size=1400), b), (vx()[:41], b), (vx()[:-1], b),
        (b"", b), (vx(flags=0), b), (vx(flags=0xF7), b), (vx(vni=2), b), (vx(vni=0x10001), b),
        (vx(), ip("192.0.2.99")), (vx(), 0),
        (struct.pack("!B3xI", 8, 256) + bytes(Ether() / ARP()), b),
        (vx(src="10.1.17.3"), b), (vx(src="10.1.15.3"), b), (vx(src="8.8.8.8"), b),
        (vx(src="10.1.20.3"), b), (vx(dst="10.1.16.9"), b), (vx(dst="8.8.8.8"), b),
        (vx(mac="02:00:00:00:00:02"), b),
    ]


def tun_packets() -> list[bytes]:
    return [
        bytes(IP(src="10.1.15.2", dst="10.1.16.3", ttl=64) / UDP() / b"data"),
        bytes(IP(src="10.1.15.2", dst="10.1.17.3", ttl=2, options=b"\x01" * 8) / ICMP()),
        bytes(IP(src="10.1.15.2", dst="10.1.16.3") / UDP()) + b"trailing",
        b"", b"\x45", b"\x60" + bytes(39), b"\x75" + bytes(39),
        bytes(IP(dst="10.1.16.3", ttl=1)), bytes(IP(dst="10.1.16.3", ttl=0)),
        bytes(IP(dst="10.1.20.3")), bytes(IP(dst="8.8.8.8")), bytes(IP(dst="10.1.15.3")),
        bytes(IP(dst="10.1.16.3", flags="DF") / bytes(1500)),
        bytes(IP(dst="10.1.16.3") / bytes(1500)),
        bytes(IP(dst="10.1.16.3", ihl=3)), bytes(IP(dst="10.1.16.3"))[:19],
        bytes(IP(dst="10.1.16.3", len=200)), bytes(IP(dst="10.1.16.3", chksum=0xFFFF)),
    ]


def peer_packets() -> list[tuple[bytes, int]]:
    b = ip(B)
    return [
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=9) / ICMP()), b),
        (bytes(IP(src="10.1.18.3", dst="10.1.15.2", ttl=2) / UDP() / bytes(1400)), b),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=1)), b),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2", ttl=0)), b),
        (bytes(IP(src="10.1.16.3", dst="10.1.15.2")), ip("192.0.2.99")),
        (bytes(IP(src="10.1.17.3", dst="10.1.15.2")), b),
        (bytes(IP(src="10.1.16.3", dst="10.1.17.2")), b),
        (b"\x60" + bytes(39), b), (b"", b), (b"", 1), (b"\x45" + bytes(10), b),
    ]


# ---- agreement on crafted packets ------------------------------------------------------------


def test_vxlan_egress_agrees_with_twin() -> None:
    cfg, table = make_world()
    frames = egress_frames()
    _, counters, results = agree("vxlan_egress", [(f, 0) for f in frames], cfg, table)
    reasons = {r.reason for r in results}
    assert {Reason.OK, Reason.ARP, Reason.IPV6, Reason.BROADCAST, Reason.MULTICAST,
            Reason.NO_ROUTE, Reason.OUTSIDE_NETWORK, Reason.LOCAL_DST, Reason.TRUNCATED,
            Reason.BAD_IP_HEADER, Reason.FRAG_NEEDED, Reason.PEER_LOOKUP_MISS,
            Reason.UNKNOWN_ETHERTYPE} <= reasons
    n_fwd = sum(r.verdict == Verdict.FORWARD for r in results)
    assert counters[PATH_VXLAN_EGRESS, SLOT_IP_ID] == n_fwd


def test_vxlan_ingress_agrees_with_twin() -> None:
    cfg, table = make_world()
    _, _, results = agree("vxlan_ingress", ingress_payloads(), cfg, table)
    assert {r.reason for r in results} >= {
        Reason.OK, Reason.TRUNCATED, Reason.BAD_VXLAN_FLAGS, Reason.WRONG_VNI,
        Reason.UNKNOWN_SENDER, Reason.NOT_IPV4, Reason.SPOOFED_INNER_SRC, Reason.NOT_FOR_US,
        Reason.WRONG_INNER_MAC}


def test_udp_paths_agree_with_twin() -> None:
    cfg, table = make_world()
    cfg.set_backend(vni=1, port=8285, mtu=1472)
    _, _, out = agree("udp_egress", [(p, 0) for p in tun_packets()], cfg, table)
    assert {Reason.OK, Reason.TTL_EXCEEDED, Reason.NO_ROUTE, Reason.FRAG_NEEDED,
            Reason.IPV6, Reason.NOT_IPV4} <= {r.reason for r in out}
    _, _, back = agree("udp_ingress", peer_packets(), cfg, table)
    assert {Reason.OK, Reason.TTL_EXCEEDED, Reason.UNKNOWN_SENDER,
            Reason.SPOOFED_INNER_SRC} <= {r.reason for r in back}


def test_egress_output_is_a_valid_outer_packet() -> None:
    cfg, table = make_world()
    batch, _, _ = agree("vxlan_egress", [(tap(), 0), (tap("10.1.17.4"), 0)], cfg, table)
    for i, peer in enumerate((B, C)):
        out = batch.output(i)
        outer = IP(out)
        assert outer.dst == peer and outer.src == A and packet.ipv4_checksum(out[:20]) == 0
        assert outer[UDP].dport == 8472 and outer[UDP].chksum == 0 and outer.id == i
        assert out[28:36] == b"\x08\0\0\0\0\0\x01\0"
        assert batch.dst_ip[i] == ip(peer) and batch.out_off[i] == HEADROOM - 36


def test_udp_egress_rewrites_ttl_in_place() -> None:
    cfg, table = make_world()
    pkt = bytes(IP(src="10.1.15.2", dst="10.1.16.3", ttl=64) / UDP() / b"x")
    batch, _, _ = agree("udp_egress", [(pkt, 0)], cfg, table)
    out = batch.output(0)
    assert batch.out_off[0] == HEADROOM and IP(out).ttl == 63
    assert packet.ipv4_checksum(out[:20]) == 0


# ---- kernel-only properties ----------------------------------------------------------------


def test_kernel_helpers_match_python() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        src, dst = (int(x) for x in rng.integers(0, 2**32, size=2))
        proto, sp, dp = (int(x) for x in rng.integers(0, 65536, size=3))
        proto &= 0xFF
        assert fastpath._flow_hash(src, dst, proto, sp, dp) == packet.flow_hash(
            src, dst, proto, sp, dp)
        hc, ttl = int(rng.integers(0, 65536)), int(rng.integers(1, 256))
        assert fastpath._ttl_csum(hc, (ttl << 8) | proto, ((ttl - 1) << 8) | proto) == \
            packet.ttl_decrement_checksum(hc, ttl, proto)


def test_bad_lengths_and_batch_sizes() -> None:
    cfg, table = make_world()
    batch = Batch(4, 256)
    batch.load(0, tap())
    batch.lens[1] = -5
    batch.lens[2] = 256 - HEADROOM + 1
    batch.lens[3] = 2**31 - 1
    counters = new_counters()
    for run in (run_vxlan_egress, run_vxlan_ingress, run_udp_egress,
                run_udp_ingress):
        run(batch, 99, cfg.cfg, table, counters)  # n beyond the arrays is clamped
        assert list(batch.reason[1:]) == [Reason.TRUNCATED] * 3
        assert list(batch.out_len[1:]) == [0, 0, 0]
        run(batch, -1, cfg.cfg, table, counters)
    assert (counters[:, :REASON_SLOTS].sum(axis=1) == 4).all()
    small = Batch(1, HEADROOM + 1)  # rows too small for anything: all TRUNCATED
    small.load(0, b"\x45")
    run_vxlan_egress(small, 1, cfg.cfg, table, counters)
    assert small.reason[0] == Reason.TRUNCATED


def test_table_updates_seen_without_recompile() -> None:
    cfg, table = make_world()
    frame = tap("10.1.30.1")
    batch = Batch(1)
    counters = new_counters()
    batch.load(0, frame)
    run_vxlan_egress(batch, 1, cfg.cfg, table, counters)
    assert batch.reason[0] == Reason.NO_ROUTE
    compiled = len(getattr(fastpath.vxlan_egress, "signatures", ()))
    table.set_peer(IPv4Network("10.1.30.0/24"), IPv4Address("192.0.2.30"), b"\x02" * 6)
    batch.load(0, frame)
    run_vxlan_egress(batch, 1, cfg.cfg, table, counters)
    assert batch.verdict[0] == Verdict.FORWARD and batch.dst_ip[0] == ip("192.0.2.30")
    table.remove_peer(IPv4Network("10.1.30.0/24"))
    batch.load(0, frame)
    run_vxlan_egress(batch, 1, cfg.cfg, table, counters)
    assert batch.reason[0] == Reason.NO_ROUTE
    assert len(getattr(fastpath.vxlan_egress, "signatures", ())) == compiled


def test_ip_id_wraps() -> None:
    cfg, table = make_world()
    counters = new_counters()
    counters[PATH_VXLAN_EGRESS, SLOT_IP_ID] = 0xFFFF
    batch = Batch(2)
    batch.load(0, tap())
    batch.load(1, tap())
    run_vxlan_egress(batch, 2, cfg.cfg, table, counters)
    assert [IP(batch.output(i)).id for i in range(2)] == [0xFFFF, 0]


# ---- agreement on third-party captures --------------------------------------------------------


def capture_frames(name: str) -> list[bytes]:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"capture {name} not available")
    reader = RawPcapReader(str(path))
    frames = [bytes(data) for data, _ in reader] if reader.linktype == 1 else []
    reader.close()
    return frames


def udp_payload(frame: bytes) -> tuple[bytes, int] | None:
    """(UDP payload, outer source) of an Ethernet/IPv4/UDP frame, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    ihl = (frame[14] & 15) * 4
    return frame[14 + ihl + 8:], int.from_bytes(frame[26:30], "big")


def test_tcpdump_vxlan_capture_decapsulates() -> None:
    """We play 192.168.202.1 hosting 192.168.203.5; the peer 192.168.203.1 hosts .3."""
    net = IPv4Network("192.168.203.0/24")
    cfg = DatapathConfig(net, 32, vni=100)
    cfg.set_local(IPv4Network("192.168.203.5/32"), IPv4Address("192.168.202.1"),
                  bytes.fromhex("003088010002"))
    table = PeerTable(net, 32)
    table.set_peer(IPv4Network("192.168.203.3/32"), IPv4Address("192.168.203.1"), None)
    frames = capture_frames("the-tcpdump-group+tcpdump__vxlan_port_8472.pcap")
    items = [p for p in map(udp_payload, frames) if p]
    _, _, results = agree("vxlan_ingress", items, cfg, table)
    assert [r.reason for r in results] == [
        Reason.OK, Reason.UNKNOWN_SENDER, Reason.NOT_IPV4, Reason.UNKNOWN_SENDER] + [
        Reason.OK, Reason.UNKNOWN_SENDER] * 3


def ethernet_captures() -> list[str]:
    """The captures whose link type is Ethernet (1): the kernels take Ethernet frames only.
    (One third-party capture declares 0x30000001, a link type with extra flag bits.)"""
    names = []
    for path in sorted(CAPTURES.glob("*.pcap")):
        reader = RawPcapReader(str(path))
        if reader.linktype == 1:
            names.append(path.name)
        reader.close()
    return names


@pytest.mark.parametrize("name", ethernet_captures())
def test_all_captures_agree(name: str) -> None:
    """Every frame of every Ethernet capture through all four kernels: kernel == twin."""
    cfg, table = make_world()
    frames = capture_frames(name)
    assert frames, f"{name} holds no frames"
    payloads = [p for p in map(udp_payload, frames) if p]
    # Make each capture's senders known so the checks behind the sender check run too.
    for k, (_, src) in enumerate(payloads):
        if src and not table.has_sender(src):
            table.set_peer(table.subnet_at(100 + k % 100), IPv4Address(src), b"\x02" * 6)
    fits = [f for f in frames if len(f) <= 9200]
    agree("vxlan_egress", [(f, 0) for f in fits], cfg, table)
    agree("udp_egress", [(f[14:], 0) for f in fits], cfg, table)
    if payloads:
        agree("vxlan_ingress", payloads, cfg, table)
        agree("udp_ingress", payloads, cfg, table)


# ---- inner checksums left CHECKSUM_PARTIAL by a kernel VXLAN sender -------------------------


def _pseudo(inner: IP, l4len: int) -> int:
    """What Linux pre-fills for CHECKSUM_PARTIAL: ~csum_tcpudp_magic(..., 0), i.e. the folded,
    not complemented pseudo-header sum (independent of the code under test)."""
    words = struct.unpack("!4H", IPv4Address(inner.src).packed + IPv4Address(inner.dst).packed)
    return fold16(sum(words) + inner.proto + l4len)


def _csum_at(inner: bytes) -> tuple[int, int]:
    """(offset of the L4 checksum field in an IPv4 packet, its value)."""
    ihl = (inner[0] & 15) * 4
    off = ihl + (16 if inner[9] == 6 else 6)
    return off, int.from_bytes(inner[off:off + 2], "big")


def _with_csum(inner: bytes, value: int) -> bytes:
    off, _ = _csum_at(inner)
    return inner[:off] + value.to_bytes(2, "big") + inner[off + 2:]


def _partial(inner: bytes) -> bytes:
    """The same packet as flannel.1 would hand it over: checksum field = pseudo-header sum."""
    pkt = IP(inner)
    ihl = pkt.ihl * 4
    l4len = (int.from_bytes(inner[ihl + 4:ihl + 6], "big") if pkt.proto == 17
             else pkt.len - ihl)
    return _with_csum(inner, _pseudo(pkt, l4len))


def _l4_verifies(frame: bytes) -> bool:
    """scapy recomputes the L4 checksum from scratch and compares with what is on the wire."""
    raw = bytearray(frame[14:])
    if raw[9] == 17:
        # Linux trims to the UDP length before checking (pskb_trim_rcsum in __udp4_lib_rcv);
        # scapy would take the pseudo-header length from the IP header instead.
        keep = (raw[0] & 15) * 4 + int.from_bytes(raw[(raw[0] & 15) * 4 + 4:][:2], "big")
        raw = raw[:keep]
        raw[2:4] = keep.to_bytes(2, "big")
    pkt = IP(bytes(raw))
    layer = TCP if TCP in pkt else UDP
    sent = pkt[layer].chksum
    fresh = pkt.copy()
    del fresh[layer].chksum
    want = IP(bytes(fresh))[layer].chksum
    # 0x0000 and 0xFFFF are the same one's-complement number; UDP must never send 0 for it.
    return sent == want or (layer is TCP and {sent, want} == {0, 0xFFFF})


def _vx_inner(inner: bytes) -> bytes:
    eth = bytes(Ether(src=PEER_MAC, dst=LOCAL_MAC, type=0x0800))
    return struct.pack("!B3xI", 8, 1 << 8) + eth + inner


def _zero_sum_udp() -> bytes:
    """A UDP datagram whose correct checksum computes to 0 (so it must go out as 0xFFFF)."""
    base = IP(src="10.1.16.3", dst="10.1.15.2") / UDP(sport=7, dport=9) / b"\0\0abc"
    raw = bytearray(bytes(base))
    raw[26:28] = b"\0\0"
    seg = fold16(sum16(bytes(raw[20:])) + _pseudo(base, len(raw) - 20))  # 13 bytes, padded
    raw[28:30] = (0xFFFF - seg if seg != 0xFFFF else 0).to_bytes(2, "big")
    return bytes(raw)


def partial_cases() -> list[tuple[str, bytes, str]]:
    """(name, inner IPv4 packet as received, expectation: completed/same)."""
    src, dst = "10.1.16.3", "10.1.15.2"
    syn = bytes(IP(src=src, dst=dst) / TCP(sport=40000, dport=5201, flags="S",
                                           options=[("MSS", 1410), ("SAckOK", b"")]))
    data_odd = bytes(IP(src=src, dst=dst, flags="DF") / TCP(sport=40000, dport=5201, flags="PA")
                     / b"odd-length payload!")
    opts = bytes(IP(src=src, dst=dst, options=b"\x01\x01\x01\x01") / TCP(flags="A") / b"xy")
    udp = bytes(IP(src=src, dst=dst) / UDP(sport=33333, dport=9999) / b"hello-udp-payload")
    # UDP length 12 inside a 38-byte IP packet: the checksum covers UDP's 12 bytes only.
    trailing = bytes(IP(src=src, dst=dst) / UDP(sport=1, dport=2, len=12) / b"abcdjunk!!")
    frag = bytes(IP(src=src, dst=dst, flags="MF") / UDP(sport=1, dport=2) / b"first part")
    corrupt = _with_csum(syn, _csum_at(syn)[1] ^ 0x1234)
    return [
        ("tcp syn", _partial(syn), "completed"),
        ("tcp odd payload", _partial(data_odd), "completed"),
        ("tcp with ip options", _partial(opts), "completed"),
        ("udp", _partial(udp), "completed"),
        ("udp shorter than ip", _partial(trailing), "completed"),
        ("udp sum 0 sent as 0xffff", _partial(_zero_sum_udp()), "completed"),
        ("tcp valid", syn, "same"),
        ("udp valid", udp, "same"),
        ("tcp corrupt", corrupt, "same"),
        ("udp corrupt", _with_csum(udp, _csum_at(udp)[1] ^ 1), "same"),
        ("udp no checksum", _with_csum(udp, 0), "same"),
        ("fragment", _partial(frag), "same"),
        ("icmp", bytes(IP(src=src, dst=dst) / ICMP() / b"ping"), "same"),
    ]


def test_partial_inner_checksums_are_completed_and_nothing_else() -> None:
    cfg, table = make_world()
    cases = partial_cases()
    items = [(_vx_inner(inner), ip(B)) for _, inner, _ in cases]
    batch, counters, results = agree("vxlan_ingress", items, cfg, table)  # kernel == twin
    completed = 0
    for (name, inner, want), res in zip(cases, results, strict=True):
        assert res.verdict == Verdict.FORWARD, name
        frame = res.out
        if want == "same":
            assert frame[14:] == inner and res.fields == (), name
            continue
        completed += 1
        assert frame[14:] != inner and _l4_verifies(frame), name
        off, value = _csum_at(frame[14:])
        assert frame[14:14 + off] == inner[:off] and frame[16 + off:] == inner[off + 2:], name
        assert value != 0 and dict(res.fields) in ({"inner.tcp.csum": value},
                                                   {"inner.udp.csum": value}), name
    assert dict(results[5].fields) == {"inner.udp.csum": 0xFFFF}
    assert counters[PATH_VXLAN_INGRESS, SLOT_CSUM_COMPLETED] == completed == 6
    assert counters[:, SLOT_CSUM_COMPLETED].sum() == completed  # other rows untouched


def test_partial_checksum_left_for_udp_backend() -> None:
    """flannel's udp backend reads complete packets from a TUN: nothing is completed there."""
    cfg, table = make_world()
    inner = _partial(bytes(IP(src="10.1.16.3", dst="10.1.15.2") / UDP() / b"x"))
    batch, counters, results = agree("udp_ingress", [(inner, ip(B))], cfg, table)
    assert _csum_at(results[0].out)[1] == _csum_at(inner)[1]
    assert counters[:, SLOT_CSUM_COMPLETED].sum() == 0
