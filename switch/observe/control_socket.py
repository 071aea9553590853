"""Control socket: newline-delimited JSON over a Unix stream socket, like ovs-appctl's unixctl.

A client sends one request line `{"cmd": NAME, ...args}`. The handler for NAME gets the args
(the request without "cmd") and returns either a dict, sent back as one line, or an iterator of
dicts, streamed one line each until it ends or the client goes away. A line with an "error" key
is reserved for failures and ends the exchange.

Streaming handlers (live trace) may block waiting for packets; they should yield None every
half second or so when idle. None is not sent: it gives the server a chance to notice a closed
client and close the iterator, which runs its cleanup (detaching the trace tap).
"""

from __future__ import annotations

import json
import logging
import os
import select
import selectors
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CONTROL_SOCKET = "/run/weft/weft.sock"
MAX_REQUEST = 1 << 20  # one request line; anything longer is a confused or hostile client
REQUEST_TIMEOUT = 5.0  # seconds from connect to a complete request line
MAX_PENDING = 256  # connections still sending their request (one fd each, no thread)
MAX_ACTIVE = 64  # requests being answered at once, one thread each
MAX_STREAMS = 16  # of those, long-lived streams (live trace)
SEND_TIMEOUT = 30.0  # a client that stops reading its answer is dropped after this
LISTEN_BACKLOG = 128
ACCEPT_BATCH = 64
# What stats() always reports, zero or not: connections accepted and answered, and each reason
# a connection was refused or cut off.
COUNTED = ("accepted", "served", "bad_request", "too_long", "timed_out", "evicted", "busy",
           "accept_failed", "internal_error")
WARN_INTERVAL = 60.0

Handler = Callable[[dict], dict | Iterator[dict | None]]


class ControlError(Exception):
    """The control socket is unusable or the daemon reported an error."""


# What socket_state() finds at a control socket's path.
ABSENT, STALE, LISTENING, NOT_A_SOCKET = "absent", "stale", "listening", "not a socket"


