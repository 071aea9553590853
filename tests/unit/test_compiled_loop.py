"""The compiled driver (weft.drivers.compiled_driver.HotLoop) without root: no namespaces, no
TUN/TAP.

The shared fakes (tests/fakes): a FakeDevice stands in for the TUN/TAP (one read or write per
packet), loopback UDP sockets for the peers: our host is 127.0.0.1, the peer holding 10.1.2.0/24 is
127.0.0.2 and 127.0.0.3 holds no lease. Every test stops the loop before it compares counters:
only then are the loop's and the pipeline's counts final.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.drivers.driver import CompiledLoopUnavailable

pytestmark = pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1",
                                reason="the libc intrinsics exist only in compiled code")

from fakes.device import WAIT, FakeDevice  # noqa: E402
from fakes.network import free_port, udp_socket  # noqa: E402
from fakes.packets import ipv4_udp, ttl_decremented, with_header_checksum  # noqa: E402

from weft.drivers import loop_syscalls  # noqa: E402
from weft.drivers.compiled_driver import HotLoop  # noqa: E402
from weft.packet.offload.vnet_hdr import VNET_HDR_LEN  # noqa: E402
from weft.packet.pipeline import EGRESS, INGRESS, Pipeline  # noqa: E402
from weft.packet.reasons import Reason  # noqa: E402
from weft.packet.table import CFG_PORT  # noqa: E402

NETWORK = IPv4Network("10.1.0.0/16")
OURS, THEIRS = IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24")
US, PEER, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3"
OUR_MAC, PEER_MAC = bytes.fromhex("020000000a01"), bytes.fromhex("020000000a02")


class Host:
    """Our end: the pipeline, the device pair, our UDP socket and the loop over them."""

    def __init__(self, kind: str, offload: bool = False, gso: bool = False) -> None:
        self.port = free_port(US, PEER)
        self.pipeline = Pipeline(kind, NETWORK, 24, port=self.port)
        vxlan = kind == "vxlan"
        self.pipeline.set_local(OURS, IPv4Address(US), OUR_MAC if vxlan else None)
        self.pipeline.table.set_peer(THEIRS, IPv4Address(PEER), PEER_MAC if vxlan else None)
        self.device = FakeDevice()
        self.sock = udp_socket(US, self.port)  # receives, and sends for udp
        self.peer = udp_socket(PEER, self.port)
        # vxlan's raw sending socket needs root; with UDP GSO the loop sends from UDP sockets.
        self.loop = HotLoop(self.pipeline, self.device.fileno(), self.sock.fileno(),
                            self.sock.fileno(), self.port, offload=offload,
                            gso_fds=[self.sock.fileno()] if gso else ())

    def close(self) -> None:
        self.loop.stop()
        for s in (self.device, self.sock, self.peer):
            s.close()


@contextmanager
def running(host: Host) -> Iterator[HotLoop]:
    host.loop.start()
    try:
        yield host.loop
    finally:
        host.loop.stop()
        assert not any(t.is_alive() for t in host.loop.threads)
        assert not host.loop.crashed


@pytest.fixture
def udp_host() -> Iterator[Host]:
    host = Host("udp")
    yield host
    host.close()


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


def test_udp_egress_encapsulates_and_sends_to_the_peer(udp_host: Host) -> None:
    packet = ipv4_udp("10.1.1.5", "10.1.2.5")
    with running(udp_host) as loop:
        udp_host.device.write([packet])
        data, sender = udp_host.peer.recvfrom(65536)
    assert sender == (US, udp_host.port)  # flannel's udp: from our port to the peer's
    assert data == ttl_decremented(packet)  # the bare packet, TTL decremented, checksum fixed
    summary = udp_host.pipeline.counter_summary()
    assert summary["egress"]["forwarded"] == loop.stats()["egress"]["sent"] == 1
    assert loop.errors["send"] == 0


def test_udp_ingress_decapsulates_and_writes_into_the_device(udp_host: Host) -> None:
    packet = ipv4_udp("10.1.2.5", "10.1.1.5")
    with running(udp_host) as loop:
        udp_host.peer.sendto(packet, (US, udp_host.port))
        [written] = udp_host.device.read()
    assert written == ttl_decremented(packet)
    summary = udp_host.pipeline.counter_summary()
    assert summary["ingress"]["forwarded"] == loop.stats()["ingress"]["sent"] == 1
    assert loop.stats()["ingress"]["packets"] == summary["ingress"]["packets"] == 1


def test_drops_are_counted_once_by_reason(udp_host: Host) -> None:
    """A datagram from a sender with no lease is dropped and counted exactly once."""
    pipeline = udp_host.pipeline
    with running(udp_host), udp_socket(STRANGER) as stranger:
        for _ in range(3):
            stranger.sendto(ipv4_udp("10.1.2.5", "10.1.1.5"), (US, udp_host.port))
        _wait_for(lambda: pipeline.drops[INGRESS].sum() >= 3, "three ingress drops")
    assert pipeline.drops[INGRESS][int(Reason.UNKNOWN_SENDER)] == 3
    assert pipeline.drops[INGRESS].sum() == 3
    assert pipeline.drops[EGRESS].sum() == 0
    assert pipeline.counter_summary()["drops"] == {"unknown_sender": 3}
    assert pipeline.counter_summary()["ingress"]["dropped"] == 3


def test_slow_packet_gets_its_answer_written_into_the_device(udp_host: Host) -> None:
    """No lease covers 10.1.9.1: the slow path answers ICMP net unreachable into the device."""
    with running(udp_host):
        udp_host.device.write([ipv4_udp("10.1.1.5", "10.1.9.1")])
        [answer] = udp_host.device.read()
    assert answer[9] == 1 and answer[20] == 3 and answer[21] == 0  # ICMP, unreachable, net
    assert socket.inet_ntoa(answer[16:20]) == "10.1.1.5"
    assert udp_host.pipeline.slow_counts[int(Reason.ICMP_ERROR_SENT)] == 1


def test_vxlan_both_ways_over_udp_gso_sockets() -> None:
    host = Host("vxlan", gso=True)
    try:
        if host.loop.offloads()["gso"] != "on":
            pytest.skip("this kernel refuses UDP_SEGMENT")
        inner = ipv4_udp("10.1.1.5", "10.1.2.5")
        frame = PEER_MAC + OUR_MAC + b"\x08\x00" + inner
        back = OUR_MAC + PEER_MAC + b"\x08\x00" + ipv4_udp("10.1.2.5", "10.1.1.5")
        with running(host) as loop:
            host.device.write([frame])
            data, _ = host.peer.recvfrom(65536)
            host.peer.sendto(bytes([0x08, 0, 0, 0, 0, 0, 1, 0]) + back, (US, host.port))
            [written] = host.device.read()
        assert data[:8] == bytes([0x08, 0, 0, 0, 0, 0, 1, 0])  # flags I, VNI 1
        assert data[8:] == frame  # the TAP frame as it was read
        assert written == back
        summary = host.pipeline.counter_summary()
        stats = loop.stats()
        assert stats["egress"]["sent"] == summary["egress"]["forwarded"] == 1
        assert stats["ingress"]["sent"] == summary["ingress"]["forwarded"] == 1
    finally:
        host.close()


def test_offload_super_frame_is_split_into_packets() -> None:
    """One device read of a TSO frame (virtio_net_hdr + 3 MSS of TCP) leaves as 3 datagrams."""
    host = Host("udp", offload=True)
    try:
        mss = 1000
        payload = bytes(range(256)) * 12  # 3072 bytes: segments of 1000, 1000, 1000, 72
        tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + payload
        ip = with_header_checksum(struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 9, 0x4000, 64, 6, 0,
            socket.inet_aton("10.1.1.5"), socket.inet_aton("10.1.2.5")))
        vnet = struct.pack("<BBHHHH", 0, 1, 40, mss, 0, 0)  # GSO_TCPV4, gso_size = mss
        assert len(vnet) == VNET_HDR_LEN
        with running(host) as loop:
            host.device.write([vnet + ip + tcp])
            got = [host.peer.recv(65536) for _ in range(4)]
        assert [len(g) - 40 for g in got] == [1000, 1000, 1000, 72]
        assert b"".join(g[40:] for g in got) == payload
        stats = loop.stats()["egress"]
        assert stats["device_io"] == 1 and stats["packets"] == 4 and stats["sent"] == 4
        assert host.pipeline.counter_summary()["egress"]["forwarded"] == 4
    finally:
        host.close()


def test_offload_bad_super_frame_is_dropped_and_counted() -> None:
    """A device read split_super refuses becomes no rows and one counted drop, not a crash."""
    host = Host("udp", offload=True)
    # Outside the network: never forwarded (the slow path takes it), so nothing is sent.
    packet = ipv4_udp("10.1.1.5", "192.0.2.9")
    frames = [b"\x00" * 5,  # shorter than a virtio_net_hdr
              bytes([0, 5]) + bytes(8) + packet,  # gso UDP_L4, never enabled: unsupported
              bytes(10) + packet]  # fine
    try:
        with running(host) as loop:
            for k, frame in enumerate(frames, 1):
                host.device.write([frame])
                _wait_for(lambda k=k: loop.egress.stats[loop_syscalls.ST_DEVICE_IO] >= k,
                          f"device read {k}")
            _wait_for(lambda: loop.stats()["egress"]["batches"] >= 1, "a batch")
        assert loop.drops() == {"offload_split_malformed": 1, "offload_split_unsupported": 1}
        assert loop.stats()["egress"]["packets"] == 1  # only the good frame became a row
        assert host.pipeline.counter_summary()["egress"]["packets"] == 1
    finally:
        host.close()


def test_dead_device_fd_ends_the_loop_with_its_errno() -> None:
    """End of file on the device is a hard error: the thread records it and ends."""
    import errno

    p = Pipeline("udp", NETWORK, 24, port=8285)
    p.set_local(OURS, IPv4Address(US))
    r, w = os.pipe()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        loop = HotLoop(p, r, s.fileno(), s.fileno(), 8285)
        loop.start()
        os.close(w)  # the read end now polls as hung up with nothing to read
        loop.threads[0].join(timeout=WAIT)
        assert not loop.threads[0].is_alive()
        loop.stop()
    os.close(r)
    assert loop.errors["fatal_egress"] == errno.ENODEV  # end of file: the device is gone


@pytest.fixture
def plain_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mode fallback opens a FakeDevice instead of a TUN/TAP (which needs root)."""
    from weft.dev.tundev import PLAIN, Mode
    from weft.drivers import mode_fallback

    monkeypatch.setattr(mode_fallback, "open_device",
                        lambda name, tap, offload: (FakeDevice(), Mode(PLAIN, "test")))
    # The ladder is under test, not the cold start (test_compile_job, netns/test_cold_start):
    # the cache counts as compiled, and nothing is preloaded behind the test's back.
    monkeypatch.setattr(mode_fallback.compile_job, "is_compiled", lambda stage="loops": True)
    monkeypatch.setattr(mode_fallback, "_preload_loops", lambda: None)


