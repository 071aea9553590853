"""Offload kernels (TSO split, GRO coalesce) against scapy, their twins and a fuzzer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet

from weft.packet import offload
from weft.packet.batch import HEADROOM
from weft.packet.checksum import fold16, sum16
from weft.packet.offload import gro_coalesce_twin, tso_split_twin
from weft.packet.offload.gro_coalesce import MAX_SEGMENTS
from weft.packet.offload.tso import ERR_MALFORMED, ERR_NO_ROOM, ERR_UNSUPPORTED, UNIT_ROW
from weft.packet.offload.vnet_hdr import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_LEN,
    VnetHdr,
)

JIT = not numba.config.DISABLE_JIT
L3 = [14, 0]
TS = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]  # 12 bytes: doff 32
MSS = 1448
ETH = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x0800))[:14]
A_IP, B_IP = "10.1.15.2", "10.1.16.3"


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def l2(l3_off: int) -> bytes:
    return ETH if l3_off == 14 else b""


def tcp_packet(payload: bytes | int = MSS, flags: str = "A", seq: int = 1000, ip_id: int = 100,
               sport: int = 40000, dport: int = 5201, ack: int = 4242, window: int = 501,
               options: list | None = None, ip_options: bytes = b"", ttl: int = 64,
               src: str = A_IP, dst: str = B_IP) -> bytes:
    """A raw IPv4/TCP packet with correct checksums."""
    data = pattern(payload) if isinstance(payload, int) else payload
    pkt = (IP(src=src, dst=dst, id=ip_id, flags="DF", ttl=ttl, options=ip_options)
           / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                 options=TS if options is None else options)
           / data)
    return bytes(pkt)


def partial(raw: bytes) -> bytes:
    """The CHECKSUM_PARTIAL form the stack leaves for a NIC: TCP/UDP field = pseudo sum."""
    out = bytearray(raw)
    ihl = (out[0] & 0x0F) * 4
    proto = out[9]
    l4len = len(out) - ihl
    field = ihl + (16 if proto == 6 else 6)
    out[field : field + 2] = b"\0\0"
    pseudo = fold16(sum16(out[12:20]) + proto + l4len)
    out[field : field + 2] = pseudo.to_bytes(2, "big")
    return bytes(out)


def super_frame(l3_off: int, payload: int | bytes | None = None, mss: int = MSS,
                hdr_len: int | None = None, **kw) -> bytes:
    """virtio_net_hdr + TSO super-frame as a TAP/TUN with TSO4 hands it over (64 KiB default)."""
    opt_len = 12 if kw.get("options") is None else len(bytes(TCP(options=kw["options"]))) - 20
    if payload is None:
        payload = 0xFFFF - 20 - len(kw.get("ip_options", b"")) - 20 - opt_len
    raw = partial(tcp_packet(payload, **kw))
    ihl = (raw[0] & 0x0F) * 4
    doff = (raw[ihl + 12] >> 4) * 4
    hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4,
                  l3_off + ihl + doff if hdr_len is None else hdr_len, mss, l3_off + ihl, 16)
    return hdr.pack() + l2(l3_off) + raw


def plain(pkt: bytes, flags: int = 0, csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return VnetHdr(flags, GSO_NONE, 0, 0, csum_start, csum_offset).pack() + pkt


# ---- runners: kernel and twin on the same input, asserted equal -----------------------------


def kernel_split(data: bytes, l3_off: int, rows: int = 256, width: int = 2048,
                 first_row: int = 0) -> list[bytes] | int:
    src = np.frombuffer(data + b"\xee" * 16, dtype=np.uint8).copy()  # junk past src_len
    bufs = np.full((rows, width), 0xA5, dtype=np.uint8)
    lens = np.full(rows, -7, dtype=np.int32)
    before = bufs.copy()
    n = offload.split_super(src, len(data), l3_off, bufs, lens, first_row)
    if n < 0:
        assert (bufs == before).all() and (lens == -7).all()
        return n
    return [bufs[first_row + i, HEADROOM : HEADROOM + lens[first_row + i]].tobytes()
            for i in range(n)]


def rows_left(rows: int, first_row: int) -> int:
    """The twin's view of the kernel's `first_row` and row count."""
    return rows - first_row if first_row >= 0 else 0


def split(data: bytes, l3_off: int, rows: int = 256, width: int = 2048,
          first_row: int = 0) -> list[bytes] | int:
    got = kernel_split(data, l3_off, rows, width, first_row)
    want = tso_split_twin.split_super(data, l3_off, max_rows=rows_left(rows, first_row),
                                      row_cap=width - HEADROOM)
    assert got == want
    return got


def kernel_coalesce(packets: list[bytes], l3_off: int, verdicts: list[int] | None = None,
                    m: int | None = None, width: int = UNIT_ROW) -> list[bytes] | int:
    rows = max(1, len(packets))
    bufs = np.zeros((rows, max(2048, HEADROOM + max(map(len, packets), default=0))), np.uint8)
    out_off = np.full(rows, HEADROOM, dtype=np.int32)
    out_len = np.zeros(rows, dtype=np.int32)
    verdict = np.zeros(rows, dtype=np.uint8)
    for i, pkt in enumerate(packets):
        bufs[i, HEADROOM : HEADROOM + len(pkt)] = np.frombuffer(pkt, dtype=np.uint8)
        out_len[i] = len(pkt)
        verdict[i] = verdicts[i] if verdicts else 0
    out = np.zeros((rows if m is None else m, width), dtype=np.uint8)
    out_lens = np.zeros(out.shape[0], dtype=np.int32)
    before = bufs.copy()
    k = offload.coalesce(bufs, out_off, out_len, verdict, len(packets), l3_off, out, out_lens)
    assert (bufs == before).all()
    if k < 0:
        assert not out.any() and not out_lens.any()
        return k
    return [out[i, : out_lens[i]].tobytes() for i in range(k)]


def coalesce(packets: list[bytes], l3_off: int, verdicts: list[int] | None = None,
             m: int | None = None, width: int = UNIT_ROW) -> list[bytes] | int:
    got = kernel_coalesce(packets, l3_off, verdicts, m, width)
    rows = [p if not verdicts or verdicts[i] == 0 else None for i, p in enumerate(packets)]
    want = gro_coalesce_twin.coalesce(rows, l3_off,
                                      max_units=max(1, len(packets)) if m is None else m,
                                      unit_cap=width)
    assert got == want
    return got


def dissect(pkt: bytes, l3_off: int) -> Packet:
    """scapy's view of a packet, asserting its IP and L4 checksums are right."""
    p = Ether(pkt) if l3_off == 14 else IP(pkt)
    ip = p[IP]
    fresh = ip.copy()
    del fresh.chksum
    l4 = TCP if TCP in ip else UDP if UDP in ip else None
    if l4 is not None:
        del fresh[l4].chksum
    fresh = IP(bytes(fresh))
    assert fresh.chksum == ip.chksum, "IP header checksum"
    if l4 is not None:
        assert fresh[l4].chksum == ip[l4].chksum or (l4 is TCP and {fresh[l4].chksum,
                                                                      ip[l4].chksum} == {0, 0xFFFF})
    assert ip.len == len(bytes(ip))
    return p


