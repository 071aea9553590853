"""Limits for the health/metrics HTTP server, so hostile clients cannot starve /healthz.

http.server alone gives every connection a thread for as long as the client likes: a slowloris
(headers sent a byte at a time, or never finished) pins threads forever, and a flood of
connections makes threads without bound. Here:

- a request must arrive completely within REQUEST_TIMEOUT seconds of the connection (or of the
  previous response on a keep-alive connection), and its head within MAX_HEAD_BYTES (431);
- at most MAX_CONNECTIONS are open; a new one beyond that evicts the oldest connection still
  sending its request (a prober that sends at once is rarely the oldest), and is refused with
  503 only when every open connection is busy answering;
- methods other than GET and HEAD get 405 with an Allow header, garbage gets 400.

Everything refused or cut off is counted in `stats()`.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
MAX_HEAD_BYTES = 64 * 1024  # request line plus headers; a probe or scrape sends a few hundred
MAX_CONNECTIONS = 64
DRAIN_TIMEOUT = 1.0  # after a 414/431, how long to swallow the rest of an oversized request
DRAIN_BYTES = 1 << 20
ALLOWED_METHODS = ("GET", "HEAD")
COUNTED = ("accepted", "bad_request", "too_large", "bad_method", "timed_out", "evicted", "busy")
_BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
               b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n")


class GuardedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap that evicts slow senders first."""

    daemon_threads = True  # a stuck scrape must not block process exit
    request_queue_size = 128  # the default 5 drops SYNs (seconds of retransmit) under a burst

    def __init__(self, address: tuple[str, int], handler: type[GuardedHandler]) -> None:
        super().__init__(address, handler)
        self._lock = threading.Lock()
        self._open: dict[socket.socket, bool] = {}  # connection -> still reading its request
        self.counts: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        with self._lock:
            counts = {reason: self.counts.get(reason, 0) for reason in COUNTED}
            return {**counts, **self.counts, "open": len(self._open)}

    def count(self, reason: str) -> None:
        with self._lock:
            self.counts[reason] += 1

    def set_reading(self, conn: socket.socket, reading: bool) -> None:
        with self._lock:
            if conn in self._open:
                self._open[conn] = reading

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.counts["accepted"] += 1
            victim = None
            if len(self._open) >= MAX_CONNECTIONS:
                victim = next((c for c, reading in self._open.items() if reading), None)
                if victim is None:
                    self.counts["busy"] += 1
                else:
                    self.counts["evicted"] += 1
                    del self._open[victim]
            admitted = len(self._open) < MAX_CONNECTIONS
            if admitted:
                self._open[request] = True
        if victim is not None:
            # Its thread is blocked in recv: shutting down makes that return and the thread end.
            try:
                victim.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not admitted:
            try:
                request.setblocking(False)
                request.send(_BUSY_REPLY)
            except OSError:
                pass
            request.close()
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr for every client that misbehaves.
        log.debug("health endpoint: error serving %s", client_address, exc_info=True)


class _HeadLimitedReader(io.RawIOBase):
    """The socket as a raw stream that enforces the handler's deadline and head budget."""

    def __init__(self, conn: socket.socket, handler: GuardedHandler) -> None:
        self.conn = conn
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        handler = self.handler
        left = handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not complete in time")
        if handler.head_budget <= 0:
            raise http.client.LineTooLong("request head")
        self.conn.settimeout(left)
        view = memoryview(buffer)[:handler.head_budget]
        n = self.conn.recv_into(view)
        handler.head_budget -= n
        return n


class GuardedHandler(BaseHTTPRequestHandler):
    """Request handling with the limits above; subclasses add do_GET/do_HEAD."""

    protocol_version = "HTTP/1.1"
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"
    server: GuardedHTTPServer
    deadline = 0.0
    head_budget = 0

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_HeadLimitedReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.head_budget = MAX_HEAD_BYTES
        self.server.set_reading(self.connection, True)
        try:
            super().handle_one_request()
        except TimeoutError:  # while reading headers (the request line's case is handled)
            self.server.count("timed_out")
            self.close_connection = True
        except http.client.LineTooLong:  # head over budget before its request line ended
            self.close_connection = True
            self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
            self.send_error(431, "Request header fields too large")
        except OSError:  # evicted, or the client went away
            self.close_connection = True

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.set_reading(self.connection, False)
        if ok and self.command not in ALLOWED_METHODS:
            self._method_not_allowed()
            return False
        return ok

    def _method_not_allowed(self) -> None:
        self.server.count("bad_method")
        body = f"method {self.command} not allowed\n".encode(errors="replace")
        self.send_response(405)
        self.send_header("Allow", ", ".join(ALLOWED_METHODS))
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        self.server.count("too_large" if code in (414, 431) else "bad_request")
        self.server.set_reading(self.connection, False)
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # Garbage parses as HTTP/0.9, which has no status line; say what went wrong.
            self.request_version = "HTTP/1.0"
        try:
            super().send_error(code, message, explain)
            if code in (414, 431):
                self._drain_before_close()
        except OSError:
            self.close_connection = True
        # 400-class errors leave the rest of the stream unparseable: never keep it alive.
        self.close_connection = True

    def _drain_before_close(self) -> None:
        """Read and drop what the client is still sending, briefly, before closing.

        Closing with unread input makes the kernel send a reset, which can destroy our error
        reply before the client reads it: the client would see a reset instead of the 431.
        """
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(DRAIN_TIMEOUT)
        left = DRAIN_BYTES
        while left > 0 and (chunk := self.connection.recv(min(left, 65536))):
            left -= len(chunk)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s - %s %s", self.address_string(), self.requestline, code)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        if "timed out" in format:
            self.server.count("timed_out")
        log.debug("%s - %s", self.address_string(), format % args)
