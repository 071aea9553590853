"""The Python driver (PyLoop) and the sockets every driver uses (Transport).

PyLoop moves packets device <-> pipeline <-> sockets, in batches, on two threads: egress reads
a batch from the TUN/TAP (first read waits, the rest drain without blocking), runs the pipeline
and sends each FORWARD packet to its peer; ingress receives a batch of datagrams, runs the
pipeline and writes each FORWARD frame into the device. SLOW packets go to the slow path, whose
answers are written back into the device. Nothing here inspects packets."""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from weft.drivers.driver import Observer
from weft.packet.batch import HEADROOM, Batch
from weft.packet.encap import Encap, as_encap
from weft.packet.pipeline import Pipeline
from weft.packet.reasons import Verdict

log = logging.getLogger(__name__)

BATCH = 64
_IP_MTU_DISCOVER = 10  # <linux/in.h>; Python's socket module does not export these two
_IP_PMTUDISC_DONT = 0
GSO_POOL = 8  # vxlan: UDP sockets (source ports) the flows are spread over when sending with GSO
POLL_SECONDS = 0.25  # a safety net only: stop() wakes the threads through a pipe


@dataclass(frozen=True)
class _Family:
    """How one underlay family's addresses go between sockets and a Batch's rows: the IPv4
    rows hold them as host-order u32 (src_ip, dst_ip), the IPv6 rows as 16 bytes (src_ip6,
    dst_ip6). Looked up once by the row's `outer` (weft.packet.encap)."""

    af: int
    any_address: str
    v6only: bool  # an IPv6 socket beside the IPv4 one on the same port
    dst_field: str  # the Batch array an egress kernel names the peer in
    src_field: str  # the Batch array an ingress kernel reads the sender from
    peer: Callable[[object], str]  # a row's peer -> the address sendto takes
    sender: Callable[[str], object]  # recvfrom's address -> a row's sender


def _v6_sender(host: str) -> np.ndarray:
    return np.frombuffer(socket.inet_pton(socket.AF_INET6, host.split("%")[0]), dtype=np.uint8)


FAMILIES = {
    "ipv4": _Family(socket.AF_INET, "0.0.0.0", False, "dst_ip", "src_ip",
                    lambda ip: socket.inet_ntoa(struct.pack("!I", int(ip))),
                    lambda host: struct.unpack("!I", socket.inet_aton(host))[0]),
    "ipv6": _Family(socket.AF_INET6, "::", True, "dst_ip6", "src_ip6",
                    lambda ip: socket.inet_ntop(socket.AF_INET6, bytes(ip)), _v6_sender),
}

RECEIVE_BUFFER = 4 << 20  # bytes of datagrams the kernel keeps while we do not read
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it


class Transport:
    """How encapsulated packets leave and arrive (a small conn.Bind).

    vxlan: the pipeline writes complete outer IPv4+UDP+VXLAN headers (the checksum-0 UDP and the
    flow-hashed source port of the kernel's VXLAN), so they go out on a raw IP socket; they arrive
    on a UDP socket bound to the VXLAN port. udp: flannel's format is the bare inner packet as a
    datagram from port to port, so one UDP socket does both.

    UDP GSO (UDP_SEGMENT) needs a UDP socket: a raw socket sends what it is given. So for vxlan
    gso_sockets() opens a small pool of UDP sockets on ephemeral ports, and the hot loop hands
    each one the VXLAN header + inner frame; the kernel writes outer IPv4/UDP itself. What the
    wire then shows differs from the raw path in two ways: the source port is the pool socket's
    port (the loop picks the socket by the flow hash, so a flow keeps one port and flows still
    spread over GSO_POOL ports, not over 32768-60999), and the outer UDP checksum is filled in
    (UDP GSO refuses SO_NO_CHECK; RFC 7348 allows a non-zero checksum and receivers, the
    kernel's VXLAN included, verify it). DF stays clear and TTL 64, as on the raw path.
    """

    def __init__(self, kind: Encap | str, port: int, rx: socket.socket | None = None) -> None:
        """rx: the bound socket of the previous `weft run` (weft.dev.handover), whose receive
        queue holds what peers sent during the hand-over; else a new one is bound."""
        self.encap = as_encap(kind)  # looked up once; the sockets follow its row
        self.family = FAMILIES[self.encap.outer]
        self.port = port
        if rx is None:
            rx = socket.socket(self.family.af, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family.v6only:  # the IPv4 device's socket holds the port for IPv4
                rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:  # past net.core.rmem_max (CAP_NET_ADMIN): it holds a hand-over's arrivals
                rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            rx.bind((self.family.any_address, port))
        self.rx = rx
        self.rx.setblocking(False)
        if self.encap.builds_outer:  # the datagram leaves with the outer IPv4 + UDP it has
            self.tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        else:
            self.tx = self.rx
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.pool: list[socket.socket] = []

    def gso_sockets(self, size: int = GSO_POOL) -> list[int]:
        """fds of UDP sockets that may send with UDP_SEGMENT to peers' port (opened once).

        udp: the bound socket itself, since flannel sends from port to port. vxlan: the pool
        (see the class docstring). Call it in the network namespace the sockets belong in.
        """
        if not self.encap.builds_outer:
            return [self.tx.fileno()]
        while len(self.pool) < size:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            # The raw path's header has DF clear; without this the kernel would set DF.
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 64)
            sock.bind(("0.0.0.0", 0))
            sock.setblocking(False)
            self.pool.append(sock)
        return [sock.fileno() for sock in self.pool]

    def send(self, data, dst_ip) -> None:
        """dst_ip: the peer as the row's family holds it (IPv4: host-order int; IPv6: 16
        bytes)."""
        dst = self.family.peer(dst_ip)
        self.tx.sendto(data, (dst, 0 if self.encap.builds_outer else self.port))

    def close(self) -> None:
        self.rx.close()
        if self.tx is not self.rx:
            self.tx.close()
        for sock in self.pool:
            sock.close()