def _pipeline() -> Pipeline:
    p = Pipeline("udp", NETWORK, 24, port=free_port())
    p.set_local(OURS, IPv4Address(US))
    return p


def test_ladder_falls_back_when_the_compiled_loop_is_unavailable(
        plain_device: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from weft.drivers.mode_fallback import DeviceDatapath
    from weft.drivers.pyloop import PyLoop

    def unavailable(self: HotLoop) -> None:
        raise CompiledLoopUnavailable("no numba here")

    monkeypatch.setattr(HotLoop, "start", unavailable)
    pipeline = _pipeline()
    datapath = DeviceDatapath("weft-test", tap=False)
    try:
        driver = datapath.start(pipeline, pipeline.cfg[CFG_PORT])
        status = datapath.status()
    finally:
        datapath.close()
    assert isinstance(driver, PyLoop)
    assert status["mode"] == "plain"
    assert status["refused"] == {"offload": "test",
                                 "fast": "compiled loop unavailable: no numba here"}


def test_ladder_lets_any_other_error_propagate(plain_device: None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while starting the compiled loop fails loudly instead of shipping the Python loop."""
    from weft.drivers.mode_fallback import DeviceDatapath

    def bug(self: HotLoop) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(HotLoop, "start", bug)
    pipeline = _pipeline()
    datapath = DeviceDatapath("weft-test", tap=False)
    try:
        with pytest.raises(TypeError, match="a bug"):
            datapath.start(pipeline, pipeline.cfg[CFG_PORT])
    finally:
        datapath.close()


def test_ladder_starts_the_compiled_loop_when_it_can(plain_device: None) -> None:
    from weft.drivers.mode_fallback import DeviceDatapath

    pipeline = _pipeline()
    datapath = DeviceDatapath("weft-test", tap=False, wanted="fast")
    try:
        assert isinstance(datapath.start(pipeline, pipeline.cfg[CFG_PORT]), HotLoop)
        status = datapath.status()
    finally:
        datapath.close()
    assert status["mode"] == "fast" and "refused" not in status
    assert set(status["loop"]) == {"egress", "ingress"}


_LOAD_TWICE = """
from ipaddress import IPv4Network
import socket
from weft.drivers import compiled_loops, compiled_driver
from weft.packet.pipeline import Pipeline
p = Pipeline({kind!r}, IPv4Network("10.1.0.0/16"), 24, port=8285)
dev, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
compiled_driver.HotLoop(p, dev.fileno(), s.fileno(), s.fileno(), 8285, offload={offload}).compile()
for f in (compiled_loops.egress_loop, compiled_loops.ingress_loop):
    print(f.stats.cache_hits.total(), f.stats.cache_misses.total())
"""


@pytest.mark.parametrize("kind,offload", [("udp", False), ("vxlan", True)])
def test_a_restarted_process_loads_the_loops_from_the_cache(kind: str, offload: bool) -> None:
    """cache=True works with the NamedTuple argument groups: the second interpreter loads the
    machine code (cache hits), it does not compile (no misses)."""
    script = _LOAD_TWICE.format(kind=kind, offload=offload)
    for _ in range(2):  # the first run may compile and store
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True).stdout.split()
    hits_e, misses_e, hits_i, misses_i = map(int, out)
    assert (misses_e, misses_i) == (0, 0)
    assert hits_e >= 1 and hits_i >= 1
