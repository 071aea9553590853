"""The compiled driver (drivers/compiled_driver.py, compiled_loops.py) carrying real traffic
between two namespaces.

Two "hosts", namespaces joined by a veth (192.168.77.1 <-> .2), each programmed the way weft's
backends program a host: a TUN (udp) or TAP (vxlan) `weft0` holding the subnet's network
address /32, a route for the whole 10.1.0.0/16 into it, a Pipeline whose peer table names the
other host, and a HotLoop over the device and the backend's sockets. The devices and sockets
are opened by a thread that entered the namespace, so both loops run in this process. An
"offload" fabric opens its devices with weft.dev.tundev (IFF_VNET_HDR + TSO), so TCP sent from a
host reaches the loop as super-frames and leaves it coalesced.

`python tests/netns/test_hotloop.py` prints the figures: ping RTT through HotLoop vs the plain
PyLoop, and 64-byte UDP packets/s. The root-free tests of the compiled loop (socketpair device,
loopback peers, drops, offload split, the driver ladder) are in tests/unit/test_compiled_loop.py.
"""

from __future__ import annotations

import fcntl
import os
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from pyroute2 import IPRoute

from weft.dev import tundev
from weft.drivers import loop_syscalls
from weft.drivers.compiled_driver import HotLoop
from weft.drivers.pyloop import PyLoop, Transport
from weft.packet.batch import Batch
from weft.packet.counters import N_SLOTS
from weft.packet.pipeline import EGRESS, INGRESS, Pipeline
from weft.packet.reasons import Reason, Verdict
from weft.tools.lab import (
    netns,
    probe,
)

pytestmark = [
    pytest.mark.netns,
    # The loops call libc through numba intrinsics, which exist only in compiled code.
    pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="needs numba JIT"),
]

