"""switch.mmsg: recvmmsg/sendmmsg over a Batch, UDP GSO/GRO, all on loopback (and one netns)."""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
import uuid

import numpy as np
import pytest

from switch.fastpath import HEADROOM, Batch
from switch.mmsg import MmsgIO, enable_udp_gro, probe_udp_offloads, recv_gro, send_gso

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools import netns  # noqa: E402

LOCAL = 0x7F000001  # 127.0.0.1
SENDER = 0x7F000002  # 127.0.0.2, so src_ip is not just "localhost again"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (raw socket / netns)")


@pytest.fixture
def pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    yield tx, rx, rx.getsockname()[1]
    tx.close()
    rx.close()


def _payload(i: int, size: int) -> bytes:
    return bytes((i * 7 + k) & 0xFF for k in range(size))


def _fill(batch: Batch, rows, size_of, dst: int = LOCAL, off: int = 8) -> None:
    """Put an output of size_of(i) bytes at column `off` of each row, addressed to dst."""
    for i in rows:
        data = _payload(i, size_of(i))
        batch.bufs[i, off:off + len(data)] = np.frombuffer(data, np.uint8)
        batch.out_off[i] = off
        batch.out_len[i] = len(data)
        batch.dst_ip[i] = dst


def _drain(rx: socket.socket) -> list[bytes]:
    rx.setblocking(False)
    out = []
    while True:
        try:
            out.append(rx.recv(65536))
        except BlockingIOError:
            return out


def test_round_trip_64(pair):
    tx, rx, port = pair
    out, inp = Batch(64), Batch(64)
    sizes = [1 + 23 * i for i in range(64)]  # 1 .. 1450 bytes
    _fill(out, range(64), lambda i: sizes[i])
    io_out, io_in = MmsgIO(out), MmsgIO(inp)
    assert io_out.send(tx.fileno(), np.arange(64), port) == 64
    assert (io_out.errno, io_out.failed) == (0, 0)
    assert io_in.recv(rx.fileno(), 64) == 64
    assert io_in.errno == 0
    for i in range(64):
        assert inp.lens[i] == sizes[i]
        assert inp.src_ip[i] == SENDER
        assert inp.bufs[i, HEADROOM:HEADROOM + sizes[i]].tobytes() == _payload(i, sizes[i])
    # Nothing left: 0 with EAGAIN, not an exception.
    assert io_in.recv(rx.fileno(), 64) == 0
    assert io_in.errno == errno.EAGAIN


def test_partial_batches(pair):
    tx, rx, port = pair
    out, inp = Batch(64), Batch(64)
    _fill(out, range(20), lambda i: 100 + i)
    io_out, io_in = MmsgIO(out), MmsgIO(inp)
    assert io_out.send(tx.fileno(), np.arange(20), port) == 20
    assert io_in.recv(rx.fileno(), 8) == 8  # fewer than waiting: the rest stay queued
    assert io_in.recv(rx.fileno(), 64, first=8) == 12  # continue in the following rows
    assert list(inp.lens[:20]) == [100 + i for i in range(20)]
    assert inp.bufs[19, HEADROOM:HEADROOM + 119].tobytes() == _payload(19, 119)
    # A batch with room for only 4 more rows takes 4 even if more wait.
    assert io_out.send(tx.fileno(), np.arange(10), port) == 10
    assert io_in.recv(rx.fileno(), 64, first=60) == 4
    assert io_in.recv(rx.fileno(), 64) == 6


def test_send_listed_rows_in_order(pair):
    tx, rx, port = pair
    out = Batch(16)
    _fill(out, range(16), lambda i: 50 + i)
    io = MmsgIO(out)
    assert io.send(tx.fileno(), np.array([9, 2, 13]), port) == 3
    assert _drain(rx) == [_payload(9, 59), _payload(2, 52), _payload(13, 63)]
    assert io.send(tx.fileno(), np.array([], dtype=np.int64), port) == 0


