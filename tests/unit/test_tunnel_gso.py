"""Tunnel-GSO kernels (weft.packet.offload.tunnel) against their twins and the split path.

The byte-exact check against what the kernel puts on the wire is in
tests/netns/test_tundev.py (a real TAP, forwarded out a wire-like veth).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from test_offload import ETH, MSS, super_frame

from weft.packet import offload
from weft.packet.batch import BUFSIZE, HEADROOM, Batch
from weft.packet.counters import (
    PATH_UDP_EGRESS,
    PATH_UDP_INGRESS,
    PATH_VXLAN_EGRESS,
    PATH_VXLAN_INGRESS,
    SLOT_IP_ID,
)
from weft.packet.offload import tunnel
from weft.packet.offload import tunnel_twin as twin
from weft.packet.offload.tunnel import RX_PAD, SUP_HEAD
from weft.packet.offload.udp_gro import GRO_BUF, GRO_PAD, split_tunnel_gso
from weft.packet.offload.vnet_hdr import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP_TUNNEL_IPV4,
    TNL_HDR_LEN,
    VNET_HDR_LEN,
    VnetHdr,
)
from weft.packet.pipeline import Pipeline

LOCAL, PEER = IPv4Network("10.1.15.0/24"), IPv4Network("10.1.16.0/24")
LOCAL_MAC, PEER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("0200000000aa")
TX_MAC = bytes.fromhex("0200000000fe")
BIG = 0xFFFF - 50 - 20 - 32  # the largest inner payload whose encapsulation fits 64 KiB


def pipeline(mtu: int = 1500) -> Pipeline:
    p = Pipeline("vxlan", IPv4Network("10.1.0.0/16"), 24, mtu=mtu)
    p.set_local(LOCAL, IPv4Address("192.0.2.1"), LOCAL_MAC)
    p.table.set_peer(PEER, IPv4Address("192.0.2.2"), PEER_MAC)
    return p


def kernel(p: Pipeline, data: bytes) -> tuple[bytes | None, np.ndarray, bytes]:
    """encap_super on data as a TAP read; (frame or None, info, sup bytes after)."""
    sup = tunnel.new_sup()
    sup[SUP_HEAD : SUP_HEAD + len(data)] = np.frombuffer(data, np.uint8)
    probe = np.zeros(BUFSIZE, np.uint8)
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    before = sup.copy()
    t = tunnel.encap_super(sup, len(data), probe, p.cfg, p.peers, p.counters,
                           int.from_bytes(TX_MAC, "big"), info)
    if t == 0:
        assert (sup == before).all()
        return None, info, sup.tobytes()
    return sup[:t].tobytes(), info, sup.tobytes()


def split_path(p: Pipeline, data: bytes) -> list[bytes]:
    """What the ordinary path sends for the same read: split_super + the egress kernel."""
    batch = Batch(128)
    src = np.frombuffer(data, np.uint8).copy()
    n = offload.split_super(src, len(data), 14, batch.bufs, batch.lens, 0)
    assert n > 0
    p.egress(batch, n)
    return [batch.bufs[i, batch.out_off[i] : batch.out_off[i] + batch.out_len[i]].tobytes()
            for i in range(n)]


def gso_model(frame: bytes) -> list[bytes]:
    """Cut a tunnel-GSO frame as Linux does (skb_udp_tunnel_segment + tcp_gso_segment), minus
    the outer Ethernet and the TTL the host's forwarding takes: the outer IPv4 datagrams."""
    hdr = frame[:TNL_HDR_LEN]
    _, gso_type, hdr_len, mss, csum_start, _ = struct.unpack_from("<BBHHHH", hdr)
    outer_th, inner_nh = struct.unpack_from("<HH", hdr, 20)
    f = frame[TNL_HDR_LEN:]
    outer = Ether(f)
    inner_ip = outer[VXLAN].payload[IP]
    payload = bytes(inner_ip[TCP].payload)
    out = []
    for i in range(-(-len(payload) // mss)):
        chunk = payload[i * mss : (i + 1) * mss]
        tcp = inner_ip[TCP].copy()
        tcp.remove_payload()
        tcp.seq = (tcp.seq + i * mss) & 0xFFFFFFFF
        if i != -(-len(payload) // mss) - 1:
            tcp.flags = int(tcp.flags) & ~0x09
        if i:
            tcp.flags = int(tcp.flags) & ~0x80
        tcp.chksum = None
        ip = inner_ip.copy()
        ip.remove_payload()
        ip.id = (ip.id + i) & 0xFFFF
        ip.len = ip.chksum = None
        seg = Ether(bytes(outer[VXLAN].payload)[:14]) / ip / tcp / chunk
        o = outer[IP].copy()
        o.remove_payload()
        o.id = (o.id + i) & 0xFFFF
        o.ttl -= 1
        o.len = o.chksum = None
        u = outer[UDP].copy()
        u.remove_payload()
        u.len = None
        out.append(bytes(o / u / VXLAN(bytes(outer[VXLAN])[:8]) / bytes(seg)))
    return out


def test_frame_matches_twin_and_cuts_into_what_the_split_path_sends() -> None:
    data = super_frame(14, payload=BIG)
    p = pipeline()
    frame, info, _ = kernel(p, data)
    assert frame is not None
    want = twin.encap_super(data, p.cfg, p.table, 0, TX_MAC)
    assert want is not None and frame == want.frame
    assert (info[0], info[1], info[2]) == (want.segments, want.rx_bytes, want.tx_bytes)
    hdr = frame[:TNL_HDR_LEN]
    assert hdr[1] == GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4
    assert struct.unpack_from("<HH", hdr, 20) == (34, 64)
    assert frame[TNL_HDR_LEN : TNL_HDR_LEN + 6] == TX_MAC
    # Cut as the kernel cuts it, the frame is byte for byte the datagrams we used to send.
    rows = split_path(pipeline(), data)
    assert gso_model(frame) == rows
    assert info[0] == len(rows)


def test_count_sent_adds_what_the_egress_kernel_would_have_counted() -> None:
    data = super_frame(14, payload=10 * MSS + 7)
    p, q = pipeline(), pipeline()
    frame, info, _ = kernel(p, data)
    assert frame is not None
    tunnel.count_sent(p.counters, PATH_VXLAN_EGRESS, info)
    split_path(q, data)
    assert (p.counters == q.counters).all()
    assert p.counters[PATH_VXLAN_EGRESS, SLOT_IP_ID] == 11


def test_restore_read_gives_split_super_its_header_back() -> None:
    data = super_frame(14, payload=5 * MSS)
    p = pipeline()
    frame, _, after = kernel(p, data)
    assert frame is not None
    sup = np.frombuffer(after, np.uint8).copy()
    tunnel.restore_read(sup)
    hdr = VnetHdr.unpack(sup[SUP_HEAD : SUP_HEAD + VNET_HDR_LEN].tobytes())
    assert (hdr.gso_type, hdr.gso_size, hdr.csum_start) == (GSO_TCPV4, MSS, 14 + 20)
    read = sup[SUP_HEAD : SUP_HEAD + len(data)].tobytes()
    assert split_path(pipeline(), read) == split_path(pipeline(), data)


def _not_ours() -> dict[str, bytes]:
    plain = VnetHdr(0, GSO_NONE).pack() + ETH + bytes(IP(src="10.1.15.2", dst="10.1.16.3")
                                                      / TCP() / (b"x" * 100))
    return {
        "plain read": plain,
        "one segment": super_frame(14, payload=MSS),
        "no route": super_frame(14, payload=BIG, dst="10.1.99.3"),
        "too big for the MTU": super_frame(14, payload=BIG),  # pipeline(mtu=1400) below
        "truncated": super_frame(14)[:500],
        "local destination": super_frame(14, payload=BIG, dst="10.1.15.9"),
        "outer IPv4 would pass 64 KiB": super_frame(14, payload=BIG + 1),
    }


@pytest.mark.parametrize("name", list(_not_ours()))
def test_reads_it_does_not_take_are_left_alone(name: str) -> None:
    data = _not_ours()[name]
    p = pipeline(mtu=1400 if name == "too big for the MTU" else 1500)
    frame, _, _ = kernel(p, data)
    assert frame is None
    assert twin.encap_super(data, p.cfg, p.table, 0, TX_MAC) is None
    assert not p.counters.any()


@pytest.mark.parametrize("payload", [2 * MSS, 2 * MSS + 1, 30000, BIG])
@pytest.mark.parametrize("mss", [536, 1398, MSS])
def test_sizes_agree_with_twin_and_split_path(payload: int, mss: int) -> None:
    data = super_frame(14, payload=payload, mss=mss, flags="PA")
    p = pipeline(mtu=1500)
    frame, _, _ = kernel(p, data)
    want = twin.encap_super(data, p.cfg, p.table, 0, TX_MAC)
    assert frame is not None and want is not None and frame == want.frame
    assert gso_model(frame) == split_path(pipeline(mtu=1500), data)
    assert len(frame) == TNL_HDR_LEN + 14 + 36 + len(data) - VNET_HDR_LEN


def test_probe_row_too_small_is_left_alone() -> None:
    data = super_frame(14, payload=BIG)
    p = pipeline()
    sup = tunnel.new_sup()
    sup[SUP_HEAD : SUP_HEAD + len(data)] = np.frombuffer(data, np.uint8)
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    t = tunnel.encap_super(sup, len(data), np.zeros(HEADROOM + 500, np.uint8), p.cfg,
                           p.peers, p.counters, 1, info)
    assert t == 0


# ---- ingress: a tunnel-GSO packet received whole -> one TSO write ------------------------------

PEER_IP = int(IPv4Address("192.0.2.2"))
VXLAN_1 = bytes([0x08, 0, 0, 0, 0, 0, 1, 0])


def received(payload: int = BIG, mss: int = 1398, flags: str = "A", src: str = "10.1.16.3",
             dst: str = "10.1.15.2") -> bytes:
    """A peer's tunnel-GSO packet as our socket gets it: VXLAN header + TCP super-frame (inner
    checksum partial, as the sender's stack left it) from the peer's pod to ours."""
    data = super_frame(14, payload=payload, mss=mss, flags=flags, src=src, dst=dst)
    frame = bytearray(data[VNET_HDR_LEN:])
    frame[0:6] = LOCAL_MAC
    return VXLAN_1 + bytes(frame)


def kernel_decap(p: Pipeline, datagram: bytes, sender: int = PEER_IP):
    msg = np.zeros(RX_PAD + GRO_BUF, np.uint8)
    msg[RX_PAD : RX_PAD + len(datagram)] = np.frombuffer(datagram, np.uint8)
    before = msg.copy()
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    t = tunnel.decap_super(msg, len(datagram), sender, np.zeros(BUFSIZE, np.uint8), p.cfg,
                           p.peers, info)
    if t == 0:
        assert (msg == before).all()
        return None, info
    return msg[:t].tobytes(), info


def old_path(p: Pipeline, datagram: bytes) -> list[bytes]:
    """What the loop wrote before: split_tunnel_gso into rows, the ingress kernel, coalesce."""
    msg = np.zeros(RX_PAD + GRO_BUF, np.uint8)
    msg[RX_PAD : RX_PAD + len(datagram)] = np.frombuffer(datagram, np.uint8)
    batch = Batch(128)
    n = split_tunnel_gso(msg, len(datagram), int(p.cfg[8]), batch.bufs, batch.lens, 0)
    assert n > 0
    batch.src_ip[:n] = PEER_IP
    p.ingress(batch, n)
    out, out_lens = offload.new_units(128)
    units = offload.coalesce(batch.bufs, batch.out_off, batch.out_len, batch.verdict, n, 14, out,
                             out_lens)
    return [out[m, : out_lens[m]].tobytes() for m in range(units)]


@pytest.mark.parametrize("payload", [2 * 1398, 30000, BIG])
@pytest.mark.parametrize("flags", ["A", "PA"])
def test_whole_write_is_what_split_and_coalesce_wrote(payload: int, flags: str) -> None:
    p, q = pipeline(mtu=1450), pipeline(mtu=1450)
    datagram = received(payload, flags=flags)
    got, info = kernel_decap(p, datagram)
    want = twin.decap_super(datagram, PEER_IP, p.cfg, p.table)
    assert got is not None and want is not None and got == want.frame
    assert (info[0], info[1], info[2]) == (want.segments, want.rx_bytes, want.tx_bytes)
    assert [got] == old_path(q, datagram)
    tunnel.count_received(p.counters, PATH_VXLAN_INGRESS, info)
    assert (p.counters == q.counters).all()


def _not_taken() -> dict[str, tuple[bytes, int]]:
    return {
        "unknown sender": (received(), PEER_IP + 1),
        "wrong VNI": (bytes([0x08, 0, 0, 0, 0, 0, 2, 0]) + received()[8:], PEER_IP),
        "not for us": (received(dst="10.1.17.2"), PEER_IP),
        "spoofed inner source": (received(src="10.1.20.3"), PEER_IP),
        "one segment": (received(payload=1000), PEER_IP),
        "truncated": (received()[:3000], PEER_IP),
        "not TCP": (VXLAN_1 + LOCAL_MAC + bytes(Ether(src="02:00:00:00:00:aa")
                    / IP(src="10.1.16.3", dst="10.1.15.2") / UDP() / (b"u" * 5000))[6:],
                    PEER_IP),
    }


@pytest.mark.parametrize("name", list(_not_taken()))
def test_whole_write_declines_what_the_ingress_kernel_would_not_pass(name: str) -> None:
    datagram, sender = _not_taken()[name]
    p = pipeline(mtu=1450)
    got, _ = kernel_decap(p, datagram, sender)
    assert got is None
    assert twin.decap_super(datagram, sender, p.cfg, p.table) is None
    assert not p.counters.any()


# ---- the udp backend: bare IPv4 in UDP ----------------------------------------------------------


def udp_pipeline(mtu: int = 1472) -> Pipeline:
    p = Pipeline("udp", IPv4Network("10.1.0.0/16"), 24, mtu=mtu, port=8285)
    p.set_local(LOCAL, IPv4Address("192.0.2.1"))
    p.table.set_peer(PEER, IPv4Address("192.0.2.2"), None)
    return p


def kernel_udp(p: Pipeline, data: bytes) -> tuple[bytes | None, np.ndarray]:
    sup = tunnel.new_sup()
    at = tunnel.SUP_HEAD_UDP
    sup[at : at + len(data)] = np.frombuffer(data, np.uint8)
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    before = sup.copy()
    t = tunnel.encap_super_udp(sup, len(data), np.zeros(BUFSIZE, np.uint8), p.cfg, p.peers,
                               p.counters, int.from_bytes(TX_MAC, "big"), info)
    if t == 0:
        assert (sup == before).all()
        return None, info
    restored = sup.copy()
    tunnel.restore_read_udp(restored)
    hdr = VnetHdr.unpack(restored[at : at + VNET_HDR_LEN].tobytes())
    assert (hdr.gso_type, hdr.csum_start) == (GSO_TCPV4, 20)
    return sup[:t].tobytes(), info


def udp_split_path(p: Pipeline, data: bytes) -> list[bytes]:
    """What the udp backend sends for the read: the UDP payloads (inner IPv4 packets)."""
    batch = Batch(128)
    n = offload.split_super(np.frombuffer(data, np.uint8).copy(), len(data), 0, batch.bufs,
                            batch.lens, 0)
    p.egress(batch, n)
    return [batch.bufs[i, batch.out_off[i] : batch.out_off[i] + batch.out_len[i]].tobytes()
            for i in range(n)]


def udp_gso_model(frame: bytes) -> list[bytes]:
    """Cut a udp-backend tunnel-GSO frame as Linux does: the UDP payloads of the datagrams."""
    f = frame[TNL_HDR_LEN:]
    inner = IP(f[42:])
    payload = bytes(inner[TCP].payload)
    mss = struct.unpack_from("<H", frame, 4)[0]
    nseg = -(-len(payload) // mss)
    out = []
    for i in range(nseg):
        tcp = inner[TCP].copy()
        tcp.remove_payload()
        tcp.seq = (tcp.seq + i * mss) & 0xFFFFFFFF
        if i != nseg - 1:
            tcp.flags = int(tcp.flags) & ~0x09
        if i:
            tcp.flags = int(tcp.flags) & ~0x80
        tcp.chksum = None
        ip = inner.copy()
        ip.remove_payload()
        ip.id = (ip.id + i) & 0xFFFF
        ip.len = ip.chksum = None
        out.append(bytes(ip / tcp / payload[i * mss : (i + 1) * mss]))
    return out


@pytest.mark.parametrize("payload", [2 * 1420, 30000, 0xFFFF - 28 - 52])
def test_udp_frame_matches_twin_and_cuts_into_the_split_path_payloads(payload: int) -> None:
    data = super_frame(0, payload=payload, mss=1420, flags="PA")
    p = udp_pipeline()
    frame, info = kernel_udp(p, data)
    want = twin.encap_super_udp(data, p.cfg, p.table, 0, TX_MAC)
    assert frame is not None and want is not None and frame == want.frame
    assert (info[0], info[1], info[2]) == (want.segments, want.rx_bytes, want.tx_bytes)
    outer = IP(frame[TNL_HDR_LEN + 14 :])
    assert (outer.src, outer.dst, outer.ttl, outer[UDP].sport, outer[UDP].dport) == (
        "192.0.2.1", "192.0.2.2", 65, 8285, 8285)
    assert struct.unpack_from("<HH", frame, 20) == (34, 42)
    q = udp_pipeline()
    assert udp_gso_model(frame) == udp_split_path(q, data)
    tunnel.count_sent(p.counters, PATH_UDP_EGRESS, info)
    p.counters[PATH_UDP_EGRESS, SLOT_IP_ID] = 0  # the outer ids: ours alone
    assert (p.counters == q.counters).all()


@pytest.mark.parametrize("dst", ["10.1.99.2", "10.1.15.9"])
def test_udp_reads_it_does_not_take_are_left_alone(dst: str) -> None:
    data = super_frame(0, payload=20000, mss=1420, dst=dst)
    p = udp_pipeline()
    assert kernel_udp(p, data)[0] is None
    assert twin.encap_super_udp(data, p.cfg, p.table, 0, TX_MAC) is None
    assert not p.counters.any()


def udp_received(payload: int = 30000, mss: int = 1420, **kw) -> bytes:
    return super_frame(0, payload=payload, mss=mss, src="10.1.16.3", dst="10.1.15.2",
                       **kw)[VNET_HDR_LEN:]


def kernel_decap_udp(p: Pipeline, datagram: bytes, sender: int = PEER_IP):
    msg = np.zeros(GRO_PAD + GRO_BUF, np.uint8)
    msg[GRO_PAD : GRO_PAD + len(datagram)] = np.frombuffer(datagram, np.uint8)
    before = msg.copy()
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    t = tunnel.decap_super_udp(msg, len(datagram), sender, np.zeros(BUFSIZE, np.uint8),
                               p.cfg, p.peers, info)
    if t == 0:
        assert (msg == before).all()
        return None, info
    return msg[:t].tobytes(), info


@pytest.mark.parametrize("payload", [2 * 1420, 30000, 0xFFFF - 52])
def test_udp_whole_write_is_what_split_and_coalesce_would_write(payload: int) -> None:
    p, q = udp_pipeline(), udp_pipeline()
    datagram = udp_received(payload, flags="PA")
    got, info = kernel_decap_udp(p, datagram)
    want = twin.decap_super_udp(datagram, PEER_IP, p.cfg, p.table)
    assert got is not None and want is not None and got == want.frame
    # the same packet cut into MTU-sized datagrams, through the udp ingress kernel and coalesce
    mss = 1472 - 20 - 32
    cut = VnetHdr(0, GSO_TCPV4, 0, mss).pack() + datagram
    batch = Batch(128)
    n = offload.split_super(np.frombuffer(cut, np.uint8).copy(), len(cut), 0, batch.bufs,
                            batch.lens, 0)
    batch.src_ip[:n] = PEER_IP
    q.ingress(batch, n)
    out, out_lens = offload.new_units(128)
    units = offload.coalesce(batch.bufs, batch.out_off, batch.out_len, batch.verdict, n, 0, out,
                             out_lens)
    assert [got] == [out[m, : out_lens[m]].tobytes() for m in range(units)]
    tunnel.count_received(p.counters, PATH_UDP_INGRESS, info)
    assert (p.counters == q.counters).all()


@pytest.mark.parametrize(("name", "sender"), [("unknown sender", PEER_IP + 1),
                                              ("not for us", PEER_IP), ("ttl 1", PEER_IP)])
def test_udp_whole_write_declines_what_the_ingress_kernel_would_not_pass(name, sender) -> None:
    kw = {"not for us": {"dst": "10.1.17.2"}, "ttl 1": {"ttl": 1}}.get(name, {})
    datagram = (super_frame(0, payload=30000, mss=1420, src="10.1.16.3", **kw)[VNET_HDR_LEN:]
                if name == "not for us" else udp_received(**kw))
    p = udp_pipeline()
    assert kernel_decap_udp(p, datagram, sender)[0] is None
    assert twin.decap_super_udp(datagram, sender, p.cfg, p.table) is None
    assert not p.counters.any()