NETWORK = IPv4Network("10.1.0.0/16")
SUBNETS = (IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24"))
PUBLIC = ("192.168.77.1", "192.168.77.2")
MACS = (bytes.fromhex("020000000a01"), bytes.fromhex("020000000a02"))
PORTS = {"udp": 8285, "vxlan": 8472}
UNLEASED = "10.1.9.1"  # in the network, no lease: the slow path answers net unreachable

_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_TAP, _IFF_NO_PI = 0x0001, 0x0002, 0x1000


def _in_ns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a fresh thread that entered `ns`: what it opens (TUN, sockets) lives there.

    setns() moves only the calling thread, and the thread ends right after, so this process
    stays in its own namespace while the descriptors keep working from any thread.
    """
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            netns.enter(ns)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _open_device(tap: bool) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = (_IFF_TAP if tap else _IFF_TUN) | _IFF_NO_PI
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", b"weft0", flags))
    return fd


def _enable_gro(ifname: str) -> None:
    """ethtool -K <ifname> gro on (ETHTOOL_SGRO), inside the namespace of the caller.

    A NIC does GRO by default; a veth only once it is switched on (it then runs NAPI). Only
    then can the kernel merge the datagrams of a flow for a UDP_GRO socket: the sender's GSO
    messages were cut into wire-sized datagrams before they crossed (disable_tx_offloads).
    """
    import array

    value = array.array("I", [0x2C, 1])  # struct ethtool_value {ETHTOOL_SGRO, on}
    address, _ = value.buffer_info()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), 0x8946, struct.pack("16sP", ifname.encode(), address))


@dataclass
class Host:
    ns: str
    device_fd: int
    transport: Transport
    pipeline: Pipeline
    device: Any = None  # the pytun device of an offload fabric (owns device_fd)


@dataclass
class Fabric:
    kind: str
    hosts: tuple[Host, Host]
    offload: bool = False
    udp_offloads: bool = False  # send with UDP GSO, receive with UDP GRO

    @property
    def port(self) -> int:
        return PORTS[self.kind]

    def address(self, i: int) -> str:
        return str(SUBNETS[i].network_address)

    @contextmanager
    def running(self, driver: str = "hot") -> Iterator[list[Any]]:
        """Both hosts forwarding through HotLoop ("hot") or the Python PyLoop ("plain").

        The drivers are stopped on leaving, so their counters and the pipelines' are final
        and comparable after the block (while they run, a batch can be counted by the
        pipeline's kernel and not yet by the loop's send)."""
        drivers: list[Any] = []
        for h in self.hosts:
            if driver == "hot":
                gso = self.udp_offloads
                drivers.append(HotLoop(h.pipeline, h.device_fd, h.transport.rx.fileno(),
                                       h.transport.tx.fileno(), self.port,
                                       offload=self.offload, gro=gso,
                                       gso_fds=h.transport.gso_sockets() if gso else ()))
            else:
                drivers.append(PyLoop(h.pipeline, h.device_fd, h.transport))
        for d in drivers:
            d.start()
        try:
            yield drivers
        finally:
            for d in drivers:
                d.stop()
            # a thread still running would make the counters read after this block race
            assert not any(t.is_alive() for d in drivers for t in d.threads)


def _open_offload_device(tap: bool) -> Any:
    device, mode = tundev.open_device("weft0", tap, offload=True)
    assert mode == tundev.OFFLOAD, mode.reason
    return device


def _build(kind: str, offload: bool = False,
           udp_offloads: bool = False) -> tuple[Fabric, Callable[[], None]]:
    tag = f"whl{os.getpid() % 100000}{kind[0]}{'o' if offload else ''}{'g' if udp_offloads else ''}"
    names = (f"{tag}a", f"{tag}b")
    hosts: list[Host] = []

    def cleanup() -> None:
        for h in hosts:
            h.transport.close()
            if h.device is not None:
                h.device.close()
            else:
                os.close(h.device_fd)
        for ns in names:
            netns.remove(ns)

    try:
        for ns in names:
            netns.create(ns)
        with IPRoute(netns=names[0]) as ipr:
            ipr.link("add", ifname="eth0", kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": names[1]})
        for i, ns in enumerate(names):
            with IPRoute(netns=ns) as ipr:
                eth0 = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr("add", index=eth0, address=PUBLIC[i], prefixlen=24)
                ipr.link("set", index=eth0, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            netns.call_in(ns, netns.disable_tx_offloads, "eth0")
            if udp_offloads:
                netns.call_in(ns, _enable_gro, "eth0")
            device = None
            if offload:
                device = _in_ns(ns, lambda: _open_offload_device(kind == "vxlan"))
                fd = device.fileno()
            else:
                fd = _in_ns(ns, lambda: _open_device(kind == "vxlan"))
            transport = _in_ns(ns, lambda: Transport(kind, PORTS[kind]))
            if udp_offloads:  # the pool's sockets must live in the host's namespace
                _in_ns(ns, transport.gso_sockets)
            pipeline = Pipeline(kind, NETWORK, 24, port=PORTS[kind])
            pipeline.set_local(SUBNETS[i], IPv4Address(PUBLIC[i]),
                               MACS[i] if kind == "vxlan" else None)
            other = 1 - i
            pipeline.table.set_peer(SUBNETS[other], IPv4Address(PUBLIC[other]),
                                    MACS[other] if kind == "vxlan" else None)
            hosts.append(Host(ns, fd, transport, pipeline, device))
            with IPRoute(netns=ns) as ipr:
                weft0 = ipr.link_lookup(ifname="weft0")[0]
                if kind == "vxlan":
                    ipr.link("set", index=weft0, address=MACS[i].hex(":"))
                ipr.link("set", index=weft0, mtu=1450, state="up")
                ipr.addr("add", index=weft0, address=str(SUBNETS[i].network_address),
                         prefixlen=32)
                # No neighbour entries for vxlan: ARP for the peer goes through the slow path.
                ipr.route("replace", dst=str(NETWORK), oif=weft0)
            netns.sysctl(ns, "net.ipv4.conf.weft0.accept_local", 1)
    except BaseException:
        cleanup()
        raise
    return Fabric(kind, (hosts[0], hosts[1]), offload, udp_offloads), cleanup


@pytest.fixture(params=[("udp", False), ("vxlan", False), ("udp", True), ("vxlan", True)],
                ids=["udp", "vxlan", "udp-offload", "vxlan-offload"])
def fabric(request) -> Iterator[Fabric]:
    fab, cleanup = _build(*request.param)
    yield fab
    cleanup()


@pytest.fixture(params=["udp", "vxlan"])
def offload_fabric(request) -> Iterator[Fabric]:
    """Offload devices, and UDP GSO / GRO on the sockets, as the daemon runs offload mode."""
    fab, cleanup = _build(request.param, offload=True, udp_offloads=True)
    yield fab
    cleanup()


@pytest.fixture
def udp_fabric() -> Iterator[Fabric]:
    fab, cleanup = _build("udp")
    yield fab
    cleanup()


# ---- tests --------------------------------------------------------------------------------


def test_ping_crosses_both_loops_and_counters_add_up(fabric: Fabric) -> None:
    a, b = fabric.hosts
    with fabric.running() as (loop_a, loop_b):
        probe.wait_reachable(a.ns, fabric.address(1), timeout=10)
        rtts = probe.ping(a.ns, fabric.address(1), count=20)
        assert all(r is not None for r in rtts)
    # read after the loops stopped: only then are both sides' counts final
    stats_a, stats_b = loop_a.stats(), loop_b.stats()
    errors = loop_a.errors
    assert errors["send"] == 0 and errors["write"] == 0
    for p, stats in ((a.pipeline, stats_a), (b.pipeline, stats_b)):
        summary = p.counter_summary()
        assert summary["egress"]["forwarded"] >= 20
        assert summary["ingress"]["forwarded"] >= 20
        # every received packet reached the kernel, every FORWARD one left
        assert stats["egress"]["sent"] == summary["egress"]["forwarded"]
        assert stats["ingress"]["sent"] == summary["ingress"]["forwarded"]
        assert stats["ingress"]["packets"] == summary["ingress"]["packets"]
    if fabric.kind == "vxlan":  # the kernel asked for the peer's MAC; the slow path answered
        assert a.pipeline.slow_counts[int(Reason.ARP_REPLIED)] >= 1


@pytest.mark.parametrize("offload", [False, True], ids=["plain-device", "offload-device"])
def test_slow_packet_gets_its_icmp_answer(offload: bool) -> None:
    """In offload mode the answer only arrives if it was written behind a virtio_net_hdr."""
    fab, cleanup = _build("udp", offload)
    try:
        a = fab.hosts[0]
        with fab.running():
            (result,) = probe.ping_detail(a.ns, UNLEASED, count=1, timeout=2)
        assert result.icmp_type == probe.ICMP_UNREACH and result.icmp_code == 0  # net unreach
        assert a.pipeline.slow_counts[int(Reason.ICMP_ERROR_SENT)] == 1
        # (IPv6 router solicitations from the new device are SLOW too, hence >=)
        assert a.pipeline.counter_summary()["egress"]["slow"] >= 1
    finally:
        cleanup()


def test_drops_are_counted_once_in_pipeline_drops(udp_fabric: Fabric) -> None:
    """A datagram from a sender that holds no lease is dropped by ingress and counted there."""
    a, b = udp_fabric.hosts
    inner = _ipv4_packet("10.1.1.5", "10.1.2.5")

    def send_from_a() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("192.168.77.1", 0))
            for _ in range(3):
                s.sendto(inner, (PUBLIC[1], udp_fabric.port))

    with udp_fabric.running():
        # B forgets A's lease, so A's datagrams come from an unknown sender.
        b.pipeline.table.remove_peer(SUBNETS[0])
        _in_ns(a.ns, send_from_a)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and b.pipeline.drops[INGRESS].sum() < 3:
            time.sleep(0.01)
    assert b.pipeline.drops[INGRESS][int(Reason.UNKNOWN_SENDER)] == 3
    assert b.pipeline.counter_summary()["drops"]["unknown_sender"] == 3
    assert b.pipeline.drops[EGRESS].sum() == 0


def test_stop_ends_both_loops_quickly(udp_fabric: Fabric) -> None:
    with udp_fabric.running() as loops:
        time.sleep(0.3)  # both loops are parked in poll()
        t0 = time.perf_counter()
        for loop in loops:
            loop.stop()
        elapsed = time.perf_counter() - t0
        assert not any(t.is_alive() for loop in loops for t in loop.threads)
    assert elapsed < 0.5  # two loops, each within one 100 ms poll timeout


def test_observer_sees_batches_then_detaches(udp_fabric: Fabric) -> None:
    a, _ = udp_fabric.hosts
    seen: list[tuple[str, int, int]] = []
    with udp_fabric.running() as (loop_a, _):
        loop_a.observer = lambda d, batch, n: seen.append((d, n, int(batch.verdict[0])))
        assert probe.ping(a.ns, udp_fabric.address(1), count=3, timeout=2)[-1] is not None
        loop_a.observer = None
        before = len(seen)
        probe.ping(a.ns, udp_fabric.address(1), count=3, timeout=2)
    assert {d for d, _, _ in seen} == {"egress", "ingress"}
    assert all(v == int(Verdict.FORWARD) for _, _, v in seen)
    assert len(seen) == before


# ---- offload mode ---------------------------------------------------------------------------


def test_offload_tcp_arrives_intact_in_super_frames(offload_fabric: Fabric) -> None:
    """Several MB each way, every byte checked; TSO frames were split and segments merged."""
    fab = offload_fabric
    a, b = fab.hosts
    with fab.running() as (loop_a, loop_b):
        probe.wait_reachable(a.ns, fab.address(1), timeout=10)
        there = probe.tcp_transfer(a.ns, b.ns, fab.address(1), nbytes=8 * 2**20, timeout=60)
        back = probe.tcp_transfer(b.ns, a.ns, fab.address(0), nbytes=8 * 2**20, timeout=60)
    # Read after the loops stopped. Read while they ran (as this test once did), a TCP segment
    # the kernel sent after the transfer (a last ACK) could be counted by the pipeline and not
    # yet by the loop's send: "sent 6113 == forwarded 6114". Stopped, both counts are final.
    stats_a, stats_b = loop_a.stats(), loop_b.stats()
    drops = {**loop_a.drops(), **loop_b.drops()}
    errors = (loop_a.errors, loop_b.errors)
    offloads = (loop_a.offloads(), loop_b.offloads())
    assert there["received"] == 8 * 2**20 and there["sha256_match"], there
    assert back["received"] == 8 * 2**20 and back["sha256_match"], back
    assert drops == {}
    assert all(e["send"] == 0 and e["write"] == 0 for e in errors), errors
    for stats, p in ((stats_a, a.pipeline), (stats_b, b.pipeline)):
        summary = p.counter_summary()
        # More packets than device reads: the kernel handed over TSO super-frames.
        assert stats["egress"]["packets"] > stats["egress"]["device_io"]
        # More packets than device writes: coalesce merged segments into super-frames.
        assert stats["ingress"]["sent"] > stats["ingress"]["device_io"]
        assert stats["egress"]["sent"] == summary["egress"]["forwarded"]
        assert stats["ingress"]["sent"] == summary["ingress"]["forwarded"]
        # UDP GSO: one sendmmsg message carried many datagrams (sent counts datagrams) ...
        assert stats["egress"]["messages"] * 4 < stats["egress"]["sent"], stats
        # ... and UDP GRO: one received message held many (packets counts datagrams).
        assert stats["ingress"]["messages"] * 4 < stats["ingress"]["packets"], stats
    # (this fabric gives the loops no TX TAP: tunnel GSO is the daemon's, see test_multihost)
    assert offloads == ({"gso": "on", "gro": "on", "tunnel_gso": "off"},) * 2


def test_offload_observer_sees_ordinary_packets(offload_fabric: Fabric) -> None:
    """The trace hook sees MTU-sized rows: after split_super on egress, before coalesce."""
    fab = offload_fabric
    a, b = fab.hosts
    largest = {"egress": 0, "ingress": 0}
    l2 = 14 if fab.kind == "vxlan" else 0

    def observe(direction: str, batch: Batch, n: int) -> None:
        forward = batch.verdict[:n] == int(Verdict.FORWARD)
        if forward.any():
            size = batch.lens[:n] if direction == "egress" else batch.out_len[:n]
            largest[direction] = max(largest[direction], int(size[forward].max()))

    with fab.running() as (loop_a, loop_b):
        probe.wait_reachable(a.ns, fab.address(1), timeout=10)
        loop_a.observer = observe
        loop_b.observer = observe
        result = probe.tcp_transfer(a.ns, b.ns, fab.address(1), nbytes=2 * 2**20, timeout=60)
        loop_a.observer = loop_b.observer = None
        reads = loop_a.stats()["egress"]
    assert result["sha256_match"]
    assert reads["packets"] > reads["device_io"]  # super-frames were read ...
    assert 1000 < largest["egress"] <= 1450 + l2  # ... and observed as MTU-sized packets
    assert 0 < largest["ingress"] <= 1450 + l2


def _ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 8) -> bytes:
    total = 20 + 8 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    csum = probe.checksum(hdr)
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0)
    return hdr + udp + payload


def _rtts(fab: Fabric, count: int = 50) -> dict[str, float]:
    """Median ping RTT in microseconds through each driver."""
    out = {}
    for driver in ("plain", "hot"):
        with fab.running(driver):
            probe.wait_reachable(fab.hosts[0].ns, fab.address(1), timeout=10)
            probe.ping(fab.hosts[0].ns, fab.address(1), count=10)  # warm caches and ARP
            rtts = probe.ping(fab.hosts[0].ns, fab.address(1), count=count)
        good = [r for r in rtts if r is not None]
        assert len(good) == count, f"{driver}: {count - len(good)} pings lost"
        out[driver] = statistics.median(good) * 1e6
    return out


def _pps(fab: Fabric, driver: str, size: int = 64, seconds: float = 2.0) -> dict:
    with fab.running(driver) as drivers:
        probe.wait_reachable(fab.hosts[0].ns, fab.address(1), timeout=10)
        result = probe.udp_flood(fab.hosts[0].ns, fab.hosts[1].ns, fab.address(1), size=size,
                                 seconds=seconds)
        if driver == "hot":
            result["loop_a"] = drivers[0].stats()
            result["loop_b"] = drivers[1].stats()
    return result


def main() -> None:
    for kind in ("udp", "vxlan"):
        fab, cleanup = _build(kind)
        try:
            rtt = _rtts(fab)
            print(f"{kind}: median RTT of 50 pings: plain {rtt['plain']:.0f} us, "
                  f"hot {rtt['hot']:.0f} us")
            for driver in ("plain", "hot"):
                r = _pps(fab, driver)
                print(f"{kind} {driver}: 64-byte UDP sent {r['sent'] / 2:.0f}/s, "
                      f"received {r['pps']:.0f}/s, loss {r['loss']:.1%}")
                if driver == "hot":
                    for side in ("loop_a", "loop_b"):
                        print(f"    {side}: {r[side]}")
        finally:
            cleanup()
    print("counters slot check:", N_SLOTS, loop_syscalls.ST_SIZE)


if __name__ == "__main__":
    main()