def tcp_payload(p: Packet) -> bytes:
    return bytes(p[TCP].payload)


def flags_of(seg: bytes, l3_off: int) -> int:
    ihl = (seg[l3_off] & 0x0F) * 4
    return seg[l3_off + ihl + 13]


# ---- split -----------------------------------------------------------------------------------


@pytest.mark.parametrize("l3_off", L3)
def test_split_64k_super_frame_scapy_verifies(l3_off: int) -> None:
    frame = super_frame(l3_off, flags="PA", seq=0xFFFFF000, ip_id=0xFFF0)
    segs = split(frame, l3_off)
    assert isinstance(segs, list) and len(segs) == 46  # ceil(65483 / 1448)
    body = pattern(65483)
    assert b"".join(tcp_payload(dissect(s, l3_off)) for s in segs) == body
    for i, seg in enumerate(segs):
        p = dissect(seg, l3_off)
        assert seg[:l3_off] == frame[VNET_HDR_LEN : VNET_HDR_LEN + l3_off]
        assert len(tcp_payload(p)) == (MSS if i < 45 else 65483 - 45 * MSS)
        assert p[IP].id == (0xFFF0 + i) & 0xFFFF
        assert p[TCP].seq == (0xFFFFF000 + i * MSS) & 0xFFFFFFFF
        assert p[TCP].ack == 4242 and p[TCP].window == 501
        assert p[TCP].options == [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
        assert str(p[TCP].flags) == ("PA" if i == 45 else "A")
        assert p[IP].flags == "DF" and p[IP].ttl == 64


@pytest.mark.parametrize("l3_off", L3)
def test_split_flags_fin_psh_last_cwr_first(l3_off: int) -> None:
    segs = split(super_frame(l3_off, payload=5000, flags="FPAEC"), l3_off)
    assert [flags_of(s, l3_off) for s in segs] == [0xD0, 0x50, 0x50, 0x59]  # ECE|ACK(+CWR/FIN|PSH)
    for s in segs:
        dissect(s, l3_off)


@pytest.mark.parametrize("l3_off", L3)
def test_split_small_super_frame_is_one_full_segment(l3_off: int) -> None:
    frame = super_frame(l3_off, payload=1000, flags="FPA")
    [seg] = split(frame, l3_off)
    p = dissect(seg, l3_off)
    assert str(p[TCP].flags) == "FPA" and tcp_payload(p) == pattern(1000)
    assert seg[l3_off:] == tcp_packet(1000, flags="FPA")  # the checksum completed, nothing else


def test_split_odd_mss_and_ip_options() -> None:
    frame = super_frame(0, payload=10_001, mss=999, ip_options=b"\x94\x04\x00\x00")
    segs = split(frame, 0)
    assert len(segs) == 11
    assert b"".join(tcp_payload(dissect(s, 0)) for s in segs) == pattern(10_001)
    assert all(s[0] == 0x46 and s[20:24] == b"\x94\x04\x00\x00" for s in segs)


@pytest.mark.parametrize("hdr_len", [0, 54, 200, 0xFFFF])
def test_split_hdr_len_is_only_a_hint(hdr_len: int) -> None:
    # tun reports skb_headlen() there, which may include payload: the headers decide.
    want = split(super_frame(14, payload=4000), 14)
    assert split(super_frame(14, payload=4000, hdr_len=hdr_len), 14) == want


@pytest.mark.parametrize("l3_off", L3)
def test_split_plain_packet_is_copied(l3_off: int) -> None:
    for pkt in (tcp_packet(100), bytes(IP(src=A_IP, dst=B_IP) / UDP() / b"hi"), b"\x45"):
        data = l2(l3_off) + pkt
        assert split(plain(data), l3_off) == [data]
        assert split(plain(data, VNET_F_DATA_VALID), l3_off) == [data]


@pytest.mark.parametrize("l3_off", L3)
def test_needs_csum_completion(l3_off: int) -> None:
    for raw in (tcp_packet(777, flags="PA"),
                bytes(IP(src=A_IP, dst=B_IP) / UDP(sport=5, dport=53) / pattern(333)),
                bytes(IP(src=A_IP, dst=B_IP, options=b"\x01" * 4) / TCP(flags="S"))):
        ihl = (raw[0] & 0x0F) * 4
        off = 16 if raw[9] == 6 else 6
        data = l2(l3_off) + partial(raw)
        [got] = split(plain(data, VNET_F_NEEDS_CSUM, l3_off + ihl, off), l3_off)
        assert got == l2(l3_off) + raw
        dissect(got, l3_off)


def test_needs_csum_zero_goes_out_as_ffff() -> None:
    # Choose the last payload word so that the UDP checksum comes out as 0: sent as 0xFFFF.
    body = bytearray(pattern(100))
    body[-2:] = b"\0\0"
    raw = bytearray(partial(bytes(IP(src=A_IP, dst=B_IP) / UDP(sport=5, dport=53) / bytes(body))))
    s = fold16(sum16(raw[20:]))
    raw[-2:] = ((0xFFFF - s) & 0xFFFF).to_bytes(2, "big")
    [got] = split(plain(bytes(raw), VNET_F_NEEDS_CSUM, 20, 6), 0)
    assert got[26:28] == b"\xff\xff"
    assert fold16(sum16(got[12:20]) + 17 + len(got) - 20 + sum16(got[20:])) == 0xFFFF


def _edit(frame: bytes, at: int, value: bytes) -> bytes:
    return frame[:at] + value + frame[at + len(value) :]


def _hdr(frame: bytes, **fields: int) -> bytes:
    old = VnetHdr.unpack(frame)
    new = VnetHdr(**{**old.__dict__, **fields})
    return new.pack() + frame[VNET_HDR_LEN:]


BAD_INPUTS: dict[str, tuple[bytes, int, int]] = {}  # name -> (data, l3_off, code)


def _bad_inputs() -> dict[str, tuple[bytes, int, int]]:
    sf = super_frame(14, payload=3000)
    ip = VNET_HDR_LEN + 14
    tcp = ip + 20
    v6 = bytes(Ether(type=0x86DD)) + bytes(40)
    return {
        "short": (sf[:9], 14, ERR_MALFORMED),
        "empty packet": (plain(b""), 14, ERR_MALFORMED),
        "negative l3_off": (sf, -1, ERR_MALFORMED),
        "gso udp": (_hdr(sf, gso_type=GSO_UDP), 14, ERR_UNSUPPORTED),
        "gso tcpv6": (_hdr(sf, gso_type=GSO_TCPV6), 14, ERR_UNSUPPORTED),
        "gso udp_l4": (_hdr(sf, gso_type=GSO_UDP_L4), 14, ERR_UNSUPPORTED),
        "gso tcpv4 ecn": (_hdr(sf, gso_type=GSO_TCPV4 | GSO_ECN), 14, ERR_UNSUPPORTED),
        "gso unknown": (_hdr(sf, gso_type=7), 14, ERR_UNSUPPORTED),
        "vlan tagged": (_edit(sf, VNET_HDR_LEN + 12, b"\x81\x00"), 14, ERR_UNSUPPORTED),
        "ipv6 frame": (VnetHdr(1, GSO_TCPV4, 0, 1000).pack() + v6 + bytes(20), 14,
                       ERR_UNSUPPORTED),
        "udp in tso": (_edit(sf, ip + 9, b"\x11"), 14, ERR_UNSUPPORTED),
        "ip version 6": (_edit(sf, ip, b"\x65"), 14, ERR_UNSUPPORTED),
        "ihl 4": (_edit(sf, ip, b"\x44"), 14, ERR_MALFORMED),
        "total beyond data": (_edit(sf, ip + 2, b"\xff\xff"), 14, ERR_MALFORMED),
        "total below headers": (_edit(sf, ip + 2, b"\x00\x27"), 14, ERR_MALFORMED),
        "fragment": (_edit(sf, ip + 6, b"\x20\x00"), 14, ERR_MALFORMED),
        "frag offset": (_edit(sf, ip + 6, b"\x00\x10"), 14, ERR_MALFORMED),
        "doff 4": (_edit(sf, tcp + 12, b"\x40"), 14, ERR_MALFORMED),
        "doff past total": (_edit(_edit(sf, ip + 2, b"\x00\x30"), tcp + 12, b"\xf0"), 14,
                            ERR_MALFORMED),
        "gso_size 0": (_hdr(sf, gso_size=0), 14, ERR_MALFORMED),
        "truncated headers": (sf[: ip + 19], 14, ERR_MALFORMED),
        "csum field past end": (plain(tcp_packet(10), 1, 40, 16 + 15), 0, ERR_MALFORMED),
        "csum start past end": (plain(tcp_packet(10), 1, 0xFFFF, 0), 0, ERR_MALFORMED),
        "l3_off past data": (sf, 5000, ERR_MALFORMED),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_split_rejects(name: str) -> None:
    data, l3_off, code = _bad_inputs()[name]
    assert split(data, l3_off) == code


def test_split_no_room() -> None:
    sf = super_frame(14, payload=14_480)  # 10 segments
    assert len(split(sf, 14, rows=10)) == 10
    assert len(split(sf, 14, rows=20, first_row=10)) == 10
    assert split(sf, 14, rows=20, first_row=11) == ERR_NO_ROOM
    assert split(sf, 14, rows=9) == ERR_NO_ROOM
    assert split(sf, 14, first_row=-1) == ERR_NO_ROOM
    assert split(sf, 14, width=HEADROOM + 14 + 52 + MSS - 1) == ERR_NO_ROOM
    assert len(split(sf, 14, width=HEADROOM + 14 + 52 + MSS)) == 10
    assert split(plain(bytes(100)), 14, width=HEADROOM + 99) == ERR_NO_ROOM
    assert split(plain(bytes(100)), 14, rows=4, first_row=4) == ERR_NO_ROOM


def test_split_ignores_bytes_past_src_len_and_ip_total() -> None:
    sf = super_frame(0, payload=3000)
    assert split(sf + b"junk", 0) == split(sf, 0)


# ---- coalesce --------------------------------------------------------------------------------


def segments(l3_off: int, **kw) -> list[bytes]:
    segs = split(super_frame(l3_off, **kw), l3_off)
    assert isinstance(segs, list)
    return segs


@pytest.mark.parametrize("l3_off", L3)
@pytest.mark.parametrize("flags", ["A", "PA"])
def test_round_trip(l3_off: int, flags: str) -> None:
    frame = super_frame(l3_off, flags=flags)
    segs = segments(l3_off, flags=flags)
    [unit] = coalesce(segs, l3_off)
    assert unit == frame  # headers, partial checksum and virtio_net_hdr as the kernel makes them
    assert split(unit, l3_off) == segs


@pytest.mark.parametrize("l3_off", L3)
def test_round_trip_more_than_64_segments(l3_off: int) -> None:
    segs = segments(l3_off, mss=500)  # 131 segments
    units = coalesce(segs, l3_off)
    assert [VnetHdr.unpack(u).gso_size for u in units] == [500, 500, 500]
    again = [s for u in units for s in split(u, l3_off)]
    assert again == segs
    assert [len(split(u, l3_off)) for u in units] == [MAX_SEGMENTS, MAX_SEGMENTS, 3]


@pytest.mark.parametrize("l3_off", L3)
def test_merged_unit_header_and_partial_checksum(l3_off: int) -> None:
    segs = [l2(l3_off) + tcp_packet(1000, seq=1000 + 1000 * i, ip_id=7 + i) for i in range(3)]
    [unit] = coalesce(segs, l3_off)
    hdr = VnetHdr.unpack(unit)
    assert hdr == VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, l3_off + 52, 1000, l3_off + 20, 16)
    p = Ether(unit[VNET_HDR_LEN:]) if l3_off else IP(unit[VNET_HDR_LEN:])
    assert p[IP].len == 52 + 3000 and p[IP].id == 7 and tcp_payload(p) == pattern(1000) * 3
    # The partial checksum is the one the kernel expects: completing it verifies.
    [done] = split(_hdr(unit, gso_type=GSO_NONE), l3_off, width=4096)
    dissect(done, l3_off)


@pytest.mark.parametrize("l3_off", L3)
def test_interleaved_flows_keep_per_flow_order(l3_off: int) -> None:
    a = [l2(l3_off) + tcp_packet(500, seq=10 + 500 * i, ip_id=i) for i in range(3)]
    b = [l2(l3_off) + tcp_packet(500, seq=99 + 500 * i, ip_id=9 + i, sport=1) for i in range(3)]
    udp = l2(l3_off) + bytes(IP(src=A_IP, dst=B_IP) / UDP(sport=1, dport=2) / b"x")
    units = coalesce([a[0], b[0], udp, a[1], b[1], a[2], b[2]], l3_off)
    assert len(units) == 3  # in the order of each unit's first packet
    assert units[2] == bytes(VNET_HDR_LEN) + udp
    for unit, flow in ((units[0], a), (units[1], b)):
        assert split(unit, l3_off) == flow


def _single(units: list[bytes]) -> list[bytes]:
    assert all(u[:VNET_HDR_LEN] == bytes(VNET_HDR_LEN) for u in units)
    return [u[VNET_HDR_LEN:] for u in units]


def _flow(n: int = 3, size: int = 1000, **kw) -> list[bytes]:
    seq = kw.pop("seq", 1000)
    return [tcp_packet(size, seq=seq + size * i, ip_id=100 + i, **kw) for i in range(n)]


def _corrupt(pkt: bytes) -> bytes:
    return pkt[:-1] + bytes([pkt[-1] ^ 0x01])


NOT_MERGED: dict[str, list[bytes]] = {
    "gap in seq": [tcp_packet(1000, seq=1000), tcp_packet(1000, seq=2001)],
    "seq overlap": [tcp_packet(1000, seq=1000), tcp_packet(1000, seq=1999)],
    "different port": [tcp_packet(1000), tcp_packet(1000, seq=2000, sport=1)],
    "different dst": [tcp_packet(1000), tcp_packet(1000, seq=2000, dst="10.1.16.4")],
    "psh first": [tcp_packet(1000, flags="PA"), tcp_packet(1000, seq=2000)],
    "bad tcp checksum": [tcp_packet(1000), _corrupt(tcp_packet(1000, seq=2000))],
    "bad first checksum": [_corrupt(tcp_packet(1000)), tcp_packet(1000, seq=2000)],
    "partial checksum": [tcp_packet(1000), partial(tcp_packet(1000, seq=2000))],
    "larger second": [tcp_packet(1000), tcp_packet(1001, seq=2000)],
    "different ack": [tcp_packet(1000), tcp_packet(1000, seq=2000, ack=1)],
    "different window": [tcp_packet(1000), tcp_packet(1000, seq=2000, window=1)],
    "different ttl": [tcp_packet(1000), tcp_packet(1000, seq=2000, ttl=63)],
    "different tcp options": [tcp_packet(1000),
                              tcp_packet(1000, seq=2000, options=[("Timestamp", (1, 2))])],
    "different ip options": [tcp_packet(1000, ip_options=b"\x94\x04\x00\x00"),
                             tcp_packet(1000, seq=2000, ip_options=b"\x94\x04\x00\x01")],
    "syn": [tcp_packet(1000, flags="SA"), tcp_packet(1000, seq=2000)],
    "fin": [tcp_packet(1000), tcp_packet(1000, seq=2000, flags="FA")],
    "rst": [tcp_packet(1000), tcp_packet(1000, seq=2000, flags="RA")],
    "urg": [tcp_packet(1000), tcp_packet(1000, seq=2000, flags="UA")],
    "ece": [tcp_packet(1000), tcp_packet(1000, seq=2000, flags="EA")],
    "cwr": [tcp_packet(1000, flags="CA"), tcp_packet(1000, seq=2000)],
    "no ack": [tcp_packet(1000, flags=""), tcp_packet(1000, seq=2000, flags="")],
    "pure ack": [tcp_packet(0), tcp_packet(0)],
    "fragment": [bytes(IP(src=A_IP, dst=B_IP, flags="MF") / TCP(flags="A") / pattern(1000)),
                 bytes(IP(src=A_IP, dst=B_IP, flags="MF") / TCP(flags="A", seq=1000)
                       / pattern(1000))],
}


@pytest.mark.parametrize("l3_off", L3)
@pytest.mark.parametrize("name", list(NOT_MERGED))
def test_not_merged(l3_off: int, name: str) -> None:
    pkts = [l2(l3_off) + p for p in NOT_MERGED[name]]
    assert _single(coalesce(pkts, l3_off)) == pkts


@pytest.mark.parametrize("l3_off", L3)
def test_psh_in_the_middle_closes_the_unit(l3_off: int) -> None:
    pkts = [l2(l3_off) + p for p in _flow(4)]
    pkts[1] = l2(l3_off) + tcp_packet(1000, seq=2000, ip_id=101, flags="PA")
    first, rest = coalesce(pkts, l3_off), None
    assert len(first) == 2
    assert [flags_of(s, l3_off) for s in split(first[0], l3_off)] == [0x10, 0x18]
    rest = first[1]
    assert split(rest, l3_off) == pkts[2:]


@pytest.mark.parametrize("l3_off", L3)
def test_smaller_segment_closes_the_unit(l3_off: int) -> None:
    pkts = [l2(l3_off) + p for p in (tcp_packet(1000), tcp_packet(400, seq=2000, ip_id=101),
                                     tcp_packet(1000, seq=2400, ip_id=102))]
    units = coalesce(pkts, l3_off)
    assert len(units) == 2 and VnetHdr.unpack(units[0]).gso_size == 1000
    assert split(units[0], l3_off) == pkts[:2] and _single(units[1:]) == pkts[2:]


def test_a_packet_of_the_flow_in_between_keeps_its_place() -> None:
    # A pure ACK (not mergeable) of the same flow sits between data: nothing may pass it.
    pkts = [tcp_packet(1000), tcp_packet(1000, seq=2000), tcp_packet(0, seq=3000),
            tcp_packet(1000, seq=3000), tcp_packet(1000, seq=4000)]
    units = coalesce(pkts, 0)
    assert len(units) == 3
    assert units[1] == bytes(VNET_HDR_LEN) + pkts[2]
    assert [len(split(u, 0)) for u in units] == [2, 1, 2]


def test_fragment_closes_every_flow_of_the_address_pair() -> None:
    frag = bytes(IP(src=A_IP, dst=B_IP, flags="MF", proto=6) / pattern(100))
    pkts = [tcp_packet(1000), frag, tcp_packet(1000, seq=2000)]
    assert _single(coalesce(pkts, 0)) == pkts


def test_identical_ip_options_merge() -> None:
    pkts = _flow(3, ip_options=b"\x94\x04\x00\x00")
    [unit] = coalesce(pkts, 0)
    assert split(unit, 0) == pkts


def test_limits_65535_bytes_and_64_segments() -> None:
    big = _flow(50, size=1448)  # 45 fit in 65535 bytes of IP
    units = coalesce(big, 0)
    assert [len(split(u, 0)) for u in units] == [45, 5]
    small = _flow(70, size=100)
    units = coalesce(small, 0)
    assert [len(split(u, 0)) for u in units] == [MAX_SEGMENTS, 6]
    narrow = coalesce(_flow(10, size=1000), 0, width=VNET_HDR_LEN + 52 + 4000)
    assert [len(split(u, 0)) for u in narrow] == [4, 4, 2]


@pytest.mark.parametrize("l3_off", L3)
def test_non_tcp_and_padding_go_out_as_they_are(l3_off: int) -> None:
    pkts = [bytes(IP(src=A_IP, dst=B_IP) / ICMP()), bytes(IP(src=A_IP, dst=B_IP) / UDP()),
            tcp_packet(3) + bytes(3), b"\x45\x00", tcp_packet(1000)]
    frames = [l2(l3_off) + p for p in pkts]
    if l3_off == 14:
        frames.append(bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP()))
    assert _single(coalesce(frames, l3_off)) == frames


