"""Run code and processes inside named network namespaces.

setns() only moves the calling thread, and a process that has moved cannot safely come back
while other threads run, so every piece of in-namespace work happens in a fresh child: a
forked Python child for callables, a preexec_fn for subprocesses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import pickle
import select
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyroute2 import netns as _netns

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"

# Proxy variables would send grpc/http clients (etcdctl, weft) to an address outside the lab.
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "grpc_proxy", "no_proxy")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def enter(ns: str) -> None:
    """Move the calling (single-threaded, child) process into namespace `ns`."""
    fd = os.open(os.path.join(NETNS_DIR, ns), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(extra or {})
    return env


class NsCall:
    """A callable running in a forked child inside a namespace; collect with result()."""

    def __init__(self, ns: str, fn: Callable[..., Any], args: Sequence[Any],
                 kwargs: Mapping[str, Any]) -> None:
        self.ns = ns
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into the caller's stack
            os.close(rfd)
            _child(ns, fn, args, kwargs, wfd)
        os.close(wfd)
        self.pid = pid
        self._rfd: int | None = rfd
        self._buf = bytearray()
        self._done = False
        self._value: tuple[bool, Any] | None = None

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the child; return its value or re-raise its exception (or TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._rfd is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._rfd], [], [], left)
            if not ready:
                self.kill()
                raise TimeoutError(f"call in netns {self.ns} took longer than {timeout}s")
            chunk = os.read(self._rfd, 1 << 20)
            if chunk:
                self._buf += chunk
                continue
            os.close(self._rfd)
            self._rfd = None
        self._reap()
        if self._value is None:
            if not self._buf:
                raise RuntimeError(f"child in netns {self.ns} died without a result")
            self._value = pickle.loads(bytes(self._buf))
        ok, value = self._value
        if ok:
            return value
        raise value

    def kill(self) -> None:
        """Stop the child if it still runs."""
        if not self._done:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()
        if self._rfd is not None:
            os.close(self._rfd)
            self._rfd = None

    def _reap(self) -> None:
        if not self._done:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self._done = True


def _child(ns: str, fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any],
           wfd: int) -> None:
    code = 0
    try:
        # The parent's teardown handlers must not run in the child on Ctrl-C / SIGTERM.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            enter(ns)
            payload = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - shipped to the parent
            exc.__notes__ = [*getattr(exc, "__notes__", []), traceback.format_exc()]
            payload = (False, exc)
        try:
            data = pickle.dumps(payload)
        except Exception as exc:  # noqa: BLE001
            data = pickle.dumps((False, RuntimeError(f"unpicklable result: {exc!r}")))
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]
    except BaseException:  # noqa: BLE001
        code = 1
    finally:
        os._exit(code)


def spawn_in(ns: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> NsCall:
    """Start fn(*args, **kwargs) in a forked child inside `ns`; returns a handle."""
    return NsCall(ns, fn, args, kwargs)


def call_in(ns: str, fn: Callable[..., Any], *args: Any, timeout: float | None = 60.0,
            **kwargs: Any) -> Any:
    """Run fn(*args, **kwargs) inside `ns` and return its (picklable) value."""
    return spawn_in(ns, fn, *args, **kwargs).result(timeout)


def popen_in(ns: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
             **popen_kwargs: Any) -> subprocess.Popen:
    """Start argv inside `ns` in a new session (so its whole process group can be killed).

    env holds extra variables on top of os.environ (proxy variables removed).
    """
    popen_kwargs.setdefault("start_new_session", True)
    return subprocess.Popen(list(argv), env=clean_env(env), preexec_fn=lambda: enter(ns),
                            **popen_kwargs)


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def sysctl_path(key: str) -> str:
    """'net.ipv4.ip_forward' -> '/proc/sys/net/ipv4/ip_forward' (paths pass through)."""
    return key if key.startswith("/") else "/proc/sys/" + key.replace(".", "/")


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Write a sysctl inside `ns` (/proc/sys/net follows the opener's namespace)."""
    call_in(ns, _write_sysctl, sysctl_path(key), str(value), timeout=10.0)


def create(ns: str) -> None:
    """Create namespace `ns`; fails if it exists."""
    if ns in _netns.listnetns():
        raise FileExistsError(errno.EEXIST, "netns exists", ns)
    _netns.create(ns)


def remove(ns: str) -> None:
    """Remove namespace `ns` if present (its devices go when its last user leaves)."""
    try:
        _netns.remove(ns)
    except FileNotFoundError:
        pass


def list_prefixed(prefix: str) -> list[str]:
    """Names of existing namespaces that start with `prefix`."""
    return sorted(n for n in _netns.listnetns() if n.startswith(prefix))


def pids_in(names: Sequence[str]) -> list[int]:
    """Processes whose network namespace is one of `names`."""
    by_ns = _netns.ns_pids()
    return sorted({pid for n in names for pid in by_ns.get(n, [])})


def kill_pids(pids: Sequence[int], grace: float = 2.0) -> None:
    """SIGTERM the given pids, then SIGKILL those still alive after `grace` seconds."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _exists(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(pid: int) -> bool:
    try:
        # A zombie child of ours still "exists"; reap it if it is ours.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def remove_by_prefix(prefix: str, kill: bool = True) -> list[str]:
    """Remove every namespace named prefix*, first killing processes inside them if `kill`."""
    names = list_prefixed(prefix)
    if kill and names:
        kill_pids(pids_in(names))
    for n in names:
        remove(n)
    return names


# -- a veth that behaves like a wire ---------------------------------------------------------

_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17  # legacy "set TX checksumming"; TSO/GSO offloads depend on it


def disable_tx_offloads(ifname: str) -> None:
    """Make the kernel finish checksums and segmentation before a packet enters this device.

    veth hands partially checksummed 64 KiB TSO/GSO packets straight to its peer namespace,
    which no physical wire ever carries: a NIC segments and checksums them. Call inside the
    namespace (e.g. via call_in). Uses the ethtool ioctl, so no ethtool binary is needed.
    """
    import array
    import fcntl
    import socket
    import struct

    value = array.array("I", [_ETHTOOL_STXCSUM, 0])  # struct ethtool_value {cmd; data}
    address, _ = value.buffer_info()
    ifreq = struct.pack("16sP", ifname.encode(), address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
