"""The control socket under hostile clients: garbage, huge lines, floods, idle and slow clients.

Each abuse runs while a well-behaved client asks for `status`, which must keep working, and the
server's threads and pending connections must stay bounded. The refusal of a non-root user is
tested in test_control.py.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
import time

import pytest
from polling import wait_for

from weft.observe import control_socket
from weft.observe.control_socket import ControlError, ControlServer, control_request


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "weft.sock")


@pytest.fixture
def server(sock_path):
    def endless(_args):
        while True:
            yield {"tick": "x" * 1000}

    srv = ControlServer(sock_path, {"status": lambda _args: {"ready": True}, "ticks": endless})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(control_socket, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(control_socket, "SEND_TIMEOUT", 1.0)


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)  # blocking: waits out a full listen backlog, as a timeout would not
    s.settimeout(10)
    return s


def read_all(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_ok(path: str) -> bool:
    return control_request(path, "status", io_timeout=5.0) == {"ready": True}


GARBAGE = [
    b"\x00\xff\xfe garbage \x80\n",
    b"\n",
    b"null\n",
    b'"status"\n',
    b'{"cmd": 7}\n',
    b'{"cmd": "status"' + b"]" * 1000 + b"\n",
    b"[" * 100_000 + b"\n",  # nesting deep enough to make a recursive parser give up
    "{\"cmd\": \"st\u00e4tus\"}\n".encode(),
    os.urandom(4096).replace(b"\n", b"") + b"\n",
]


@pytest.mark.parametrize("payload", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gets_one_error_line_and_server_goes_on(server, sock_path, payload):
    with connect(sock_path) as s:
        s.sendall(payload)
        lines = read_all(s).splitlines()
    assert len(lines) == 1 and "error" in json.loads(lines[0])
    assert status_ok(sock_path)


def test_ten_megabyte_line_is_cut_off_while_status_works(server, sock_path):
    outcome = {}

    def flood():
        with connect(sock_path) as s:
            try:
                s.sendall(b"x" * (10 << 20))
                outcome["read"] = read_all(s)
            except OSError as exc:  # the server closed on us mid-send: the expected end
                outcome["error"] = exc

    sender = threading.Thread(target=flood)
    sender.start()
    assert status_ok(sock_path)
    sender.join(20)
    assert not sender.is_alive()
    assert "error" in outcome or b"too long" in outcome["read"]
    assert server.stats()["too_long"] == 1
    assert status_ok(sock_path)


def test_thousand_concurrent_clients_each_get_one_answer(server, sock_path):
    baseline = threading.active_count()
    clients = []
    peak_threads = 0
    for _ in range(1000):
        s = connect(sock_path)
        s.sendall(b'{"cmd": "status"}\n')
        clients.append(s)
        peak_threads = max(peak_threads, threading.active_count())
    assert status_ok(sock_path)  # a well-behaved client amid the crowd
    answers = []
    with selectors.DefaultSelector() as sel:
        for s in clients:
            sel.register(s, selectors.EVENT_READ, b"")
        deadline = time.monotonic() + 30
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                try:
                    chunk = key.fileobj.recv(65536)
                except ConnectionResetError:  # evicted before its request was read
                    chunk = b""
                    key = key._replace(data=b'{"error": "reset"}')
                data = key.data + chunk
                if chunk:
                    sel.modify(key.fileobj, selectors.EVENT_READ, data)
                else:
                    sel.unregister(key.fileobj)
                    answers.append(data)
    for s in clients:
        s.close()
    assert len(answers) == 1000
    replies = [json.loads(a) for a in answers]
    served = sum(r == {"ready": True} for r in replies)
    refused = [r for r in replies if "error" in r]
    assert served + len(refused) == 1000 and served > 0
    stats = server.stats()
    assert stats["evicted"] + stats["busy"] == len(refused)
    assert peak_threads <= baseline + control_socket.MAX_ACTIVE + 1


def test_idle_half_sent_clients_hold_no_threads_and_time_out(server, sock_path, short_timeouts):
    baseline = threading.active_count()
    idle = []
    for _ in range(300):
        s = connect(sock_path)
        s.sendall(b'{"cmd": "sta')
        idle.append(s)
    assert status_ok(sock_path)
    assert threading.active_count() <= baseline + 1
    assert wait_for(lambda: server.stats()["pending"] == 0)
    stats = server.stats()
    # 300 is over MAX_PENDING: the oldest few were evicted to make room, the rest timed out.
    assert stats["timed_out"] + stats["evicted"] == 300
    assert stats["timed_out"] >= min(300, control_socket.MAX_PENDING) - 1
    for s in idle:
        reply = read_all(s)
        assert b"no complete request" in reply or b"evicted" in reply
        s.close()
    assert status_ok(sock_path)


def test_more_idle_clients_than_the_cap_evict_the_oldest(server, sock_path):
    cap = control_socket.MAX_PENDING
    idle = [connect(sock_path) for _ in range(cap + 200)]
    assert wait_for(lambda: server.stats()["evicted"] == 200)
    assert status_ok(sock_path)  # the newest connection is never the one evicted
    assert server.stats()["pending"] <= cap
    assert b"evicted" in read_all(idle[0])
    for s in idle:
        s.close()


def test_slow_drip_request_is_cut_at_the_deadline(server, sock_path, short_timeouts):
    with connect(sock_path) as s:
        started = time.monotonic()
        try:
            for byte in b'{"cmd": "status"}':
                s.send(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass
        reply = read_all(s)
    assert b"no complete request" in reply or time.monotonic() - started < 5
    assert server.stats()["timed_out"] == 1


def test_stream_client_that_stops_reading_is_let_go(server, sock_path, short_timeouts):
    s = connect(sock_path)
    s.sendall(b'{"cmd": "ticks"}\n')
    assert wait_for(lambda: server.stats()["streams"] == 1)
    # Never read: the server's writes fill the socket buffer and block; SEND_TIMEOUT ends it.
    assert wait_for(lambda: server.stats()["streams"] == 0 and server.stats()["active"] == 0)
    s.close()
    assert status_ok(sock_path)


def test_too_many_streams_are_refused_but_status_still_answers(server, sock_path,
                                                                monkeypatch):
    monkeypatch.setattr(control_socket, "MAX_STREAMS", 3)
    streams = []
    for _ in range(3):
        s = connect(sock_path)
        s.sendall(b'{"cmd": "ticks"}\n')
        streams.append(s)
    assert wait_for(lambda: server.stats()["streams"] == 3)
    with pytest.raises(ControlError, match="busy"):
        control_request(sock_path, "ticks")
    assert status_ok(sock_path)
    for s in streams:
        s.close()
    assert wait_for(lambda: server.stats()["streams"] == 0)