def socket_state(path: str) -> str:
    """ABSENT, STALE (a socket nobody listens on: its daemon is gone), LISTENING (a daemon
    answers, or is stopping and has not closed it yet) or NOT_A_SOCKET. Reads only: `weft run`
    asks this before it touches the host, and waits while a stopping daemon still listens."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(mode):
        return NOT_A_SOCKET
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # With a timeout, connect() to a full backlog fails at once with EAGAIN: someone listens.
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return STALE
    except (BlockingIOError, TimeoutError):
        return LISTENING
    finally:
        probe.close()
    return LISTENING


def _encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class _Pending:
    """A connection whose request line is still arriving."""

    __slots__ = ("deadline", "data")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.data = bytearray()


class ControlServer:
    """Serves `handlers` on a 0600 Unix socket at `path`.

    Hostile or broken clients must not starve `weft status`, so connections are handled in two
    stages. Until its request line is complete a connection costs one fd and no thread: the
    accept thread reads all of them with one selector, gives each REQUEST_TIMEOUT seconds from
    connect, and when MAX_PENDING are waiting it closes the oldest to admit the newest (a client
    that sends its request at once is never the oldest for long). A complete request gets a
    thread, at most MAX_ACTIVE at a time and at most MAX_STREAMS of them long-lived streams
    (live trace); beyond that the client is told the daemon is busy. Every refusal is counted
    (`stats()`, shown by `weft status`).
    """

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()  # connections being answered by a thread
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._pending_count = 0
        self._streams = 0
        self._warned: dict[str, float] = {}

    def stats(self) -> dict[str, int]:
        """Connections accepted and refused by reason, and how many are open right now."""
        with self._lock:
            counts = {reason: self._counts.get(reason, 0) for reason in COUNTED}
            return {**counts, **self._counts, "pending": self._pending_count,
                    "active": len(self._conns), "streams": self._streams}

    def start(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._remove_stale()
        # Bind under a temporary name, restrict it, then rename into place: clients never see
        # the socket with the umask's looser mode, and never see one that is not listening yet.
        tmp = f"{self.path}.{os.getpid()}.tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            listener.bind(tmp)
            os.chmod(tmp, 0o600)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)  # accept drains a burst, then goes back to select
            os.rename(tmp, self.path)
        except BaseException:
            listener.close()
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="weft-control",
                                        daemon=True)
        self._thread.start()
        log.info("control socket at %s", self.path)

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        with self._lock:
            # Ends blocked reads and makes streaming writes fail, so connection threads finish.
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._wake_r.close()
        self._wake_w.close()

    def _remove_stale(self) -> None:
        """Remove a socket left by a crashed daemon, but never take over a live one."""
        state = socket_state(self.path)
        if state == NOT_A_SOCKET:
            raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
        if state == LISTENING:
            raise ControlError(f"another weft daemon is listening at {self.path}")
        if state == STALE:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass  # its daemon's stop() removed it meanwhile

    # -- stage one: reading request lines, all in the accept thread --------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        pending: dict[socket.socket, _Pending] = {}  # insertion order is age: oldest first
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    timeout = None
                    if pending:
                        oldest = next(iter(pending.values()))
                        timeout = max(oldest.deadline - time.monotonic(), 0.0)
                    for key, _ in sel.select(timeout):
                        if key.fileobj is self._listener:
                            self._accept(sel, pending)
                        elif key.fileobj in pending:  # not evicted earlier in this batch
                            self._receive_guarded(sel, pending, key.fileobj)
                    self._expire(sel, pending)
            finally:
                for conn in pending:
                    conn.close()
                self._set_pending(0)

    def _accept(self, sel: selectors.BaseSelector, pending: dict) -> None:
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):  # then back to select, so requests get read between
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: refuse this one, keep serving
                self._count("accept_failed", f"accept failed: {exc}")
                return
            self._count("accepted")
            if len(pending) >= MAX_PENDING:
                victim = next(iter(pending))
                self._receive_guarded(sel, pending, victim)  # its request may be waiting
                if victim in pending:
                    self._drop(sel, pending, victim)
                    self._reject(victim, "evicted: too many clients still sending their "
                                 "request", "evicted")
            conn.setblocking(False)
            pending[conn] = _Pending(time.monotonic() + REQUEST_TIMEOUT)
            sel.register(conn, selectors.EVENT_READ)
            self._set_pending(len(pending))

    def _receive_guarded(self, sel: selectors.BaseSelector, pending: dict,
                         conn: socket.socket) -> None:
        # This thread serves every client: one client's surprise must cost only that client.
        try:
            self._receive(sel, pending, conn)
        except Exception as exc:
            log.exception("control socket: reading a request failed")
            if conn in pending:
                self._drop(sel, pending, conn)
            self._reject(conn, f"internal error reading the request: {exc}", "internal_error")

    def _receive(self, sel: selectors.BaseSelector, pending: dict, conn: socket.socket) -> None:
        entry = pending[conn]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if chunk:
            entry.data += chunk
        if b"\n" in chunk or (not chunk and entry.data):
            # A complete line, or a client that half-closed after writing its request.
            self._drop(sel, pending, conn)
            self._start_request(conn, bytes(entry.data.split(b"\n", 1)[0]))
        elif not chunk:
            self._drop(sel, pending, conn)
            conn.close()  # connected and hung up without a word
        elif len(entry.data) > MAX_REQUEST:
            self._drop(sel, pending, conn)
            self._reject(conn, f"request too long (over {MAX_REQUEST} bytes)", "too_long")

    def _expire(self, sel: selectors.BaseSelector, pending: dict) -> None:
        now = time.monotonic()
        while pending:
            conn, entry = next(iter(pending.items()))
            if entry.deadline > now:
                return
            self._drop(sel, pending, conn)
            self._reject(conn, f"no complete request within {REQUEST_TIMEOUT:g}s", "timed_out")

    def _drop(self, sel: selectors.BaseSelector, pending: dict, conn: socket.socket) -> None:
        sel.unregister(conn)
        del pending[conn]
        self._set_pending(len(pending))

    def _start_request(self, conn: socket.socket, line: bytes) -> None:
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested deep
            self._reject(conn, f"request is not JSON: {exc}", "bad_request")
            return
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self._reject(conn, 'request must be an object with a "cmd" string', "bad_request")
            return
        with self._lock:
            busy = len(self._conns) >= MAX_ACTIVE
            if not busy:
                self._conns.add(conn)
        if busy:
            self._reject(conn, f"busy: {MAX_ACTIVE} requests in progress, try again", "busy")
            return
        conn.setblocking(True)
        conn.settimeout(SEND_TIMEOUT)  # a client that stops reading its answer lets go of us
        threading.Thread(target=self._serve_conn, args=(conn, request),
                         name="weft-control-conn", daemon=True).start()

    def _reject(self, conn: socket.socket, message: str, reason: str) -> None:
        """Count, answer with an error line if the socket takes it without blocking, close."""
        self._count(reason, message)
        try:
            conn.setblocking(False)
            conn.send(_encode({"error": message}))
        except OSError:
            pass
        conn.close()

    def _count(self, reason: str, message: str = "") -> None:
        with self._lock:
            self._counts[reason] += 1
        if not message:
            return
        # One warning per reason per minute: a flood of bad clients must not flood the log.
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_INTERVAL) >= WARN_INTERVAL:
            self._warned[reason] = now
            log.warning("control socket: %s (%s; counted in weft status, warned once a minute)",
                        message, reason)

    def _set_pending(self, n: int) -> None:
        with self._lock:
            self._pending_count = n

    # -- stage two: answering, one thread per complete request ------------------------------

    def _serve_conn(self, conn: socket.socket, request: dict) -> None:
        try:
            self._dispatch(conn, request)
            self._count("served")
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _dispatch(self, conn: socket.socket, request: dict) -> None:
        args = dict(request)
        cmd = args.pop("cmd")
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            conn.sendall(_encode({"error": f"unknown command {cmd!r} (known: {known})"}))
            return
        try:
            result = handler(args)
        except Exception as exc:  # a handler bug becomes an error reply, not a dead server
            log.exception("control command %s failed", cmd)
            conn.sendall(_encode({"error": f"{cmd} failed: {exc}"}))
            return
        if isinstance(result, dict):
            conn.sendall(_encode(result))
            return
        with self._lock:
            busy = self._streams >= MAX_STREAMS
            if not busy:
                self._streams += 1
        if busy:
            # Streams hold their thread for as long as the client likes; cap them below
            # MAX_ACTIVE so one-shot requests such as `status` always find a free slot.
            close = getattr(result, "close", None)
            if close is not None:
                close()
            self._count("busy", f"{MAX_STREAMS} streams open")
            conn.sendall(_encode({"error": f"busy: {MAX_STREAMS} streams open, try again"}))
            return
        try:
            self._stream(conn, cmd, result)
        finally:
            with self._lock:
                self._streams -= 1

    def _stream(self, conn: socket.socket, cmd: str, items: Iterator[dict | None]) -> None:
        try:
            for item in items:
                if self._stopping.is_set() or _peer_closed(conn):
                    return
                if item is None:
                    continue
                try:
                    conn.sendall(_encode(item))
                except OSError:
                    return  # client went away mid-write
        except Exception as exc:  # the iterator itself failed: tell the client why it ended
            log.exception("control stream %s failed", cmd)
            try:
                conn.sendall(_encode({"error": f"{cmd} failed: {exc}"}))
            except OSError:
                pass
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # runs the generator's finally: stop tracing now, not at GC time


def _peer_closed(conn: socket.socket) -> bool:
    """True once the client has hung up. Clients send nothing after the request, so readable
    means EOF (or a protocol violation, which also ends the stream)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _connect(path: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _connect_retrying(sock, path, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ControlError(f"no weft daemon at {path}: is `weft run` running?") from exc
    except PermissionError as exc:
        sock.close()
        raise ControlError(f"permission denied on {path}: run as root (the socket is 0600)"
                           ) from exc
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot connect to {path}: {exc}") from exc
    return sock


def _connect_retrying(sock: socket.socket, path: str, timeout: float | None) -> None:
    """connect(), waiting out a full listen backlog (a burst of other clients).

    A Unix socket with a timeout fails at once with EAGAIN when the backlog is full, where
    a blocking one would wait; the daemon drains the backlog continuously, so keep trying.
    """
    deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _send_request(sock: socket.socket, path: str, cmd: str, args: dict) -> None:
    try:
        sock.sendall(_encode({**args, "cmd": cmd}))
    except OSError as exc:
        raise ControlError(f"sending to {path} failed: {exc}") from exc


def _parse_reply(line: bytes, path: str) -> dict:
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"garbled reply from {path}: {exc}") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"unexpected reply from {path}: {reply!r}")
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    return reply


