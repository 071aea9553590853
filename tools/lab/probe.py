"""Traffic probes run from inside lab namespaces: ICMP echo, a TCP bulk transfer, a UDP flood.

There are no ping/iperf3 binaries here; each probe runs in a forked child that has entered the
namespace (weft.tools.lab.netns), and returns plain data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from weft.packet.checksum import inet_checksum as checksum  # test_hotloop uses probe.checksum
from weft.tools.lab import netns

ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED, ICMP_PARAM = 0, 3, 8, 11, 12
_ICMP_ERRORS = (ICMP_UNREACH, ICMP_TIME_EXCEEDED, ICMP_PARAM)


@dataclass(frozen=True)
class Probe:
    """One echo request's fate: a reply (rtt), an ICMP error, a local send error, or silence."""

    seq: int
    rtt: float | None = None  # seconds, set when an echo reply came back
    sender: str | None = None  # source address of the reply or ICMP error
    icmp_type: int | None = None  # 0 for a reply, 3/11/12 for errors
    icmp_code: int | None = None
    local_error: str | None = None  # errno name when sendto itself failed, e.g. ENETUNREACH

    @property
    def ok(self) -> bool:
        return self.rtt is not None

    @property
    def error(self) -> tuple[int, int] | None:
        """(type, code) of an ICMP error, e.g. (3, 0) for net unreachable."""
        if self.icmp_type in _ICMP_ERRORS:
            return (self.icmp_type, self.icmp_code or 0)
        return None


def _echo(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(head + payload), ident, seq) + payload


def _classify(data: bytes, dst: str, ident: int, seq: int) -> tuple[int, int] | None:
    """(type, code) if `data` (an IPv4 packet) answers our echo (ident, seq), else None."""
    ihl = (data[0] & 0x0F) * 4
    icmp = data[ihl:]
    if len(icmp) < 8:
        return None
    kind, code = icmp[0], icmp[1]
    if kind == ICMP_ECHO_REPLY:
        if struct.unpack("!HH", icmp[4:8]) == (ident, seq):
            return kind, code
        return None
    if kind in _ICMP_ERRORS:
        # The error quotes our IP header and the first 8 bytes of our echo request.
        inner = icmp[8:]
        if len(inner) < 20:
            return None
        inner_ihl = (inner[0] & 0x0F) * 4
        quoted = inner[inner_ihl:inner_ihl + 8]
        if (inner[9] == socket.IPPROTO_ICMP and socket.inet_ntoa(inner[16:20]) == dst
                and len(quoted) == 8 and quoted[0] == ICMP_ECHO
                and struct.unpack("!HH", quoted[4:8]) == (ident, seq)):
            return kind, code
    return None


def _ping(dst: str, count: int, timeout: float, size: int, interval: float) -> list[Probe]:
    # Raw ICMP sockets get a copy of every ICMP packet the namespace receives, so match id/seq.
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = int.from_bytes(os.urandom(2), "big")
    payload = bytes(i & 0xFF for i in range(size))
    out = []
    for seq in range(1, count + 1):
        if seq > 1 and interval:
            time.sleep(interval)
        t0 = time.perf_counter()
        try:
            sock.sendto(_echo(ident, seq, payload), (dst, 0))
        except OSError as exc:
            out.append(Probe(seq, local_error=errno.errorcode.get(exc.errno or 0, str(exc))))
            continue
        out.append(_await_answer(sock, dst, ident, seq, t0, timeout))
    sock.close()
    return out