def test_truncated_datagram_reports_full_length(pair):
    tx, rx, port = pair
    inp = Batch(4, bufsize=1024)
    tx.sendto(b"x" * 3000, ("127.0.0.1", port))
    tx.sendto(b"y" * 10, ("127.0.0.1", port))
    io = MmsgIO(inp)
    assert io.recv(rx.fileno(), 4) == 2
    assert inp.lens[0] == 3000 > inp.capacity  # the fast path drops it as TRUNCATED
    assert inp.lens[1] == 10
    assert io.truncated == 1


def test_errors_are_counts_not_exceptions(pair):
    _, rx, port = pair
    out = Batch(4)
    _fill(out, range(4), lambda i: 10)
    io = MmsgIO(out)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    assert io.send(w, np.arange(4), port) == 0  # a closed fd
    assert (io.errno, io.failed) == (errno.EBADF, 4)
    assert io.recv(w, 4) == 0
    assert io.errno == errno.EBADF


def _send_mixed_in_empty_netns() -> tuple[int, int, int, list[bytes]]:
    """In a namespace that has only lo: a packet to an unroutable address fails alone."""
    os.system("ip link set lo up")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out = Batch(5)
    _fill(out, range(5), lambda i: 20 + i)
    out.dst_ip[2] = 0x0A010203  # 10.1.2.3: no route in this namespace
    io = MmsgIO(out)
    sent = io.send(tx.fileno(), np.arange(5), rx.getsockname()[1])
    return sent, io.failed, io.errno, _drain(rx)


@root_only
@pytest.mark.netns
def test_one_bad_destination_does_not_stop_the_batch():
    ns = f"wmm{uuid.uuid4().hex[:8]}"
    netns.create(ns)
    try:
        sent, failed, err, got = netns.call_in(ns, _send_mixed_in_empty_netns)
    finally:
        netns.remove(ns)
    assert (sent, failed, err) == (4, 1, errno.ENETUNREACH)
    assert got == [_payload(i, 20 + i) for i in (0, 1, 3, 4)]


def _ipv4_udp(src: int, dst: int, sport: int, dport: int, payload: bytes) -> bytes:
    # IPPROTO_RAW implies IP_HDRINCL; the kernel fills the IP checksum (and total length);
    # UDP checksum 0 means "none" over IPv4, as VXLAN senders use.
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, socket.IPPROTO_UDP,
                     0, src, dst)
    return ip + udp


@root_only
def test_raw_socket_sendmmsg(pair):
    _, rx, port = pair
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        out = Batch(8)
        for i in range(8):
            pkt = _ipv4_udp(SENDER, LOCAL, 40000 + i, port, _payload(i, 64 + i))
            # Like the vxlan kernel, the outer headers start inside the headroom.
            off = HEADROOM - 36
            out.bufs[i, off:off + len(pkt)] = np.frombuffer(pkt, np.uint8)
            out.out_off[i], out.out_len[i], out.dst_ip[i] = off, len(pkt), LOCAL
        io = MmsgIO(out)
        assert io.send(raw.fileno(), np.arange(8), 0) == 8
    finally:
        raw.close()
    inp = Batch(8)
    rio = MmsgIO(inp)
    time.sleep(0.05)
    assert rio.recv(rx.fileno(), 8) == 8
    for i in range(8):
        assert inp.src_ip[i] == SENDER
        assert inp.bufs[i, HEADROOM:HEADROOM + inp.lens[i]].tobytes() == _payload(i, 64 + i)


def test_probe():
    caps = probe_udp_offloads()
    assert set(caps) == {"udp_segment", "udp_gro"}
    assert all(isinstance(v, bool) for v in caps.values())


def _gso_buffer(count: int, size: int, last: int | None = None) -> np.ndarray:
    chunks = [_payload(i, size) for i in range(count)]
    if last is not None:
        chunks.append(_payload(count, last))
    return np.frombuffer(b"".join(chunks), np.uint8).copy()


@pytest.mark.skipif(not probe_udp_offloads()["udp_segment"], reason="no UDP_SEGMENT")
def test_udp_segment_send_arrives_as_40_datagrams(pair):
    tx, rx, port = pair
    buf = _gso_buffer(40, 1400)
    assert send_gso(tx.fileno(), buf, buf.nbytes, 1400, LOCAL, port) == 56000
    inp = Batch(64)
    io = MmsgIO(inp)
    assert io.recv(rx.fileno(), 64) == 40
    assert list(inp.lens[:40]) == [1400] * 40
    for i in range(40):
        assert inp.bufs[i, HEADROOM:HEADROOM + 1400].tobytes() == _payload(i, 1400)
    assert set(inp.src_ip[:40]) == {SENDER}


