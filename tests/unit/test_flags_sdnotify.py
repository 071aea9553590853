"""systemd's notify protocol: datagrams of KEY=value lines to $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket

import pytest

from weft.observe.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()
    path.unlink()


def test_ready_status_stopping_as_datagrams(listener):
    sock, path = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready("subnet 10.1.2.0/24")
    notifier.status("working")
    notifier.stopping("bye")
    assert [sock.recv(4096).decode() for _ in range(3)] == [
        "READY=1\nSTATUS=subnet 10.1.2.0/24", "STATUS=working", "STOPPING=1\nSTATUS=bye"]


def test_abstract_namespace_address():
    name = f"weft-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(64) == b"READY=1"


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier.from_environment({})
    assert not notifier.enabled and not notifier.send("READY=1")
    notifier.watchdog()  # no error either


def test_unreachable_socket_is_logged_once_not_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.send("READY=1") and not notifier.send("STATUS=x")
    assert caplog.text.count("systemd notification") == 1


def test_watchdog_pings_at_most_once_per_half_interval(listener):
    sock, path = listener
    # an hour: the second call comes long before half of it has passed
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path,
                                          "WATCHDOG_USEC": str(3600 * 10**6)})
    assert notifier.watchdog_interval == 1800
    notifier.watchdog()
    notifier.watchdog()
    notifier.status("marker")
    assert sock.recv(64) == b"WATCHDOG=1"
    assert sock.recv(64) == b"STATUS=marker"


def test_watchdog_only_for_the_watched_pid(listener):
    _, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None
    mine = Notifier.from_environment({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 0.5