class PyLoop:
    """The Python driver (a weft.drivers.driver.Driver): select + readv/sendto, recvfrom + write.

    Slower than the compiled loop by far, but needs nothing numba or libc might refuse.
    """

    batch = BATCH

    def __init__(self, pipeline: Pipeline, device_fd: int, transport: Transport,
                 observer: Observer | None = None) -> None:
        self.pipeline = pipeline
        self.fd = device_fd
        self.transport = transport
        # Trace hook, observer(direction, batch, n) after each batch. A settable attribute:
        # weft.observe.tracehub sets it while someone traces and sets None again after, so with
        # nobody tracing the cost is this one check per batch.
        self.observer = observer
        self.stopping = threading.Event()
        # stop() writes here; both threads select() on it beside their fd, so they end at
        # once rather than at the next POLL_SECONDS.
        self._wake_r, self._wake_w = os.pipe()
        self.errors = {"send": 0, "write": 0}
        self.crashed: dict[str, str] = {}  # thread name -> the exception that killed it
        os.set_blocking(device_fd, False)
        self.threads = [
            threading.Thread(target=self._guard, args=(self._egress_loop,), name="weft-egress",
                             daemon=True),
            threading.Thread(target=self._guard, args=(self._ingress_loop,), name="weft-ingress",
                             daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        os.write(self._wake_w, b"x")
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=2)
        if not any(thread.is_alive() for thread in self.threads):  # else it still selects
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _readable(self, fd) -> bool:
        """Wait until fd has input (True) or stop() was called (False)."""
        ready = select.select([fd, self._wake_r], [], [], POLL_SECONDS)[0]
        return bool(ready) and self._wake_r not in ready

    def stats(self) -> dict[str, dict[str, int]]:
        return {}  # the pipeline's counters are all this loop keeps

    def offloads(self) -> dict[str, str]:
        return {"gso": "off", "gro": "off"}

    def drops(self) -> dict[str, int]:
        return {}  # every packet read reaches the pipeline

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except Exception as exc:  # noqa: BLE001 - the thread's boundary: record, log, end
            # Uncaught, it would only reach threading.excepthook (stderr) and the loop would
            # stop silently; recorded, `weft status` errors and tests show it.
            name = threading.current_thread().name
            self.crashed[name] = repr(exc)
            self.errors[f"crashed_{name.removeprefix('weft-')}"] = 1
            log.exception("datapath thread %s died", name)

    # -- egress: device -> peers --------------------------------------------------------------
    def _egress_loop(self) -> None:
        batch = Batch(BATCH)
        rows = [batch.bufs[i, HEADROOM:] for i in range(BATCH)]
        while not self.stopping.is_set():
            if not self._readable(self.fd):
                continue
            n = 0
            while n < BATCH:
                try:
                    batch.lens[n] = os.readv(self.fd, [rows[n]])
                except BlockingIOError:
                    break
                n += 1
            if n:
                self.pipeline.egress(batch, n)
                self._deliver_egress(batch, n)

    def _deliver_egress(self, batch: Batch, n: int) -> None:
        verdict = batch.verdict
        peers = getattr(batch, self.transport.family.dst_field)
        for i in range(n):
            v = verdict[i]
            if v == Verdict.FORWARD:
                off = batch.out_off[i]
                try:
                    # as a Python value: an int (IPv4 row), a list of 16 ints (IPv6 row)
                    self.transport.send(batch.bufs[i, off:off + batch.out_len[i]],
                                        peers[i].tolist())
                except OSError as exc:
                    self.errors["send"] += 1
                    log.debug("send to %s failed: %s", peers[i], exc)
            elif v == Verdict.SLOW:
                packet = batch.bufs[i, HEADROOM:HEADROOM + batch.lens[i]].tobytes()
                for answer in self.pipeline.slow(packet, int(batch.reason[i])).writes:
                    self._write(answer)
        if self.observer is not None:
            self.observer("egress", batch, n)

    # -- ingress: peers -> device -------------------------------------------------------------
    def _ingress_loop(self) -> None:
        batch = Batch(BATCH)
        rows = [batch.bufs[i, HEADROOM:] for i in range(BATCH)]
        rx = self.transport.rx
        family = self.transport.family
        senders = getattr(batch, family.src_field)
        while not self.stopping.is_set():
            if not self._readable(rx):
                continue
            n = 0
            while n < BATCH:
                try:
                    size, addr = rx.recvfrom_into(rows[n])
                except BlockingIOError:
                    break
                batch.lens[n] = size
                senders[n] = family.sender(addr[0])
                n += 1
            if n:
                self.pipeline.ingress(batch, n)
                forward = np.flatnonzero(batch.verdict[:n] == Verdict.FORWARD)
                for i in forward:
                    off = batch.out_off[i]
                    self._write(batch.bufs[i, off:off + batch.out_len[i]])
                if self.observer is not None:
                    self.observer("ingress", batch, n)

    def _write(self, data) -> None:
        try:
            os.write(self.fd, data)
        except OSError as exc:
            self.errors["write"] += 1
            log.debug("device write failed: %s", exc)
