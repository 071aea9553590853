"""HTTP health and metrics endpoints: /healthz, /readyz and Prometheus /metrics.

Everything comes from one `status_provider()` snapshot (weft.status.DaemonStatus, what
`weft status` prints), so the endpoints never reach into daemon internals and a half-built
daemon (no lease yet, no datapath) simply yields fewer samples. The metrics themselves are in
metrics.py; `respond` does no IO, so the routes are tested without sockets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from weft.observe.http_guard import GuardedHandler, GuardedHTTPServer
from weft.observe.metrics import negotiate
from weft.status import DaemonStatus

log = logging.getLogger(__name__)

StatusProvider = Callable[[], DaemonStatus]


def not_ready_reason(status: DaemonStatus) -> str:
    """Why /readyz says 503, in words an operator can act on."""
    if status.reason:
        return status.reason
    if status.lease is None:
        return "no subnet lease yet (waiting for the network config or etcd?)"
    return "lease held but peers not yet synced"


class HealthServer:
    """Serves /healthz, /readyz and /metrics from a daemon thread until `stop()`."""

    def __init__(self, host: str, port: int, status_provider: StatusProvider) -> None:
        self.host = host
        self._requested_port = port
        self.status_provider = status_provider
        self._httpd: GuardedHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port 0); valid after start()."""
        if self._httpd is None:
            return self._requested_port
        return self._httpd.server_address[1]

    def start(self) -> None:
        # Connection cap, request deadline, head size and method limits: see http_guard.
        httpd = GuardedHTTPServer((self.host, self._requested_port), _make_handler(self))
        self._httpd = httpd
        # shutdown() waits until serve_forever next looks at its flag: at most poll_interval,
        # kept short so that stopping the daemon is not held up here.
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="weft-health", daemon=True)
        self._thread.start()
        log.info("health and metrics on http://%s:%d/", self.host, self.port)

    def stats(self) -> dict[str, int]:
        """Connections accepted, and refused or cut off by reason (see http_guard)."""
        return self._httpd.stats() if self._httpd is not None else {}

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def respond(self, path: str, accept: str = "") -> tuple[int, str, str]:
        """(status code, content type, body) for a request path and Accept header; no IO."""
        route = path.split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        if route == "/healthz":
            # Liveness means the process answers; readiness is a separate question.
            return 200, text, "ok\n"
        if route not in ("/readyz", "/metrics"):
            return 404, text, f"not found: {route}\n"
        try:
            status = self.status_provider()
            if route == "/metrics":
                content_type, body = negotiate(status, accept)
                return 200, content_type, body.decode()
        except Exception as exc:  # the provider is daemon code; one bad snapshot is not fatal
            log.exception("status provider failed for %s", route)
            return 500, text, f"status unavailable: {type(exc).__name__}: {exc}\n"
        if status.ready:
            return 200, text, "ready\n"
        return 503, text, f"not ready: {not_ready_reason(status)}\n"


def _make_handler(server: HealthServer) -> type[GuardedHandler]:
    class Handler(GuardedHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._reply(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(send_body=False)

        def _reply(self, send_body: bool) -> None:
            code, content_type, body = server.respond(self.path, self.headers.get("Accept", ""))
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if send_body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            # Scrapes every few seconds would flood stderr; keep them at debug level.
            log.debug("%s - %s", self.address_string(), format % args)

    return Handler
