"""`weft run` under systemd's Type=notify: the notifications it sends, in order.

A datagram socket stands in for systemd (abstract namespace, as systemd's own `@/org/...`
addresses); `weft run` (alloc backend, test etcd) gets it in $NOTIFY_SOCKET with a watchdog.
The same run logs as JSON, one object per line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from test_flanneld_unit import clean_env


def next_notification(sock: socket.socket, proc: subprocess.Popen) -> str:
    try:
        return sock.recv(4096).decode()
    except TimeoutError:  # a failsafe, not a timing assertion: weft must have died
        proc.kill()
        raise AssertionError(f"no notification; weft run: {proc.communicate()}") from None


def test_ready_after_subnet_env_then_watchdog_then_stopping(etcd_server, etcd_prefix, registry,
                                                            tmp_path):
    registry.put_network_config('{"Network":"10.9.0.0/16","Backend":{"Type":"alloc"}}')
    subnet_file = tmp_path / "subnet.env"
    name = f"weft-test-notify-{os.getpid()}-{id(tmp_path)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(60)
    env = clean_env(NOTIFY_SOCKET="@" + name, WATCHDOG_USEC="400000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "weft.cli", "run", "--log-format", "json",
         f"-etcd-endpoints={etcd_server.endpoint}", f"-etcd-prefix={etcd_prefix}", "-iface=lo",
         "-public-ip=192.0.2.63", f"-subnet-file={subnet_file}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        while not (seen and seen[-1].startswith("READY=1")):
            seen.append(next_notification(sock, proc))
        assert subnet_file.exists()  # READY=1 only once subnet.env is written
        assert "STATUS=subnet 10.9." in seen[-1]
        while seen[-1] != "WATCHDOG=1":  # the daemon loop pings
            seen.append(next_notification(sock, proc))
        proc.send_signal(signal.SIGTERM)
        while not seen[-1].startswith("STOPPING=1"):
            seen.append(next_notification(sock, proc))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, err
    ready = next(i for i, n in enumerate(seen) if n.startswith("READY=1"))
    assert "WATCHDOG=1" in seen[ready:-1] and seen[-1] == "STOPPING=1\nSTATUS=stopping"
    assert all(n == "WATCHDOG=1" or n.startswith("STATUS=") for n in seen[:ready]), seen
    entries = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"].startswith(f"wrote {subnet_file}") for e in entries)
    assert any("keeping lease" in e["message"] for e in entries)
