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
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CONTROL_SOCKET = "/run/weft/weft.sock"
MAX_REQUEST = 1 << 20  # one request line; anything longer is a confused or hostile client

Handler = Callable[[dict], dict | Iterator[dict | None]]


class ControlError(Exception):
    """The control socket is unusable or the daemon reported an error."""


def _encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class ControlServer:
    """Serves `handlers` on a 0600 Unix socket at `path`, one thread per connection."""

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

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
            listener.listen(16)
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
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise ControlError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise ControlError(f"another weft daemon is listening at {self.path}")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = [key.fileobj for key, _ in sel.select()]
                if self._listener not in ready:
                    continue
                try:
                    conn, _ = self._listener.accept()
                except OSError:
                    continue
                with self._lock:
                    self._conns.add(conn)
                threading.Thread(target=self._serve_conn, args=(conn,), name="weft-control-conn",
                                 daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        try:
            request = self._read_request(conn)
            if request is not None:
                self._dispatch(conn, request)
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _read_request(self, conn: socket.socket) -> dict | None:
        conn.settimeout(10.0)  # a client that connects and says nothing must not pin a thread
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                conn.sendall(_encode({"error": "request too long"}))
                return None
        conn.settimeout(None)
        try:
            request = json.loads(data.split(b"\n", 1)[0])
        except ValueError as exc:
            conn.sendall(_encode({"error": f"request is not JSON: {exc}"}))
            return None
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            conn.sendall(_encode({"error": 'request must be an object with a "cmd" string'}))
            return None
        return request

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
        else:
            self._stream(conn, cmd, result)

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
        sock.connect(path)
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