def test_udp_segment_short_tail_and_limits(pair):
    tx, rx, port = pair
    buf = _gso_buffer(3, 1000, last=500)
    assert send_gso(tx.fileno(), buf, buf.nbytes, 1000, LOCAL, port) == 3500
    assert [len(d) for d in _drain(rx)] == [1000, 1000, 1000, 500]
    # 128 segments on Linux 6.18 (64 on older kernels); nothing takes 129.
    too_many = np.zeros(129 * 100, np.uint8)
    assert send_gso(tx.fileno(), too_many, too_many.nbytes, 100, LOCAL, port) == -errno.EINVAL


@pytest.mark.skipif(not all(probe_udp_offloads().values()), reason="no UDP GSO/GRO")
def test_udp_gro_read_gives_segment_size(pair):
    tx, rx, port = pair
    assert enable_udp_gro(rx.fileno())
    buf = _gso_buffer(40, 1400)
    assert send_gso(tx.fileno(), buf, buf.nbytes, 1400, LOCAL, port) == 56000
    into = np.zeros(65536, np.uint8)
    got = b""
    segments = set()
    while True:
        nbytes, seg, src = recv_gro(rx.fileno(), into)
        if nbytes == -errno.EAGAIN:
            break
        assert nbytes > 0 and src == SENDER
        segments.add(seg)
        got += into[:nbytes].tobytes()
    print(f"GRO: 40 x 1400 B came back in reads with segment sizes {sorted(segments)}")
    assert got == buf.tobytes()
    assert segments == {1400}


def test_recv_gro_plain_datagram_and_empty(pair):
    tx, rx, port = pair
    into = bytearray(2048)
    assert recv_gro(rx.fileno(), into) == (-errno.EAGAIN, 0, 0)
    tx.sendto(b"hello", ("127.0.0.1", port))
    assert recv_gro(rx.fileno(), into) == (5, 5, SENDER)
    assert into[:5] == b"hello"


def test_throughput_mmsg_vs_plain(pair):
    """Measured, not asserted: 1400-byte datagrams over loopback, batches of 64."""
    tx, rx, port = pair
    rounds = 300
    out, inp = Batch(64), Batch(64)
    _fill(out, range(64), lambda i: 1400)
    io_out, io_in = MmsgIO(out), MmsgIO(inp)
    rows = np.arange(64)
    start = time.perf_counter()
    moved = 0
    for _ in range(rounds):
        io_out.send(tx.fileno(), rows, port)
        moved += io_in.recv(rx.fileno(), 64)
    mmsg_rate = moved / (time.perf_counter() - start)

    data = _payload(1, 1400)
    views = [inp.bufs[i, HEADROOM:] for i in range(64)]
    rx.setblocking(False)
    start = time.perf_counter()
    moved = 0
    for _ in range(rounds):
        for _ in range(64):
            tx.sendto(data, ("127.0.0.1", port))
        for i in range(64):
            try:
                rx.recvfrom_into(views[i])
            except BlockingIOError:
                break
            moved += 1
    plain_rate = moved / (time.perf_counter() - start)

    # Per-call overhead: an empty recv (EAGAIN) is all ctypes + numpy bookkeeping.
    start = time.perf_counter()
    for _ in range(20000):
        io_in.recv(rx.fileno(), 64)
    empty_us = (time.perf_counter() - start) / 20000 * 1e6
    print(f"\nloopback 1400 B: sendmmsg+recvmmsg {mmsg_rate / 1e3:.0f}k pkt/s, "
          f"sendto+recvfrom_into {plain_rate / 1e3:.0f}k pkt/s "
          f"({mmsg_rate / plain_rate:.2f}x); empty recv() call {empty_us:.1f} us")
    assert mmsg_rate > 0 and plain_rate > 0
