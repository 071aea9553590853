import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest
from status_samples import FULL, WAITING

from weft.observe.control_socket import (
    ABSENT,
    DEFAULT_CONTROL_SOCKET,
    LISTENING,
    NOT_A_SOCKET,
    STALE,
    ControlError,
    ControlServer,
    control_request,
    control_stream,
    socket_state,
)
from weft.observe.status_text import format_duration, format_status


@pytest.fixture
def sock_path(tmp_path):
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can get close, so stay short.
    return str(tmp_path / "run" / "weft.sock")


@pytest.fixture
def stream_state():
    return {"closed": threading.Event(), "produced": 0}


@pytest.fixture
def server(sock_path, stream_state):
    def ticks(args):
        # Like a trace tap: mostly idle, yields None while waiting so disconnects are noticed.
        try:
            n = 0
            while True:
                if n < args.get("count", 1_000_000):
                    stream_state["produced"] += 1
                    yield {"seq": n}
                    n += 1
                else:
                    time.sleep(0.01)
                    yield None
        finally:
            stream_state["closed"].set()

    def finite(args):
        for i in range(args["n"]):
            yield {"i": i}

    def broken(args):
        yield {"i": 0}
        raise RuntimeError("tap vanished")

    handlers = {
        "status": lambda args: {"ready": True, "echo": args},
        "fail": lambda args: 1 / 0,
        "ticks": ticks,
        "finite": finite,
        "broken": broken,
    }
    srv = ControlServer(sock_path, handlers)
    srv.start()
    yield srv
    srv.stop()


