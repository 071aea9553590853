"""One `weft run` per subnet file at a time, claimed before anything on the host is touched.

A restart as systemd does it (SIGTERM, then start) or an operator's quick stop/start can start a
new daemon while the old one is still stopping. The new one must not program devices, routes or
rules under the old one's feet, nor die half-way with a traceback when it finds the old control
socket. So `weft run` claims its instance first: an flock on `<subnet file>.lock` (the subnet
file names the network this daemon serves; flanneld's default is /run/flannel/subnet.env), then
a look at the control socket (a daemon of a weft without this lock still listens there while
it stops). While either is held it waits, bounded and saying so; then it starts, or exits with
one line saying who is in the way.

The lock is held until the process exits (the kernel drops an flock when its last fd closes):
no unlock path can be skipped by a crash. The file holds the holder's pid, for the message.

Across a re-exec (SIGHUP: the same process exec()s itself): the lock's fd is close-on-exec, as
every fd Python opens. Before exec'ing, the daemon calls `keep_across_exec()`: the fd becomes
inheritable and WEFT_INSTANCE_LOCK_FD names it; the new image's `claim()` finds it, checks that
it is the same file, and goes on holding the same lock (an flock belongs to the open file
description, which exec keeps), so no other `weft run` can slip in between the two images.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from weft.observe.control_socket import LISTENING, NOT_A_SOCKET, socket_state

log = logging.getLogger(__name__)

ENV_FD = "WEFT_INSTANCE_LOCK_FD"
WAIT = 30.0  # seconds a new daemon waits for one that is stopping (SIGTERM to exit is ~0.1 s)
RETRY = 0.05  # seconds between looks at the lock and the socket while waiting


class InstanceError(Exception):
    """The start cannot go ahead; the message is one line for the operator, no traceback."""


class InstanceBusy(InstanceError):
    """Another daemon for the same subnet file did not go away in time."""


@dataclass
class InstanceLock:
    path: str
    fd: int


_held: InstanceLock | None = None  # this process's claim, for keep_across_exec()


def lock_path(subnet_file: str) -> str:
    return f"{subnet_file}.lock"


def holder_pid(path: str) -> int | None:
    """The pid written by the daemon holding (or that last held) the lock at `path`."""
    try:
        with open(path) as f:
            return int(f.read().strip() or "0") or None
    except (OSError, ValueError):
        return None


def claim(subnet_file: str, control_socket: str | None, wait: float = WAIT,
          say: Callable[[str], None] = log.warning,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> InstanceLock:
    """Take this host's instance for `subnet_file`, waiting up to `wait` seconds for a daemon
    that is still stopping; InstanceBusy if it stays, InstanceError if the lock file cannot be
    opened. Reads and writes only the lock file."""
    global _held
    path = lock_path(subnet_file)
    deadline = clock() + wait
    lock = _inherited(path) or _take(path, wait, deadline, say, clock, sleep)
    try:
        if control_socket:
            _wait_for_socket(control_socket, wait, deadline, say, clock, sleep)
    except BaseException:
        os.close(lock.fd)
        raise
    _held = lock
    return lock


def keep_across_exec() -> dict[str, str]:
    """Let the claim survive this process's exec(): call just before it. Returns the
    environment entry the new image needs (also set in os.environ); {} when nothing is held."""
    if _held is None:
        return {}
    # A copy above the low numbers: the descriptors handed over are placed at 3, 4, ...
    # (weft.dev.handover) and would overwrite the lock's own number.
    fd = fcntl.fcntl(_held.fd, fcntl.F_DUPFD, 256)
    os.set_inheritable(fd, True)
    os.environ[ENV_FD] = str(fd)
    return {ENV_FD: str(fd)}


def _take(path: str, wait: float, deadline: float, say: Callable[[str], None],
          clock: Callable[[], float], sleep: Callable[[float], None]) -> InstanceLock:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # e.g. not root, with the default /run/flannel
        raise InstanceError(f"cannot open the instance lock {path}: {exc.strerror}") from None
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pid = holder_pid(path)
            who = f"another weft run (pid {pid})" if pid else "another weft run"
            if clock() >= deadline:
                os.close(fd)
                raise InstanceBusy(f"{who} still holds {path} after {wait:.0f} s; "
                                   f"not starting (stop it first)") from None
            if not told:
                say(f"{who} holds {path}; waiting up to {wait:.0f} s for it to stop")
                told = True
            sleep(RETRY)
    _write_pid(fd)
    return InstanceLock(path, fd)


def _inherited(path: str) -> InstanceLock | None:
    """The lock this same process held before it exec'd itself (see keep_across_exec)."""
    named = os.environ.pop(ENV_FD, None)
    if named is None:
        return None
    try:
        fd = int(named)
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except (ValueError, OSError):
        same = False
    if not same:  # not ours to close: whatever it is, it is not our lock file
        log.warning("%s=%s does not name %s; taking the lock afresh", ENV_FD, named, path)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: succeeds at once
    except BlockingIOError:
        os.close(fd)  # someone else holds it after all: wait for it as any start does
        return None
    os.set_inheritable(fd, False)  # children (iptables, the compile step) must not hold it
    return InstanceLock(path, fd)


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _wait_for_socket(path: str, wait: float, deadline: float, say: Callable[[str], None],
                     clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
    told = False
    while (state := socket_state(path)) == LISTENING:
        if clock() >= deadline:
            raise InstanceBusy(f"another weft daemon still listens at {path} after "
                               f"{wait:.0f} s; not starting (stop it first)")
        if not told:
            say(f"another weft daemon still listens at {path}; waiting up to {wait:.0f} s "
                f"for it to stop")
            told = True
        sleep(RETRY)
    if state == NOT_A_SOCKET:
        raise InstanceBusy(f"{path} exists and is not a socket; not replacing it")
