"""switch.tundev: TAP with virtio-net header + TSO in a fresh namespace, fallback, batched reads.

The TCP tests play the far end of a TAP in userspace: the kernel connects a socket to 10.99.0.2
(routed into the TAP), the test answers the SYN and ACKs every data frame, and records what the
reads looked like (vnet header, gso_type, frame sizes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from pyroute2 import IPRoute

from switch import tundev

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools import netns  # noqa: E402

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
    bufs = np.zeros((16, 70000), np.uint8)
    lens = np.zeros(16, np.int32)
    pad = bytes(hdr_len)  # our replies: gso_type NONE, full checksums computed by scapy
    deadline = time.monotonic() + 15
    while len(result["payload"]) < TOTAL and time.monotonic() < deadline:
        select.select([fd], [], [], 0.2)
        n = tundev.read_batch(fd, bufs, lens, 0, 16, 0)
        for i in range(n):
            raw = bufs[i, :lens[i]].tobytes()
            vnet = np.frombuffer(raw[:hdr_len], tundev.VNET_HDR)[0] if hdr_len else None
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
                    "read": int(lens[i]), "frame": len(raw) - hdr_len, "payload": size,
                    "gso_type": int(vnet["gso_type"]) if vnet is not None else None,
                    "gso_size": int(vnet["gso_size"]) if vnet is not None else None,
                    "vnet_flags": int(vnet["flags"]) if vnet is not None else None,
                })
                reply = TCP(sport=5001, dport=tcp.sport, flags="A", seq=1001,
                            ack=tcp.seq + size, window=65535)
            out = Ether(src=PEER_MAC, dst=frame.src) / IP(src=PEER_IP, dst=LOCAL_IP) / reply
            assert tundev.write(fd, pad + bytes(out)) == hdr_len + len(out)
    thread.join(timeout=5)
    result["intact"] = result["payload"] == data
    del result["payload"]
    return result


def _offload_session(name: str) -> dict:
    _lo_up()
    dev, mode = tundev.open_device(name, tap=True)
    try:
        flags = _device_flags(dev.fileno())
        got = _tcp_transfer(dev, tundev.VNET_HDR_LEN, name)
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
    tso = [f for f in frames if f["gso_type"] == tundev.GSO_TCPV4]
    print(f"\n{len(frames)} data reads for {TOTAL} B; {len(tso)} TSO, largest "
          f"{max(f['frame'] for f in frames)} B, gso_size {sorted({f['gso_size'] for f in tso})}")
    assert tso, frames
    for f in frames:
        assert f["read"] == f["frame"] + tundev.VNET_HDR_LEN  # the 10-byte virtio_net_hdr
    assert max(f["frame"] for f in tso) > 1514
    assert {f["gso_size"] for f in tso} == {1460}
    assert all(f["vnet_flags"] & tundev.VNET_F_NEEDS_CSUM for f in tso)  # checksum left to us


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


# -- read_batch / write_batch without a device: AF_UNIX datagram sockets keep boundaries -------

@pytest.fixture
def dgram():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("reader", [tundev.read_batch, tundev.read_batch_py])
def test_read_batch_drains_and_stops(dgram, reader):
    a, b = dgram
    for i in range(10):
        a.send(bytes([i]) * (100 + i))
    bufs = np.zeros((8, 512), np.uint8)
    lens = np.zeros(8, np.int32)
    assert reader(b.fileno(), bufs, lens, 2, 64, 64) == 6  # rows 2..7 only
    assert list(lens[2:]) == [100 + i for i in range(6)]
    assert bufs[7, 64:64 + 105].tobytes() == bytes([5]) * 105
    assert bufs[7, 63] == 0  # nothing written before the offset
    assert reader(b.fileno(), bufs, lens, 0, 8, 64) == 4
    assert reader(b.fileno(), bufs, lens, 0, 8, 64) == 0


def test_read_batch_twins_agree(dgram):
    a, b = dgram
    got = []
    for reader in (tundev.read_batch, tundev.read_batch_py):
        for i in range(20):
            a.send(os.urandom(1 + i * 17))
        bufs = np.zeros((32, 400), np.uint8)
        lens = np.zeros(32, np.int32)
        n = reader(b.fileno(), bufs, lens, 0, 32, 10)
        got.append((n, lens.copy(), bufs.copy()))
    assert got[0][0] == got[1][0] == 20
    assert (got[0][1] == got[1][1]).all()
    # Same sizes, different random bytes: compare where bytes landed, not what they are.
    assert ((got[0][2] != 0) <= (np.arange(400) >= 10)).all()


def test_read_batch_errors(dgram):
    bufs = np.zeros((4, 64), np.uint8)
    lens = np.zeros(4, np.int32)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as exc:
        tundev.read_batch(r, bufs, lens, 0, 4, 0)
    assert exc.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        tundev.read_batch(r, bufs[:, ::2], lens, 0, 4, 0)


def test_write_and_write_batch(dgram):
    a, b = dgram
    bufs = np.zeros((4, 128), np.uint8)
    for i in range(4):
        bufs[i, 20:20 + 10 + i] = i + 1
    out_off = np.full(4, 20, np.int32)
    out_len = np.array([10, 11, 12, 13], np.int32)
    assert tundev.write_batch(a.fileno(), bufs, np.array([3, 0]), out_off, out_len) == (2, 0)
    assert b.recv(100) == bytes([4]) * 13 and b.recv(100) == bytes([1]) * 10
    assert tundev.write(a.fileno(), memoryview(bufs[1, 20:31])) == 11
    assert b.recv(100) == bytes([2]) * 11
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert tundev.write(w, b"x") == -errno.EBADF
    assert tundev.write_batch(w, bufs, np.array([0, 1]), out_off, out_len) == (0, errno.EBADF)
