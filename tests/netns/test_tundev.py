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

from weft.dev import tundev, vnet_hdr
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
            vnet = np.frombuffer(raw[:hdr_len], vnet_hdr.VNET_HDR)[0] if hdr_len else None
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
                    "gso_type": int(vnet["gso_type"]) if vnet is not None else None,
                    "gso_size": int(vnet["gso_size"]) if vnet is not None else None,
                    "vnet_flags": int(vnet["flags"]) if vnet is not None else None,
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
