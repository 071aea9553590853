"""Descriptors carried from one `weft run` process to the next, so a restart loses no packet.

While a TUN/TAP stays open and a UDP socket stays bound, the kernel queues what arrives for
them (the device's transmit queue, the socket's receive buffer) instead of dropping it; a
successor that adopts them reads on from where the old process stopped. Two ways carry them,
one protocol for both, systemd's socket passing (sd_listen_fds(3)):
  - SIGHUP: weft exec()s itself with its descriptors placed at 3, 4, ... and LISTEN_PID set to
    its own PID (exec keeps the PID), LISTEN_FDS to their count, LISTEN_FDNAMES to their names;
  - a restart under systemd: weft stores them in systemd's file-descriptor store (FDSTORE=1,
    weft.observe.sdnotify) and systemd passes them to the next start the same way.
Names say what a descriptor is ("<device>-device", "<device>-udp"); the adopter checks each one
(weft.dev.tundev.adopt_device, adopt_udp_socket) before it uses it and closes what it did not
take, so nothing leaks and nothing mismatched is used.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping, Sequence
from typing import NoReturn

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start here
_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_PARK = 512  # where descriptors wait while the low numbers are rearranged before exec


class Inherited:
    """The descriptors this process was given, by name; take() what you use, close_rest()."""

    def __init__(self, fds: Mapping[str, Sequence[int]] | None = None) -> None:
        self._fds: dict[str, list[int]] = {name: list(v) for name, v in (fds or {}).items()}
        self.names = sorted(self._fds)  # what was given, for the log and tests

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Inherited:
        """Read (and remove) LISTEN_*: the variables must not reach our children (iptables,
        the compile job), who would take the descriptors for theirs."""
        env = os.environ if environ is None else environ
        pid, count, names = (env.pop(var, "") for var in _VARS)
        if not count:
            return cls()
        if pid != str(os.getpid()):
            log.warning("LISTEN_FDS is for pid %s, not us: ignoring the descriptors", pid)
            return cls()
        n = int(count) if count.isdigit() else 0
        labels = names.split(":") if names else []
        fds: dict[str, list[int]] = {}
        for i in range(n):
            fd = LISTEN_FDS_START + i
            try:  # ours from here on: not inherited by anything we start
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            except OSError:
                log.warning("passed descriptor %d is not open", fd)
                continue
            fds.setdefault(labels[i] if i < len(labels) else "unknown", []).append(fd)
        got = cls(fds)
        log.info("adopting %d descriptor(s) from the previous weft run: %s", n,
                 ", ".join(got.names))
        return got

    def __bool__(self) -> bool:
        return any(self._fds.values())

    def take(self, name: str) -> int | None:
        """The next descriptor given under `name` (now the caller's), or None."""
        fds = self._fds.get(name)
        return fds.pop(0) if fds else None

    def close_rest(self) -> list[str]:
        """Close what nobody took (a device of another config, a stale duplicate); their names."""
        closed = []
        for name, fds in self._fds.items():
            for fd in fds:
                os.close(fd)
                closed.append(name)
            fds.clear()
        if closed:
            log.info("closed %d passed descriptor(s) not used: %s", len(closed),
                     ", ".join(closed))
        return closed


def adopt_udp_socket(fd: int, port: int) -> socket.socket:
    """Take passed descriptor `fd` as our bound IPv4 UDP socket on `port`; ValueError (and
    `fd` closed) if it is anything else."""
    sock = socket.socket(fileno=fd)
    try:
        bound = sock.getsockname()
        if sock.family != socket.AF_INET or sock.type != socket.SOCK_DGRAM or bound[1] != port:
            raise ValueError(f"a {sock.family.name}/{sock.type.name} socket bound to {bound}, "
                             f"not IPv4 UDP on port {port}")
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def exec_environment(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of our exec()ed successor given `names` at 3, 4, ..."""
    for name in names:
        if not name or ":" in name:
            raise ValueError(f"descriptor name {name!r}: must be non-empty, without ':'")
    return {**environ, "LISTEN_PID": str(os.getpid()), "LISTEN_FDS": str(len(names)),
            "LISTEN_FDNAMES": ":".join(names)}


def exec_with(fds: Mapping[str, int], argv: Sequence[str]) -> NoReturn:
    """Replace this process by `argv`, passing `fds` as sd_listen_fds(3) does (same PID).

    Every other descriptor is close-on-exec (Python's default), so the new image starts with
    exactly these. They are parked high first, so that moving one to 3+i never overwrites
    another that is still to be moved.
    """
    names = list(fds)
    env = exec_environment(names, os.environ)
    parked = [fcntl.fcntl(fds[name], fcntl.F_DUPFD_CLOEXEC, _PARK) for name in names]
    for i, fd in enumerate(parked):
        os.dup2(fd, LISTEN_FDS_START + i, inheritable=True)
    os.execve(argv[0], list(argv), env)
