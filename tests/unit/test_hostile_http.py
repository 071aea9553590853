"""/healthz under hostile clients: malformed requests, huge heads, bad methods, floods, slowloris.

Every abuse is answered with a clear status (400, 405, 431, 503) or cut off at a deadline, is
counted, and /healthz keeps answering a well-behaved prober while it goes on.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time

import pytest
from polling import wait_for

from weft.observe import http_guard
from weft.observe.http import HealthServer


@pytest.fixture
def server():
    srv = HealthServer("127.0.0.1", 0, lambda: {"ready": True})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(http_guard, "REQUEST_TIMEOUT", 1.0)


def healthz(srv: HealthServer) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    finally:
        conn.close()


def raw(srv: HealthServer, payload: bytes) -> bytes:
    """Send `payload`, return what the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=3) as s:
        try:
            s.sendall(payload)
        except OSError:  # the server answered and closed before taking it all
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize("payload", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"GET / HTTP/x.y\r\n\r\n",
    b"GET /healthz HTTP/2.0\r\n\r\n",
    b"GET /healthz HTTP/1.100000000000000000000\r\n\r\n",
], ids=range(6))
def test_malformed_requests_get_a_4xx_and_server_goes_on(server, payload):
    reply = raw(server, payload)
    assert reply.startswith(b"HTTP/"), reply[:100]
    assert 400 <= status_of(reply) < 600
    assert healthz(server) == 200


def test_huge_header_is_431(server):
    reply = raw(server, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert status_of(reply) == 431
    assert healthz(server) == 200


def test_many_headers_over_the_head_budget_are_431(server):
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 1000) for i in range(90))
    reply = raw(server, b"GET /healthz HTTP/1.1\r\n" + headers + b"\r\n")
    assert status_of(reply) == 431
    assert server.stats()["too_large"] == 1


def test_huge_request_line_is_refused(server):
    reply = raw(server, b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")
    assert status_of(reply) in (414, 431)
    assert healthz(server) == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_are_405_with_allow(server, method):
    reply = raw(server, f"{method} /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode())
    assert status_of(reply) == 405
    assert b"Allow: GET, HEAD" in reply
    assert server.stats()["bad_method"] == 1


def test_slowloris_partial_headers_are_cut_and_do_not_starve_healthz(server, short_deadline):
    def request_threads() -> int:  # the server's, not threads other tests left running
        return sum("process_request_thread" in t.name for t in threading.enumerate())

    baseline = request_threads()
    slow = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        slow.append(s)
    assert healthz(server) == 200  # newest connection; the oldest slow ones were evicted
    assert request_threads() <= baseline + http_guard.MAX_CONNECTIONS + 1
    assert wait_for(lambda: server.stats()["open"] == 0)
    stats = server.stats()
    assert stats["evicted"] + stats["timed_out"] >= 300
    for s in slow:
        s.close()
    assert healthz(server) == 200


def test_drip_fed_request_is_cut_at_the_deadline(server, short_deadline):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
            try:
                s.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if time.monotonic() - started > 3:
                break
        if not closed:
            closed = s.recv(100) == b""
    assert closed and server.stats()["timed_out"] == 1


def test_connection_flood_keeps_healthz_answerable(server):
    answered = []

    def prober():
        time.sleep(0.2)  # amid the flood
        answered.append(healthz(server))

    thread = threading.Thread(target=prober)
    thread.start()
    flood = []
    for _ in range(1000):
        flood.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    thread.join(10)
    assert answered == [200]
    assert wait_for(lambda: server.stats()["accepted"] == 1001)
    stats = server.stats()
    assert stats["open"] <= http_guard.MAX_CONNECTIONS
    assert stats["evicted"] >= 1001 - http_guard.MAX_CONNECTIONS - 1
    for s in flood:
        s.close()
    assert healthz(server) == 200
