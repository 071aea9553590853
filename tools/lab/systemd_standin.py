"""systemd's side of the notify and file-descriptor-store protocols, for one lab host's `weft
run`: enough to restart it as `systemctl restart` does with FileDescriptorStoreMax= set.

Tests and `weft bench --restart` use it where no systemd runs the lab's hosts: a notify socket
(a path: the abstract namespace is per network namespace) that keeps FDSTORE=1 descriptors by
name, one copy per file as systemd keeps them, drops them on FDSTOREREMOVE=1, and a start that
passes them to the next `weft run` as LISTEN_FDS/LISTEN_FDNAMES at 3, 4, ... (sd_listen_fds(3)).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time

from weft.tools.lab import netns
from weft.tools.lab.cluster import WEFT, Cluster


class SystemdStandIn:
    """systemd's side of the notify and fd-store protocols for one service, enough for a
    restart: a notify socket that keeps FDSTORE=1 descriptors by name (one copy per file, as
    systemd), and a start that passes them as LISTEN_FDS/LISTEN_FDNAMES at 3, 4, ..."""

    def __init__(self, cluster: Cluster, host: int, max_fds: int = 8) -> None:
        self.cluster = cluster
        self.host = host
        self.max_fds = max_fds
        # A path, not the abstract namespace: that is per network namespace, and weft runs in
        # the host's.
        self.address = str(cluster.dir / f"systemd-notify-{host}")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.store: list[tuple[str, int]] = []  # (name, our copy of the fd)
        self.messages: list[str] = []
        self.proc: subprocess.Popen | None = None

    def _identity(self, fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def drain(self) -> None:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, 16)
            except BlockingIOError:
                return
            text = msg.decode()
            self.messages.append(text)
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            if fields.get("FDSTOREREMOVE") == "1":
                for name, fd in [e for e in self.store if e[0] == fields.get("FDNAME")]:
                    os.close(fd)
                    self.store.remove((name, fd))
            for fd in fds:
                known = {self._identity(f) for _, f in self.store}
                if fields.get("FDSTORE") != "1" or self._identity(fd) in known \
                        or len(self.store) >= self.max_fds:
                    os.close(fd)
                else:
                    self.store.append((fields.get("FDNAME", "stored"), fd))

    def start(self) -> None:
        """ExecStart=: weft run with the stored descriptors at 3, 4, ..."""
        names = [name for name, _ in self.store]
        fds = [fd for _, fd in self.store]
        h = self.cluster.host(self.host)

        def place() -> None:  # in the child, before exec: move the store's fds to 3..
            netns.enter(h.ns)
            parked = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200) for fd in fds]  # nothing clobbered
            for i, fd in enumerate(parked):
                os.dup2(fd, 3 + i)

        env = {**os.environ, **self.cluster.env, "NOTIFY_SOCKET": self.address,
               "FDSTORE": str(self.max_fds)}
        if fds:
            env.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names))
        log = open(self.cluster.dir / f"h{self.host}.log", "ab")
        argv = [*WEFT, "run", "--iface", "eth0", "--subnet-file",
                str(self.cluster.subnet_file(self.host)), "--control-socket",
                self.cluster.socket_path(self.host)]
        # LISTEN_PID must be the child's own PID, known only after fork: a shell sets it.
        script = 'export LISTEN_PID=$$; exec "$@"' if fds else 'exec "$@"'
        self.proc = subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], env=env,
                                     stdout=log, stderr=log, pass_fds=range(3, 3 + len(fds)),
                                     preexec_fn=place)
        h.proc = self.proc
        self.cluster.lab.procs.append(self.proc)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if any(m.startswith("READY=1") for m in self.messages):
                return
            assert self.proc is not None and self.proc.poll() is None, \
                self.cluster.host_log(self.host)[-3000:]
            time.sleep(0.02)
        raise AssertionError("no READY=1")

    def restart(self) -> float:
        """systemctl restart: SIGTERM, wait for exit (the store is kept: a job is queued);
        returns the seconds the old process took to exit."""
        assert self.proc is not None
        asked = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        stopped = time.monotonic() - asked
        self.drain()
        self.messages.clear()
        self.start()
        self.wait_ready()
        return stopped

    def close(self) -> None:
        for _, fd in self.store:
            os.close(fd)
        self.store.clear()
        self.sock.close()