def control_request(path: str, cmd: str, /, *, io_timeout: float | None = 10.0,
                    **args: Any) -> dict:
    """Send one command and return its reply; ControlError on no daemon or a daemon error."""
    sock = _connect(path, io_timeout)
    try:
        _send_request(sock, path, cmd, args)
        with sock.makefile("rb") as reader:
            try:
                line = reader.readline()
            except OSError as exc:
                raise ControlError(f"reading from {path} failed: {exc}") from exc
    finally:
        sock.close()
    if not line:
        raise ControlError(f"the daemon at {path} closed the connection without a reply")
    return _parse_reply(line, path)


def control_stream(path: str, cmd: str, /, **args: Any) -> Iterator[dict]:
    """Send one command and yield each reply line; closing the iterator disconnects.

    Connects before returning, so a missing daemon raises ControlError here, not on first use.
    """
    sock = _connect(path, 10.0)
    try:
        _send_request(sock, path, cmd, args)
    except ControlError:
        sock.close()
        raise
    sock.settimeout(None)  # streams may be quiet for a long time (trace with no traffic)
    return _read_stream(sock, path)


def _read_stream(sock: socket.socket, path: str) -> Iterator[dict]:
    try:
        with sock.makefile("rb") as reader:
            for line in reader:
                yield _parse_reply(line, path)
    finally:
        sock.close()
