"""systemd's notify protocol, spoken directly (no libsystemd): `Type=notify` and `WatchdogSec=`.

A notification is one datagram of `KEY=value` lines sent to the AF_UNIX socket named in
$NOTIFY_SOCKET (a path, or the abstract namespace when it starts with '@'). Without
$NOTIFY_SOCKET (not run by systemd, or a Type= that listens to none) every call does nothing.
Sending never raises: systemd going away must not stop the data path.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 fd_store: int = 0) -> None:
        # '@name' is Linux's abstract namespace: a leading NUL byte instead of a file.
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        # systemd wants a ping at least every WATCHDOG_USEC; half leaves room for a slow turn.
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = float("-inf")
        # How many descriptors systemd keeps for us (FileDescriptorStoreMax=): systemd >= 254
        # says so in $FDSTORE; weft.service sets the same variable for older ones. 0: no store.
        self.fd_store = fd_store if address else 0
        self._warned = False

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID names the process systemd watches; a child that inherited it must not ping
        watched = not pid or pid == str(os.getpid())
        watchdog = int(usec) if usec.isdigit() and int(usec) > 0 and watched else None
        store = env.get("FDSTORE", "")
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog,
                   int(store) if store.isdigit() else 0)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str, fds: list[int] | None = None) -> bool:
        """Send `KEY=value` lines as one notification (with `fds` attached, SCM_RIGHTS);
        False if there is no one to tell."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # sendmsg, not socket.send_fds: before Python 3.13 that ignores the address
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds or []))]
                sock.sendmsg(["\n".join(lines).encode()], ancillary if fds else [], 0,
                             self.address)
        except OSError as exc:
            if not self._warned:  # once: a vanished manager would otherwise fill the log
                log.warning("systemd notification to %s failed: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def store_fds(self, fds: dict[str, int]) -> int:
        """Put descriptors in systemd's fd store, one message per name (FDNAME= names all the
        descriptors of its message); systemd keeps one copy of a file however often it is sent.
        Returns how many were sent (0 without a store)."""
        if not self.fd_store:
            return 0
        sent = 0
        for name, fd in fds.items():
            sent += self.send("FDSTORE=1", f"FDNAME={name}", fds=[fd])
        return sent

    def remove_fds(self, names: list[str]) -> None:
        """Drop stored descriptors by name (ones the next start would not use)."""
        for name in names if self.fd_store else ():
            self.send("FDSTOREREMOVE=1", f"FDNAME={name}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        """Ping the watchdog if half its interval has passed. Called from the daemon's loop
        only, so a loop that hangs stops the pings and systemd restarts weft."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