def test_padded_segments_merge_without_their_padding() -> None:
    pkts = [ETH + tcp_packet(4, seq=1000, ip_id=1) + bytes(2),
            ETH + tcp_packet(4, seq=1004, ip_id=2) + bytes(2),
            ETH + tcp_packet(3, seq=1008, ip_id=3) + bytes(3)]
    [unit] = coalesce(pkts, 14)
    assert split(unit, 14) == [p[: 14 + 52 + n] for p, n in zip(pkts, (4, 4, 3), strict=True)]


def test_rows_not_forward_are_skipped() -> None:
    pkts = _flow(4)
    units = coalesce(pkts, 0, verdicts=[0, 1, 0, 2])
    assert _single(units) == [pkts[0], pkts[2]]  # the gap in seq keeps them apart
    units = coalesce(_flow(3) + [tcp_packet(7)], 0, verdicts=[0, 0, 0, 1])
    assert len(units) == 1 and len(split(units[0], 0)) == 3


def test_rows_with_a_span_outside_the_row_are_skipped() -> None:
    pkts = _flow(3)
    bufs = np.zeros((3, 2048), np.uint8)
    for i, p in enumerate(pkts):
        bufs[i, HEADROOM : HEADROOM + len(p)] = np.frombuffer(p, np.uint8)
    out_off = np.array([HEADROOM, -1, HEADROOM], np.int32)
    out_len = np.array([len(pkts[0]), len(pkts[1]), 2048], np.int32)
    out, out_lens = offload.new_units(3)
    n = offload.coalesce(bufs, out_off, out_len, np.zeros(3, np.uint8), 3, 0, out, out_lens)
    assert n == 1 and out[0, : out_lens[0]].tobytes() == bytes(VNET_HDR_LEN) + pkts[0]
    assert gro_coalesce_twin.coalesce([pkts[0], None, None], 0) == [bytes(VNET_HDR_LEN) + pkts[0]]