def _await_answer(sock: socket.socket, dst: str, ident: int, seq: int, t0: float,
                  timeout: float) -> Probe:
    deadline = t0 + timeout
    while (left := deadline - time.perf_counter()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, (sender, _) = sock.recvfrom(65535)
        now = time.perf_counter()
        hit = _classify(data, dst, ident, seq)
        if hit is None:
            continue
        rtt = now - t0 if hit[0] == ICMP_ECHO_REPLY else None
        return Probe(seq, rtt=rtt, sender=sender, icmp_type=hit[0], icmp_code=hit[1])
    return Probe(seq)


def ping_detail(ns: str, dst: str, count: int = 3, timeout: float = 1.0, size: int = 56,
                interval: float = 0.0) -> list[Probe]:
    """Send `count` echo requests of `size` payload bytes from `ns`, one at a time."""
    return netns.call_in(ns, _ping, str(dst), count, timeout, size, interval,
                         timeout=count * (timeout + interval) + 10)


def ping(ns: str, dst: str, count: int = 3, timeout: float = 1.0, size: int = 56) -> list[
        float | None]:
    """RTTs in seconds, None for each probe that got no echo reply."""
    return [p.rtt for p in ping_detail(ns, dst, count, timeout, size)]


def _wait_reachable(dst: str, timeout: float, step: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if _ping(dst, 1, step, 56, 0.0)[0].ok:
            return time.perf_counter() - start
        time.sleep(0.02)
    raise TimeoutError(f"{dst} not reachable within {timeout}s")


def wait_reachable(ns: str, dst: str, timeout: float = 10.0, step: float = 0.2) -> float:
    """Ping until the first reply; returns seconds waited, TimeoutError when none comes."""
    return netns.call_in(ns, _wait_reachable, str(dst), timeout, step, timeout=timeout + 10)


# -- ICMPv6 echo ----------------------------------------------------------------------------

ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 128, 129


def _ping6(dst: str, count: int, timeout: float) -> list[float | None]:
    # A raw ICMPv6 socket: the kernel computes the checksum (IPV6_CHECKSUM is on for it) and
    # hands us the ICMPv6 message without the IPv6 header.
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    ident = int.from_bytes(os.urandom(2), "big")
    out: list[float | None] = []
    for seq in range(1, count + 1):
        t0 = time.perf_counter()
        try:
            sock.sendto(struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + bytes(56),
                        (dst, 0))
        except OSError:
            out.append(None)
            continue
        rtt = None
        while (left := t0 + timeout - time.perf_counter()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data = sock.recv(65535)
            if len(data) >= 8 and data[0] == ICMP6_ECHO_REPLY \
                    and struct.unpack("!HH", data[4:8]) == (ident, seq):
                rtt = time.perf_counter() - t0
                break
        out.append(rtt)
    sock.close()
    return out


def ping6(ns: str, dst: str, count: int = 3, timeout: float = 1.0) -> list[float | None]:
    """ICMPv6 echo RTTs in seconds from `ns` (None for each probe without a reply)."""
    return netns.call_in(ns, _ping6, str(dst), count, timeout,
                         timeout=count * (timeout + 1) + 10)


# -- a steady ping: one echo every few ms until told to stop ----------------------------------

def _steady_ping(dst: str, interval: float, stop_file: str, linger: float,
                 limit: float) -> dict:
    """Send an echo every `interval` s until `stop_file` exists (or `limit` s), then wait
    `linger` s for late replies. Replies are matched by sequence number, so a reply late by
    seconds (queued during a hand-over) still counts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    ident = int.from_bytes(os.urandom(2), "big")
    payload = bytes(56)
    sent_at: dict[int, float] = {}
    rtts: dict[int, float] = {}
    errors = 0
    start = time.perf_counter()
    next_send, seq, stop_at = start, 0, start + limit
    while True:
        now = time.perf_counter()
        if now >= next_send and now < stop_at:
            if os.path.exists(stop_file):
                stop_at = now
            else:
                seq = (seq + 1) & 0xFFFF
                try:
                    sock.sendto(_echo(ident, seq, payload), (dst, 0))
                    sent_at[seq] = now
                except OSError:
                    errors += 1
                next_send += interval
        if now >= stop_at + linger or (now >= stop_at and len(rtts) == len(sent_at)):
            break
        wait = max(0.0, min(next_send, stop_at + linger) - now)
        if select.select([sock], [], [], wait)[0]:
            data = sock.recv(65535)
            got = _reply_seq(data, ident)
            if got is not None and got in sent_at and got not in rtts:
                rtts[got] = time.perf_counter() - sent_at[got]
    sock.close()
    lost = sorted(set(sent_at) - set(rtts))
    return {"sent": len(sent_at), "received": len(rtts), "send_errors": errors,
            "lost": lost[:50], "max_rtt": max(rtts.values(), default=None),
            "seconds": time.perf_counter() - start}


def _reply_seq(data: bytes, ident: int) -> int | None:
    icmp = data[(data[0] & 0x0F) * 4:]
    if len(icmp) >= 8 and icmp[0] == ICMP_ECHO_REPLY:
        their_ident, seq = struct.unpack("!HH", icmp[4:8])
        if their_ident == ident:
            return seq
    return None


class SteadyPing:
    """An echo from `ns` to `dst` every `interval` s (5 ms: a pod's view of a hand-over) until
    stop(), which returns {sent, received, lost, max_rtt, ...}."""

    def __init__(self, ns: str, dst: str, interval: float = 0.005, limit: float = 600.0,
                 linger: float = 3.0) -> None:
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="weft-ping-")
        self._stop = os.path.join(self._dir, "stop")
        self._call = netns.spawn_in(ns, _steady_ping, str(dst), interval, self._stop, linger,
                                    limit)
        self._timeout = limit + linger + 10

    def stop(self) -> dict:
        with open(self._stop, "w"):
            pass
        try:
            return self._call.result(timeout=self._timeout)
        finally:
            self._call.kill()
            os.unlink(self._stop)
            os.rmdir(self._dir)


# -- TCP bulk transfer ----------------------------------------------------------------------

_REPORT = struct.Struct("!Q32s")


def _family(ip: str) -> int:
    """The socket family of an address (the TCP probe carries IPv6 too)."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def listening_socket(ip: str, port: int, timeout: float, backlog: int = 1) -> socket.socket:
    """A TCP socket listening on ip:port whose accept() gives up after `timeout` seconds."""
    lsock = socket.socket(_family(ip), socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ip, port))
    lsock.listen(backlog)
    lsock.settimeout(timeout)
    return lsock


def _tcp_server(ip: str, port: int, timeout: float) -> dict:
    lsock = listening_socket(ip, port, timeout)
    conn, _ = lsock.accept()
    conn.settimeout(timeout)
    digest, received = hashlib.sha256(), 0
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    while n := conn.recv_into(buf):
        digest.update(view[:n])
        received += n
    conn.sendall(_REPORT.pack(received, digest.digest()))
    conn.close()
    lsock.close()
    return {"received": received}


def _connect(ip: str, port: int, kind: int, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(_family(ip), kind)
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            return sock
        except (ConnectionRefusedError, ConnectionResetError):
            # The server child may not be listening yet.
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _tcp_client(ip: str, port: int, nbytes: int, timeout: float) -> dict:
    data = os.urandom(nbytes)
    sock = _connect(ip, port, socket.SOCK_STREAM, timeout)
    t0 = time.perf_counter()
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    report = b""
    while len(report) < _REPORT.size and (chunk := sock.recv(_REPORT.size - len(report))):
        report += chunk
    seconds = time.perf_counter() - t0
    sock.close()
    received, theirs = _REPORT.unpack(report) if len(report) == _REPORT.size else (0, b"")
    return {"sent": nbytes, "received": received, "seconds": seconds,
            "sha256_match": theirs == hashlib.sha256(data).digest()}


def tcp_transfer(src_ns: str, dst_ns: str, dst_ip: str, nbytes: int = 10 * 2**20,
                 port: int = 5201, timeout: float = 30.0) -> dict:
    """Send nbytes of random data src_ns -> dst_ip:port (a server in dst_ns) over one TCP stream.

    Returns {sent, received, sha256_match, seconds, gbit_s}; seconds run from the first byte
    sent to the server's report (so they include one round trip).
    """
    server = netns.spawn_in(dst_ns, _tcp_server, str(dst_ip), port, timeout)
    try:
        result = netns.call_in(src_ns, _tcp_client, str(dst_ip), port, nbytes, timeout,
                               timeout=timeout + 10)
        server.result(timeout=timeout)
    finally:
        server.kill()
    result["gbit_s"] = result["received"] * 8 / result["seconds"] / 1e9
    return result


# -- UDP flood ------------------------------------------------------------------------------

_HELLO, _READY = b"weft-hello", b"weft-ready"


def _udp_sink(ip: str, port: int, idle: float, timeout: float) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((ip, port))
    deadline = time.monotonic() + timeout
    received = nbytes = 0
    started = False
    while time.monotonic() < deadline:
        wait = idle if started else deadline - time.monotonic()
        if not select.select([sock], [], [], max(0.0, wait))[0]:
            if started:
                break
            continue
        data, peer = sock.recvfrom(65535)
        if data == _HELLO:
            sock.sendto(_READY, peer)
            continue
        started = True
        received += 1
        nbytes += len(data)
    sock.close()
    return {"received": received, "bytes": nbytes}


def _udp_source(ip: str, port: int, size: int, seconds: float, timeout: float) -> dict:
    sock = _connect(ip, port, socket.SOCK_DGRAM, timeout)
    sock.settimeout(0.05)
    deadline = time.monotonic() + timeout
    while True:  # handshake so that no datagram is sent before the sink listens
        try:
            sock.send(_HELLO)
            if sock.recv(64) == _READY:
                break
        except (TimeoutError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
    sock.settimeout(None)
    payload = os.urandom(size)
    sent = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for _ in range(64):
            try:
                sock.send(payload)
                sent += 1
            except OSError:  # a full buffer or a refused send only costs that datagram
                pass
    elapsed = time.perf_counter() - t0
    sock.close()
    return {"sent": sent, "seconds": elapsed}


def udp_flood(src_ns: str, dst_ns: str, dst_ip: str, size: int = 1400, seconds: float = 1.0,
              port: int = 5202, timeout: float = 10.0) -> dict:
    """Blast size-byte datagrams for `seconds`; returns {sent, received, loss, pps, gbit_s}.

    pps and gbit_s count what arrived, over the sending time.
    """
    sink = netns.spawn_in(dst_ns, _udp_sink, str(dst_ip), port, 0.5, timeout + seconds)
    try:
        src = netns.call_in(src_ns, _udp_source, str(dst_ip), port, size, seconds, timeout,
                            timeout=timeout + seconds + 10)
        dst = sink.result(timeout=timeout + seconds + 5)
    finally:
        sink.kill()
    sent, received = src["sent"], dst["received"]
    return {"sent": sent, "received": received,
            "loss": 1 - received / sent if sent else 0.0,
            "pps": received / src["seconds"], "gbit_s": dst["bytes"] * 8 / src["seconds"] / 1e9}
