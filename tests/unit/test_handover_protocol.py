"""weft.dev.handover: descriptors passed as sd_listen_fds(3) passes them, over exec() and from
systemd; a passed socket is checked before it is used (tests/netns/test_handover.py does the
devices and the restarts)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from weft.dev import handover

# A child that reads what it was given, as `weft run` does first, and reports it as JSON.
_REPORT = textwrap.dedent("""
    import json, os, sys
    from weft.dev.handover import Inherited
    got = Inherited.from_environment()
    fds = {name: got.take(name) for name in got.names}
    print(json.dumps({"names": got.names,
                      "data": {n: os.read(fd, 100).decode() for n, fd in fds.items()},
                      "left": [v for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
                               if v in os.environ]}))
""")


def test_exec_passes_named_descriptors_at_3_and_up_with_the_same_pid() -> None:
    """exec_with() in a child: the new image finds each pipe under its name, with LISTEN_PID its
    own PID (exec keeps it), and removes the variables so its children do not take them."""
    launcher = textwrap.dedent(f"""
        import os, sys
        from weft.dev import handover
        fds = {{}}
        for name in ("weft.1-device", "weft.1-udp"):
            r, w = os.pipe()
            os.write(w, name.encode())
            os.close(w)
            fds[name] = r
        handover.exec_with(fds, [sys.executable, "-c", {_REPORT!r}])
    """)
    out = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    report = json.loads(out)
    assert report["names"] == ["weft.1-device", "weft.1-udp"]
    assert report["data"] == {"weft.1-device": "weft.1-device", "weft.1-udp": "weft.1-udp"}
    assert report["left"] == []


def test_descriptors_for_another_pid_are_not_taken() -> None:
    env = {**os.environ, "LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    r, w = os.pipe()
    try:
        out = subprocess.run([sys.executable, "-c", _REPORT], env=env, capture_output=True,
                             text=True, timeout=60, check=True, pass_fds=(r,)).stdout
    finally:
        os.close(r)
        os.close(w)
    assert json.loads(out)["names"] == []


def test_close_rest_closes_what_nobody_took() -> None:
    a, b = os.pipe()
    got = handover.Inherited({"weft.1-device": [a], "flannel.1-udp": [b]})
    assert got.take("weft.1-device") == a
    assert got.take("weft.1-device") is None
    assert got.close_rest() == ["flannel.1-udp"]
    with pytest.raises(OSError):
        os.fstat(b)
    os.close(a)
    assert not got


def test_a_passed_udp_socket_is_taken_only_on_its_port() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    taken = handover.adopt_udp_socket(os.dup(sock.fileno()), port)
    assert taken.getsockname()[1] == port and not taken.getblocking()
    taken.close()
    wrong = os.dup(sock.fileno())
    with pytest.raises(ValueError, match="not IPv4 UDP on port"):
        handover.adopt_udp_socket(wrong, port + 1)
    with pytest.raises(OSError):
        os.fstat(wrong)  # refused means closed: nothing leaks
    sock.close()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    with pytest.raises(ValueError):
        handover.adopt_udp_socket(os.dup(tcp.fileno()), tcp.getsockname()[1])
    tcp.close()


def test_names_systemd_would_refuse_are_refused_here() -> None:
    with pytest.raises(ValueError):
        handover.exec_environment(["a:b"], {})
    env = handover.exec_environment(["weft.1-device", "weft.1-udp"], {"KEEP": "1"})
    assert env["LISTEN_FDS"] == "2" and env["LISTEN_FDNAMES"] == "weft.1-device:weft.1-udp"
    assert env["LISTEN_PID"] == str(os.getpid()) and env["KEEP"] == "1"