def test_coalesce_no_room_and_bad_l3_off() -> None:
    pkts = _flow(3)
    assert coalesce(pkts, 0, m=2) == ERR_NO_ROOM  # one row per FORWARD packet is required
    assert len(coalesce(pkts, 0, verdicts=[1, 0, 0], m=2)) == 1
    assert coalesce(pkts, 0, width=VNET_HDR_LEN + len(pkts[0]) - 1) == ERR_NO_ROOM
    assert coalesce(pkts, -1) == ERR_MALFORMED
    assert coalesce([], 0) == []


# ---- fuzz ------------------------------------------------------------------------------------

FUZZ_SPLIT = 20_000 if JIT else int(os.environ.get("WEFT_OFFLOAD_FUZZ", "1000"))
FUZZ_ROWS = 20_000 if JIT else FUZZ_SPLIT


def _split_seeds() -> list[tuple[bytes, int]]:
    seeds = []
    for l3 in L3:
        for payload, mss, flags in ((9000, MSS, "PA"), (3000, 999, "FPAEC"), (100, 1448, "A"),
                                    (0, 500, "A"), (2000, 1, "A")):
            seeds.append((super_frame(l3, payload=payload, mss=mss, flags=flags), l3))
        raw = tcp_packet(300, flags="PA")
        seeds.append((plain(l2(l3) + partial(raw), 1, l3 + 20, 16), l3))
        udp = bytes(IP(src=A_IP, dst=B_IP) / UDP() / pattern(50))
        seeds.append((plain(l2(l3) + partial(udp), 1, l3 + 20, 6), l3))
        seeds.append((plain(l2(l3) + udp), l3))
    if JIT:
        seeds.append((super_frame(14), 14))
    return seeds


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(0, 5))):
        kind = rng.integers(0, 10)
        if kind < 5 and b:  # flip bits, mostly in the headers
            at = int(rng.integers(0, min(len(b), 90) if rng.random() < 0.8 else len(b)))
            b[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 5 and len(b) >= VNET_HDR_LEN:  # a new virtio_net_hdr field
            at = int(rng.integers(0, VNET_HDR_LEN))
            b[at] = int(rng.choice([0, 1, 3, 4, 5, 0x81, int(rng.integers(0, 256))]))
        elif kind == 6:
            del b[int(rng.integers(0, len(b) + 1)) :]
        elif kind == 7:
            b += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 8 and len(b) >= 6:  # small gso_size: many segments
            b[4:6] = int(rng.integers(0, 64)).to_bytes(2, "little")
        elif kind == 9 and len(b) > VNET_HDR_LEN + 46:  # IP total length, TCP data offset
            at = int(rng.choice([VNET_HDR_LEN + 2, VNET_HDR_LEN + 16, VNET_HDR_LEN + 46]))
            b[at] = int(rng.integers(0, 256))
    return bytes(b)


def test_fuzz_split() -> None:
    rng = np.random.default_rng(0x0FF10AD)
    seeds = _split_seeds()
    outcomes = set()
    for _ in range(FUZZ_SPLIT):
        data, l3 = seeds[int(rng.integers(len(seeds)))]
        data = _mutate(rng, data)
        if rng.random() < 0.05:
            l3 = int(rng.integers(-3, 80))
        rows = int(rng.integers(1, 80))
        width = int(rng.choice([2048, 2048, 1600, HEADROOM + 60, 80]))
        first = int(rng.integers(-2, rows + 2)) if rng.random() < 0.2 else 0
        src = np.frombuffer(data + rng.bytes(int(rng.integers(0, 32))), np.uint8).copy()
        src_len = len(data) if rng.random() < 0.98 else src.shape[0] + 1
        src_before = src.copy()
        bufs = rng.integers(0, 256, (rows, width), dtype=np.uint8)
        lens = rng.integers(-5, 5000, rows).astype(np.int32)
        bufs_before, lens_before = bufs.copy(), lens.copy()
        n = offload.split_super(src, src_len, l3, bufs, lens, first)
        assert (src == src_before).all()
        if n < 0:
            assert n in (ERR_MALFORMED, ERR_NO_ROOM, ERR_UNSUPPORTED)
            assert (bufs == bufs_before).all() and (lens == lens_before).all()
        else:
            written = np.zeros(rows, bool)
            written[first : first + n] = True
            assert (bufs[~written] == bufs_before[~written]).all()
            assert (lens[~written] == lens_before[~written]).all()
            cols = np.arange(width)
            for r in range(first, first + n):
                assert 0 <= lens[r] <= width - HEADROOM
                inside = (cols >= HEADROOM) & (cols < HEADROOM + lens[r])
                assert (bufs[r][~inside] == bufs_before[r][~inside]).all()
        if src_len <= len(data):
            want = tso_split_twin.split_super(data, l3, max_rows=rows_left(rows, first),
                                              row_cap=width - HEADROOM)
            got = n if n < 0 else [bufs[first + i, HEADROOM : HEADROOM + lens[first + i]]
                                   .tobytes() for i in range(n)]
            assert got == want, (data.hex(), l3, rows, width, first)
        outcomes.add(min(n, 2))
    assert outcomes == {ERR_UNSUPPORTED, ERR_NO_ROOM, ERR_MALFORMED, 1, 2}


def _row_pool() -> list[list[bytes]]:
    """Per l3_off: segments of two flows, their partial-checksum twins and other packets."""
    pools = []
    for l3 in L3:
        pool = []
        for sport, mss in ((40000, 1000), (40001, 200)):
            pool += segments(l3, payload=12 * mss - 7, mss=mss, sport=sport, flags="PA")
        pool += [l2(l3) + partial(tcp_packet(500)), l2(l3) + tcp_packet(0),
                 l2(l3) + bytes(IP(src=A_IP, dst=B_IP) / UDP() / b"u"), l2(l3) + b"\x45"]
        pools.append(pool)
    return pools


def _flows(packets: list[bytes], l3_off: int) -> dict[bytes | None, list[bytes]]:
    """TCP payloads per (addresses, ports), in order; other packets whole under None."""
    flows: dict[bytes | None, list[bytes]] = {}
    for pkt in packets:
        key, data = None, pkt
        ip = pkt[l3_off:]
        if len(ip) >= 40 and ip[0] >> 4 == 4 and ip[9] == 6:
            ihl, tot = (ip[0] & 0x0F) * 4, int.from_bytes(ip[2:4], "big")
            if ihl >= 20 and ihl + 20 <= tot <= len(ip):
                doff = (ip[ihl + 12] >> 4) * 4
                if doff >= 20 and ihl + doff <= tot:
                    key, data = ip[12:20] + ip[ihl : ihl + 4], ip[ihl + doff : tot]
        flows.setdefault(key, []).append(data)
    return flows


def test_fuzz_coalesce() -> None:
    rng = np.random.default_rng(0xC0A1E5CE)
    pools = _row_pool()
    done, merged = 0, 0
    while done < FUZZ_ROWS:
        which = int(rng.integers(2))
        l3, pool = L3[which], pools[which]
        count = int(rng.integers(1, 48))
        start = int(rng.integers(len(pool)))
        pkts = []
        for i in range(count):  # runs of consecutive segments, sometimes shuffled in
            p = pool[(start + i) % len(pool)] if rng.random() < 0.8 else \
                pool[int(rng.integers(len(pool)))]
            pkts.append(_mutate(rng, bytes(VNET_HDR_LEN) + p)[VNET_HDR_LEN:]
                        if rng.random() < 0.3 else p)
        width_b = 2048
        bufs = rng.integers(0, 256, (count, width_b), dtype=np.uint8)
        out_off = np.full(count, HEADROOM, np.int32)
        out_len = np.zeros(count, np.int32)
        for i, p in enumerate(pkts):
            p = p[: width_b - HEADROOM]
            pkts[i] = p
            bufs[i, HEADROOM : HEADROOM + len(p)] = np.frombuffer(p, np.uint8)
            out_len[i] = len(p)
            if rng.random() < 0.03:
                out_off[i] = int(rng.integers(-100, width_b + 100))
        verdict = rng.choice(np.array([0, 0, 0, 0, 0, 0, 1, 2], np.uint8), count)
        m = int(rng.integers(1, count + 3))
        width = int(rng.choice([UNIT_ROW, 16384, 4096, 1600]))
        out = rng.integers(0, 256, (m, width), dtype=np.uint8)
        out_lens = rng.integers(-5, 5, m).astype(np.int32)
        before = [a.copy() for a in (bufs, out_off, out_len, verdict, out, out_lens)]
        k = offload.coalesce(bufs, out_off, out_len, verdict, count, l3, out, out_lens)
        for a, b in zip((bufs, out_off, out_len, verdict), before[:4], strict=True):
            assert (a == b).all()
        if k < 0:
            assert k == ERR_NO_ROOM
            assert (out == before[4]).all() and (out_lens == before[5]).all()
        else:
            assert (out[k:] == before[4][k:]).all() and (out_lens[k:] == before[5][k:]).all()
            assert ((out_lens[:k] >= VNET_HDR_LEN) & (out_lens[:k] <= width)).all()
        rows = [pkts[i] if verdict[i] == 0 and 0 <= out_off[i] and
                out_off[i] + out_len[i] <= width_b else None for i in range(count)]
        rows = [r if r is None or out_off[i] == HEADROOM else
                bufs[i, out_off[i] : out_off[i] + out_len[i]].tobytes()
                for i, r in enumerate(rows)]
        want = gro_coalesce_twin.coalesce(rows, l3, max_units=m, unit_cap=width)
        got = k if k < 0 else [out[i, : out_lens[i]].tobytes() for i in range(k)]
        assert got == want
        if k > 0:
            merged += sum(out[i, 1] == GSO_TCPV4 for i in range(k))
            # Nothing lost, nothing reordered within a flow: the units, split again, carry
            # each flow's payloads in their input order.
            sent = []
            for unit in got:
                again = (tso_split_twin.split_super(unit, l3) if unit[1] == GSO_TCPV4
                         else [unit[VNET_HDR_LEN:]])
                assert isinstance(again, list)
                sent += again
            assert _flows(sent, l3) == _flows([r for r in rows if r is not None], l3)
        done += count
    assert merged > 0


def test_fuzz_without_jit() -> None:
    """The whole file again in pure Python (NUMBA_DISABLE_JIT=1), with 1000 fuzz inputs."""
    if not JIT:
        pytest.skip("already running without the JIT")
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "WEFT_OFFLOAD_FUZZ": "1000"}
    root = Path(__file__).resolve().parents[2]
    # The test that skips itself without the JIT is deselected, not skipped: under CI
    # (inherited, so the inner run still fails on any other skip) a skip fails the run.
    without = "not test_fuzz_without_jit"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", without,
         __file__],
        capture_output=True, text=True, env=env, cwd=root, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
