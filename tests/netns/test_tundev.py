"""weft.dev.tundev: TAP with virtio-net header + TSO in a fresh namespace, fallback, batched reads.

The TCP tests play the far end of a TAP in userspace: the kernel connects a socket to 10.99.0.2
(routed into the TAP), the test answers the SYN and ACKs every data frame, and records what the
reads looked like (vnet header, gso_type, frame sizes).
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import threading
import time
import uuid

import numpy as np
import pytest
from pyroute2 import IPRoute

from weft.dev import tundev
from weft.packet.offload import vnet_hdr
from weft.tools.lab import netns

TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001  # IFLA_TUN_TYPE of a TUN (a TAP is IFF_TAP, 2)
LOCAL_IP, PEER_IP, PEER_MAC = "10.99.0.1", "10.99.0.2", "02:00:00:00:99:02"
TOTAL = 64 * 1024
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


@pytest.fixture
def ns():
    name = f"wtd{uuid.uuid4().hex[:8]}"
    netns.create(name)
    yield name
    netns.remove(name)


def _lo_up() -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _link_info(name: str) -> tuple[str | None, dict]:
    """(IFLA_INFO_KIND, IFLA_INFO_DATA as a dict) of link `name` in the current namespace."""
    with IPRoute() as ipr:
        info = ipr.link("get", ifname=name)[0].get_attr("IFLA_LINKINFO")
    if info is None:
        return None, {}
    data = info.get_attr("IFLA_INFO_DATA")
    return info.get_attr("IFLA_INFO_KIND"), dict(data["attrs"]) if data is not None else {}


def _device_flags(fd: int) -> int:
    ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return struct.unpack_from("H", ifr, 16)[0]


def _drain(fd: int) -> list[bytes]:
    """Every packet waiting on a non-blocking TUN/TAP fd (64 KiB + header fits a TSO read)."""
    packets = []
    while True:
        try:
            packets.append(os.read(fd, 70000))
        except BlockingIOError:
            return packets


def _tcp_transfer(dev, hdr_len: int, name: str) -> dict:
    """Send TOTAL bytes over TCP into the TAP and play the receiver; returns what was read."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    fd = dev.fileno()
    os.set_blocking(fd, False)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.addr("add", index=idx, address=LOCAL_IP, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.neigh("replace", dst=PEER_IP, lladdr=PEER_MAC, ifindex=idx,
                  state=0x80)  # NUD_PERMANENT
    data = bytes(i & 0xFF for i in range(TOTAL))
    client = socket.create_connection  # connect happens in the thread; the SYN needs an answer
    result: dict = {"frames": [], "payload": b""}

    def send() -> None:
        with client((PEER_IP, 5001), timeout=10) as s:
            s.sendall(data)
            time.sleep(1)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    pad = bytes(hdr_len)  # our replies: gso_type NONE, full checksums computed by scapy
    deadline = time.monotonic() + 15
    while len(result["payload"]) < TOTAL and time.monotonic() < deadline:
        select.select([fd], [], [], 0.2)
        for raw in _drain(fd):
            vnet = vnet_hdr.VnetHdr.unpack(raw) if hdr_len else None
            frame = Ether(raw[hdr_len:])
            if TCP not in frame:
                continue
            ip, tcp = frame[IP], frame[TCP]
            if tcp.flags.S:
                reply = TCP(sport=5001, dport=tcp.sport, flags="SA", seq=1000, ack=tcp.seq + 1,
                            window=65535, options=[("MSS", 1460), ("WScale", 7)])
            else:
                size = ip.len - 4 * ip.ihl - 4 * tcp.dataofs
                if size <= 0:
                    continue
                result["payload"] += bytes(tcp.payload)[:size]
                result["frames"].append({
                    "read": len(raw), "frame": len(raw) - hdr_len, "payload": size,
                    "gso_type": vnet.gso_type if vnet is not None else None,
                    "gso_size": vnet.gso_size if vnet is not None else None,
                    "vnet_flags": vnet.flags if vnet is not None else None,
                })
                reply = TCP(sport=5001, dport=tcp.sport, flags="A", seq=1001,
                            ack=tcp.seq + size, window=65535)
            out = Ether(src=PEER_MAC, dst=frame.src) / IP(src=PEER_IP, dst=LOCAL_IP) / reply
            assert os.write(fd, pad + bytes(out)) == hdr_len + len(out)
    thread.join(timeout=5)
    result["intact"] = result["payload"] == data
    del result["payload"]
    return result


def _offload_session(name: str) -> dict:
    _lo_up()
    dev, mode = tundev.open_device(name, tap=True)
    try:
        flags = _device_flags(dev.fileno())
        got = _tcp_transfer(dev, vnet_hdr.VNET_HDR_LEN, name)
        return {"mode": str(mode), "vnet_flag": bool(flags & tundev.IFF_VNET_HDR), **got}
    finally:
        dev.persist(False)
        dev.close()


@root_only
@pytest.mark.netns
def test_tap_offload_tcp_reads_are_tso_superframes(ns):
    got = netns.call_in(ns, _offload_session, "wtap0")
    assert got["mode"] == "offload" and got["vnet_flag"]
    assert got["intact"]
    frames = got["frames"]
    tso = [f for f in frames if f["gso_type"] == vnet_hdr.GSO_TCPV4]
    print(f"\n{len(frames)} data reads for {TOTAL} B; {len(tso)} TSO, largest "
          f"{max(f['frame'] for f in frames)} B, gso_size {sorted({f['gso_size'] for f in tso})}")
    assert tso, frames
    for f in frames:
        assert f["read"] == f["frame"] + vnet_hdr.VNET_HDR_LEN  # the 10-byte virtio_net_hdr
    assert max(f["frame"] for f in tso) > 1514
    assert {f["gso_size"] for f in tso} == {1460}
    assert all(f["vnet_flags"] & vnet_hdr.VNET_F_NEEDS_CSUM for f in tso)  # checksum left to us


def _offload_then_plain(name: str) -> dict:
    _lo_up()
    first, mode1 = tundev.open_device(name, tap=True)
    first.close()  # persistent: it stays, with the offloads just set
    dev, mode2 = tundev.open_device(name, tap=True, offload=False)
    try:
        flags = _device_flags(dev.fileno())
        got = _tcp_transfer(dev, 0, name)
        return {"modes": (str(mode1), str(mode2)), "vnet_flag": bool(flags & tundev.IFF_VNET_HDR),
                **got}
    finally:
        dev.persist(False)
        dev.close()


@root_only
@pytest.mark.netns
def test_plain_reopen_of_offload_device_gets_mtu_frames(ns):
    got = netns.call_in(ns, _offload_then_plain, "wtap1")
    assert got["modes"] == ("offload", "plain") and not got["vnet_flag"]
    assert got["intact"]
    assert max(f["frame"] for f in got["frames"]) <= 1514


def _refused(name: str) -> dict:
    dev, mode = tundev.open_device(name, tap=True, offloads=0x8000)  # no such TUN_F_ flag
    try:
        return {"mode": str(mode), "reason": mode.reason,
                "vnet_flag": bool(_device_flags(dev.fileno()) & tundev.IFF_VNET_HDR),
                "persist": _link_info(name)[1].get("IFLA_TUN_PERSIST") == 1}
    finally:
        dev.persist(False)
        dev.close()


@root_only
@pytest.mark.netns
def test_fallback_to_plain_when_offload_refused(ns):
    got = netns.call_in(ns, _refused, "wtap2")
    assert got["mode"] == "plain" and not got["vnet_flag"] and got["persist"]
    assert "TUNSETOFFLOAD" in got["reason"] and "Invalid argument" in got["reason"]


def _reopens(name: str) -> dict:
    out = {}
    dev, mode = tundev.open_device(name, tap=True, offload=False)
    out["plain"] = str(mode)
    dev.close()
    dev, mode = tundev.open_device(name, tap=True)  # made without IFF_VNET_HDR, reopened with
    out["offload_reopen"] = str(mode)
    dev.close()
    dev, mode = tundev.open_device(name, tap=False)  # a TAP where a TUN is wanted: recreated
    out["tun_over_tap"] = str(mode)
    kind, data = _link_info(name)
    out["kind"] = kind == "tun" and data.get("IFLA_TUN_TYPE") == IFF_TUN
    dev.persist(False)
    dev.close()
    with IPRoute() as ipr:  # not a TUN/TAP: kept, open fails
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}p"})
    try:
        tundev.open_device(name, tap=True)
        out["other"] = "opened"
    except Exception as exc:  # noqa: BLE001 - the kind of failure is what is checked
        out["other"] = type(exc).__name__
    out["other_kept"] = _link_info(name)[0] == "veth"
    return out