def raw_exchange(path: str, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_default_path():
    assert DEFAULT_CONTROL_SOCKET == "/run/weft/weft.sock"


def test_status_round_trip(server, sock_path):
    reply = control_request(sock_path, "status", verbose=True)
    assert reply == {"ready": True, "echo": {"verbose": True}}


def test_socket_mode_is_0600_and_parent_created(server, sock_path):
    mode = os.stat(sock_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert not [n for n in os.listdir(os.path.dirname(sock_path)) if n.endswith(".tmp")]


def test_unknown_command(server, sock_path):
    [reply] = raw_exchange(sock_path, b'{"cmd": "frobnicate"}\n')
    assert reply["error"].startswith("unknown command 'frobnicate'")
    with pytest.raises(ControlError, match="unknown command"):
        control_request(sock_path, "frobnicate")


def test_bad_requests_get_errors(server, sock_path):
    assert "error" in raw_exchange(sock_path, b"not json\n")[0]
    assert "error" in raw_exchange(sock_path, b'["status"]\n')[0]
    assert "error" in raw_exchange(sock_path, b'{"command": "status"}\n')[0]


def test_handler_exception_is_an_error_reply(server, sock_path):
    with pytest.raises(ControlError, match="fail failed"):
        control_request(sock_path, "fail")
    assert control_request(sock_path, "status")["ready"] is True  # still serving


def test_finite_stream(server, sock_path):
    assert list(control_stream(sock_path, "finite", n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_stream_error_raises_after_items(server, sock_path):
    stream = control_stream(sock_path, "broken")
    assert next(stream) == {"i": 0}
    with pytest.raises(ControlError, match="tap vanished"):
        next(stream)


def test_client_disconnect_closes_iterator(server, sock_path, stream_state):
    stream = control_stream(sock_path, "ticks", count=3)
    assert [next(stream) for _ in range(3)] == [{"seq": 0}, {"seq": 1}, {"seq": 2}]
    assert not stream_state["closed"].is_set()
    stream.close()  # disconnects
    assert stream_state["closed"].wait(2), "server kept the iterator open after disconnect"


def test_disconnect_during_fast_stream(server, sock_path, stream_state):
    # The server is blocked writing into a full socket buffer; hanging up must still end it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(b'{"cmd": "ticks"}\n')
        s.recv(100)
    assert stream_state["closed"].wait(2)


def test_no_daemon(tmp_path):
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(ControlError, match=r"no weft daemon at .*nothing\.sock: is `weft run`"):
        control_request(path, "status")
    with pytest.raises(ControlError, match="no weft daemon"):
        control_stream(path, "ticks")


def test_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # file remains, nobody listens: what a crashed daemon leaves behind
    with pytest.raises(ControlError, match="no weft daemon"):
        control_request(path, "status")
    srv = ControlServer(path, {"status": lambda args: {"ok": 1}})
    srv.start()
    try:
        assert control_request(path, "status") == {"ok": 1}
    finally:
        srv.stop()
    assert not os.path.exists(path)


def test_live_daemon_is_not_taken_over(server, sock_path):
    with pytest.raises(ControlError, match="another weft daemon"):
        ControlServer(sock_path, {}).start()
    assert control_request(sock_path, "status")["ready"] is True


def test_regular_file_is_not_replaced(tmp_path):
    path = tmp_path / "file.sock"
    path.write_text("keep me")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(path), {}).start()
    assert path.read_text() == "keep me"


def test_stop_unlinks_and_ends_streams(sock_path, stream_state, server):
    stream = control_stream(sock_path, "ticks", count=1)
    assert next(stream) == {"seq": 0}
    server.stop()
    assert not os.path.exists(sock_path)
    assert stream_state["closed"].wait(2)
    assert list(stream) == []
    with pytest.raises(ControlError, match="no weft daemon"):
        control_request(sock_path, "status")


NOBODY = 65534  # uid and gid of `nobody` on Debian, present on a fresh machine too


def request_as_nobody(path: str) -> str:
    """Ask `path` for status from a forked child that dropped to nobody; returns its outcome.

    No new interpreter: the child keeps this process's Python and imports, so it does not
    matter whether nobody may read the interpreter's files.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report through the pipe, never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                control_request(path, "status")
                outcome = "connected"
            except ControlError as exc:
                outcome = str(exc)
            os.write(write_end, f"uid={os.geteuid()} {outcome}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        outcome = reader.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, "the unprivileged child failed"
    return outcome


def test_permission_denied_as_nobody_by_the_socket_mode_alone():
    """Root ignores modes, so a forked child drops to nobody and asks; the 0600 socket must
    turn it away with the friendly message. Its folder is open to all (0755, under the
    world-writable temp dir), so the refusal can only come from the socket's own mode."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user (CI runs as root)")
    folder = tempfile.mkdtemp(prefix="weft-ctl-")
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "weft.sock")
        srv = ControlServer(path, {"status": lambda args: {}})
        srv.start()
        try:
            outcome = request_as_nobody(path)
        finally:
            srv.stop()
    finally:
        shutil.rmtree(folder)
    assert outcome == f"uid={NOBODY} permission denied on {path}: run as root (the socket is "\
        "0600)"


def test_permission_denied(tmp_path):
    """As any user: a socket in a folder we may not enter gets the friendly message."""
    path = str(tmp_path / "locked" / "weft.sock")
    srv = ControlServer(path, {"status": lambda args: {}})
    srv.start()
    try:
        os.chmod(os.path.dirname(path), 0o000)
        if os.geteuid() == 0:
            outcome = request_as_nobody(path)  # root would pass through the 0000 folder
            assert outcome.startswith(f"uid={NOBODY} permission denied on {path}"), outcome
        else:
            with pytest.raises(ControlError, match="permission denied"):
                control_request(path, "status")
    finally:
        os.chmod(os.path.dirname(path), 0o700)
        srv.stop()


def test_permission_error_message(monkeypatch, tmp_path):
    # The mapping itself, independent of whether this test runs as root.
    def refuse(self, address):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ControlError, match=r"permission denied on /run/weft/weft\.sock"):
        control_request(DEFAULT_CONTROL_SOCKET, "status")


def test_format_status_contains_key_fields():
    text = format_status(FULL)
    for expected in ("10.1.15.0/24", "192.0.2.11", "vxlan", "23h53m20s", "ready", "plain",
                     "10.1.16.0/24", "192.0.2.12", "aa:bb:cc:dd:ee:01", "wrong_vni",
                     "arp_replied", "1500", "700"):
        assert expected in text, expected
    assert "ttl_exceeded" not in text  # zero counters are noise
    lines = text.splitlines()
    start = lines.index("peers (2):") + 2  # past the header row
    assert [row.split()[0] for row in lines[start:start + 2]] == ["10.1.2.0/24", "10.1.16.0/24"]
    egress = next(line for line in lines if line.strip().startswith("egress"))
    assert egress.split() == ["egress", "10", "1500"]


def test_format_status_without_lease():
    text = format_status(WAITING)
    assert "not ready" in text
    assert "lease:     none" in text
    assert "peers (0)" in text
    assert "datapath:  not started" in text


def test_format_duration():
    assert format_duration(86000) == "23h53m20s"
    assert format_duration(90061) == "1d1h1m1s"
    assert format_duration(59.9) == "59s"
    assert format_duration(-30) == "expired 30s ago"


def test_socket_state_tells_what_a_new_daemon_finds(tmp_path, server, sock_path):
    # What `weft run` looks at before touching the host: only LISTENING makes it wait.
    assert socket_state(str(tmp_path / "none.sock")) == ABSENT
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    assert socket_state(str(tmp_path / "dead.sock")) == STALE
    assert socket_state(sock_path) == LISTENING
    (tmp_path / "file.sock").write_text("x")
    assert socket_state(str(tmp_path / "file.sock")) == NOT_A_SOCKET
    assert os.path.exists(tmp_path / "dead.sock")  # it only looks