@root_only
@pytest.mark.netns
def test_reopen_across_flags_and_types(ns):
    got = netns.call_in(ns, _reopens, "wtap3")
    assert got == {"plain": "plain", "offload_reopen": "offload", "tun_over_tap": "offload",
                   "kind": True, "other": "Error", "other_kept": True}


# ---- the TX TAP: tunnel-GSO frames the host forwards and cuts ----------------------------------

WIRE_A, WIRE_B = "192.168.231.1", "192.168.231.2"


def _wire(a: str, b: str, wire_like: bool) -> None:
    """veth wa (in a, WIRE_A) <-> wb (in b, WIRE_B); a forwards, as a flannel host does."""
    with IPRoute() as ipr:
        ipr.link("add", ifname="wa", kind="veth", peer={"ifname": "wb", "net_ns_fd": b})
        idx = ipr.link_lookup(ifname="wa")[0]
        ipr.addr("add", index=idx, address=WIRE_A, prefixlen=24)
        ipr.link("set", index=idx, state="up")
    netns.sysctl(a, "net.ipv4.ip_forward", 1)
    if wire_like:
        netns.disable_tx_offloads("wa")


def _peer_side(ready, wire_like: bool, port: int) -> list[bytes]:
    """In b: bring wb up and capture the IPv4 packets to UDP `port` arriving on it."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="wb")[0]
        ipr.addr("add", index=idx, address=WIRE_B, prefixlen=24)
        ipr.link("set", index=idx, state="up")
    if wire_like:
        netns.disable_tx_offloads("wb")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sock.bind(("wb", 0x0800))  # (CPython puts it in network order itself)
    sock.settimeout(0.3)
    ready.set()
    got, deadline = [], time.time() + 5.0
    while time.time() < deadline:
        try:
            pkt = sock.recv(70000)
        except TimeoutError:
            if got:
                break
            continue
        if pkt[9] == 17 and int.from_bytes(pkt[22:24], "big") == port:
            got.append(pkt)
    return got


def _tunnel_send(a: str, b: str, wire_like: bool, kind: str) -> dict:
    """In a: a pipeline whose peer is WIRE_B, the TX TAP, one super-frame through both."""
    import multiprocessing
    from ipaddress import IPv4Address, IPv4Network

    from weft.packet import offload
    from weft.packet.batch import BUFSIZE, Batch
    from weft.packet.offload import tunnel
    from weft.packet.pipeline import Pipeline

    sys_path_tests()
    from test_offload import super_frame

    _lo_up()
    _wire(a, b, wire_like)
    tx = tundev.open_tunnel_tx("weft.1")
    assert not tx.reason, tx.reason
    vxlan = kind == "vxlan"
    port = 8472 if vxlan else 8285
    mac = bytes.fromhex("020000000001") if vxlan else None

    def pipeline() -> Pipeline:
        p = Pipeline(kind, IPv4Network("10.1.0.0/16"), 24, mtu=1450, port=port)
        p.set_local(IPv4Network("10.1.15.0/24"), IPv4Address(WIRE_A), mac)
        p.table.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address(WIRE_B),
                         bytes.fromhex("0200000000aa") if vxlan else None)
        return p

    l3 = 14 if vxlan else 0
    data = super_frame(l3, payload=20000, mss=1398)
    # what the split path sends: outer IPv4 datagrams (vxlan), UDP payloads (udp)
    q = pipeline()
    batch = Batch(64)
    n = offload.split_super(np.frombuffer(data, np.uint8).copy(), len(data), l3, batch.bufs,
                            batch.lens, 0)
    q.egress(batch, n)
    want = [batch.bufs[i, batch.out_off[i] : batch.out_off[i] + batch.out_len[i]].tobytes()
            for i in range(n)]
    p = pipeline()
    sup = tunnel.new_sup()
    head = tunnel.SUP_HEAD if vxlan else tunnel.SUP_HEAD_UDP
    sup[head : head + len(data)] = np.frombuffer(data, np.uint8)
    info = np.zeros(tunnel.INFO_SIZE, np.int64)
    probe_row = np.zeros(BUFSIZE, np.uint8)
    encap_super = tunnel.encap_super if vxlan else tunnel.encap_super_udp
    t = encap_super(sup, len(data), probe_row, p.cfg, p.peers, p.counters, tx.mac, info)
    assert t > 0
    ready = multiprocessing.Event()
    peer = netns.spawn_in(b, _peer_side, ready, wire_like, port)
    ready.wait(5)
    # the neighbour first, so the frame does not wait in an ARP queue
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (WIRE_B, 9))
    time.sleep(0.3)
    os.write(tx.fd, sup[:t].tobytes())
    got = peer.result(10)
    tx.close()
    return {"want": want, "got": got, "segments": int(info[0])}


def sys_path_tests() -> None:
    import sys
    from pathlib import Path

    unit = str(Path(__file__).resolve().parent.parent / "unit")
    if unit not in sys.path:
        sys.path.insert(0, unit)


@root_only
@pytest.mark.netns
@pytest.mark.parametrize("kind", ["vxlan", "udp"])
@pytest.mark.parametrize("wire_like", [True, False], ids=["wire-like", "veth-offloads"])
def test_tunnel_gso_frame_leaves_as_the_split_path_datagrams(ns, wire_like: bool, kind: str):
    """A frame written into the TX TAP is forwarded out the wire and cut by the kernel into
    exactly the datagrams the split path sends (wire-like), or crosses whole (veth offloads).
    udp backend: the split path sends from a socket, whose outer IP ids the kernel picks, so
    the UDP payloads are compared byte for byte and the outer header field by field."""
    peer = f"{ns}b"
    netns.create(peer)
    try:
        out = netns.call_in(ns, _tunnel_send, ns, peer, wire_like, kind)
    finally:
        netns.remove(peer)
    want, got = out["want"], out["got"]
    assert out["segments"] == len(want) > 10
    if kind == "udp":
        payloads = [g[28:] for g in got]
        if wire_like:
            assert payloads == want
        else:
            assert len(got) == 1 and got[0][28 + 52 :] == b"".join(w[52:] for w in want)
        for g in got:
            assert (g[8], g[6] & 0x40, g[20:24], g[26:28]) == (64, 0x40, bytes.fromhex(
                "205d205d"), b"\0\0")  # TTL 64, DF, ports 8285, checksum 0
            assert socket.inet_ntoa(g[12:16]) == WIRE_A and socket.inet_ntoa(g[16:20]) == WIRE_B
    elif wire_like:
        assert got == want
    else:
        # one GSO packet: outer headers of the first datagram (but the total length), then the
        # whole inner frame; the inner TCP checksum is left partial for the receiver's stack
        assert len(got) == 1
        inner = b"".join(w[36 + 14 + 20 + 32 :] for w in want)
        assert got[0][36 + 14 + 20 + 32 :] == inner
        g, w = got[0], want[0]
        assert g[:2] + g[4:10] + g[12:22] == w[:2] + w[4:10] + w[12:22]  # but lengths, csum


def _tunnel_tx_without_forwarding() -> tuple[str, int, str]:
    refused = tundev.open_tunnel_tx("weft.1")  # a fresh namespace does not forward
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    taken = tundev.open_tunnel_tx("weft.1")
    name = taken.name
    taken.close()
    return refused.reason, refused.fd, name


@root_only
@pytest.mark.netns
def test_tunnel_tx_says_why_it_is_refused_and_opens_when_the_host_forwards(ns):
    reason, fd, name = netns.call_in(ns, _tunnel_tx_without_forwarding)
    assert (reason, fd) == ("net.ipv4.ip_forward is off", -1)
    assert name == "weft.1tx"
