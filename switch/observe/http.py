"""HTTP health and metrics endpoints: /healthz, /readyz and Prometheus /metrics.

Everything comes from one `status_provider()` snapshot (the dict `weft status` prints), so the
endpoints never reach into daemon internals and a half-built daemon (no lease yet, no datapath)
simply yields fewer samples. `render_metrics` is pure so the exposition format is tested without
sockets.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from weft.observe.http_guard import GuardedHandler, GuardedHTTPServer
from weft.packet.reasons import reason_name

log = logging.getLogger(__name__)

StatusProvider = Callable[[], dict]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: object) -> str:
    """Exposition-format escaping: backslash, double quote and newline, nothing else."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # HELP text escapes only backslash and newline (quotes are legal there).
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _number(value: Any) -> float | None:
    """A sample value, or None for anything that is not a number (skipped, not fatal)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _reason_label(key: Any) -> str:
    # Counters may be keyed by Reason code (int or "5") before names are applied; name them here
    # so dashboards see one label whichever form the datapath reported.
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        return reason_name(int(key))
    return str(key)


def _by_reason(counts: Any) -> list[tuple[str, float]]:
    """(label, total) sorted by label; a reason given both by name and by code is summed,
    because two samples with identical labels would make the whole scrape invalid."""
    totals: dict[str, float] = {}
    for key, value in _mapping(counts).items():
        number = _number(value)
        if number is not None:
            label = _reason_label(key)
            totals[label] = totals.get(label, 0.0) + number
    return sorted(totals.items())


class _Family:
    """One metric family: HELP/TYPE header plus its samples, in insertion order."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: Any, **labels: Any) -> None:
        number = _number(value)
        if number is not None:
            self.samples.append(({k: str(v) for k, v in labels.items()}, number))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            if labels:
                inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
                yield f"{self.name}{{{inner}}} {_format_value(value)}"
            else:
                yield f"{self.name} {_format_value(value)}"


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def render_metrics(status: dict) -> str:
    """Prometheus text exposition (format 0.0.4) of a status snapshot; tolerant of missing keys."""
    counters = _mapping(status.get("counters"))
    packets = _Family("weft_packets_total", "counter", "Packets forwarded, by direction.")
    octets = _Family("weft_bytes_total", "counter", "Bytes forwarded, by direction.")
    for direction in ("egress", "ingress"):
        per_dir = _mapping(counters.get(direction))
        packets.add(per_dir.get("packets", 0), direction=direction)
        octets.add(per_dir.get("bytes", 0), direction=direction)

    drops = _Family("weft_drops_total", "counter", "Packets dropped, by reason.")
    for reason, value in _by_reason(counters.get("drops")):
        drops.add(value, reason=reason)
    slow = _Family("weft_slow_path_total", "counter",
                   "Packets handled by the slow path, by outcome.")
    for reason, value in _by_reason(counters.get("slow_path")):
        slow.add(value, reason=reason)

    peers = status.get("peers")
    peer_gauge = _Family("weft_peers", "gauge", "Remote subnets currently programmed.")
    peer_gauge.add(len(peers) if isinstance(peers, list | tuple) else 0)

    lease = _mapping(status.get("lease"))
    expiry = _Family("weft_lease_expiry_seconds", "gauge",
                     "Seconds until our subnet lease expires (absent without a lease).")
    expiry.add(lease.get("expires_in"))
    lease_info = _Family("weft_lease_info", "gauge", "Our subnet lease; the value is always 1.")
    if lease:
        lease_info.add(1, subnet=lease.get("subnet", ""), public_ip=lease.get("public_ip", ""),
                       backend=lease.get("backend", ""))

    ready = _Family("weft_ready", "gauge", "1 when the lease is held and peers are synced.")
    ready.add(1 if status.get("ready") else 0)

    datapath = _mapping(status.get("datapath"))
    dp_info = _Family("weft_datapath_info", "gauge", "Datapath mode; the value is always 1.")
    if "mode" in datapath:
        dp_info.add(1, mode=datapath["mode"])

    families = (packets, octets, drops, slow, peer_gauge, expiry, lease_info, ready, dp_info,
                *_store_families(status), _repairs_family(status), _iptables_family(status))
    lines = [line for family in families for line in family.render()]
    return "\n".join(lines) + "\n"


def _repairs_family(status: dict) -> _Family:
    """Kernel state the daemon put back after something else removed it, by what."""
    family = _Family("weft_repairs_total", "counter",
                     "Kernel state restored by the repair pass, by what was restored.")
    for what, value in sorted(_mapping(status.get("repairs")).items()):
        family.add(value, what=what)
    return family


def _iptables_family(status: dict) -> _Family:
    """Re-applications of our iptables rules after something changed them (absent when
    weft installs none)."""
    family = _Family("weft_iptables_resyncs_total", "counter",
                     "Times the masquerade/forward iptables rules were found changed and "
                     "re-applied.")
    iptables = _mapping(status.get("iptables"))
    if iptables:
        family.add(iptables.get("resyncs", 0))
    return family


def _store_families(status: dict) -> tuple[_Family, ...]:
    """etcd reachability, the lease watch and our lease's upkeep (absent before they exist)."""
    etcd = _mapping(status.get("etcd"))
    keeper = _mapping(status.get("lease_keeper"))
    peer_sync = _mapping(status.get("peer_sync"))
    up = _Family("weft_etcd_up", "gauge", "1 while etcd answers, 0 once a request failed.")
    retries = _Family("weft_etcd_retries", "gauge",
                      "Failed etcd requests in the current outage (0 while etcd answers).")
    restarts = _Family("weft_watch_restarts_total", "counter",
                       "Times the lease watch had to reconnect or re-list.")
    watch = _Family("weft_watch_up", "gauge", "1 while the lease watch stream is connected.")
    if etcd:
        up.add(1 if etcd.get("up") else 0)
        retries.add(etcd.get("retries", 0))
        restarts.add(etcd.get("watch_restarts", 0))
        watch.add(1 if etcd.get("watch") == "connected" else 0)
    renew_failures = _Family("weft_lease_renew_failures_total", "counter",
                             "Renewals of our lease that etcd did not answer.")
    recreated = _Family("weft_lease_recreated_total", "counter",
                        "Times our lease key was gone (expired or deleted) and we put it back.")
    if keeper:
        renew_failures.add(keeper.get("renew_failures", 0))
        recreated.add(keeper.get("recreated", 0))
    pending = _Family("weft_peers_pending_removal", "gauge",
                      "Peers whose lease is gone, kept for the removal grace period.")
    deferred = _Family("weft_peer_removals_cancelled_total", "counter",
                       "Peer removals cancelled because the lease came back within the grace.")
    if peer_sync:
        pending.add(len(peer_sync.get("pending_removal") or ()))
        deferred.add(peer_sync.get("cancelled", 0))
    return (up, retries, restarts, watch, renew_failures, recreated, pending, deferred)


def not_ready_reason(status: dict) -> str:
    """Why /readyz says 503, in words an operator can act on."""
    explicit = status.get("reason")
    if explicit:
        return str(explicit)
    if not status.get("lease"):
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
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
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

    def respond(self, path: str) -> tuple[int, str, str]:
        """(status code, content type, body) for a request path; no IO, so it is easy to test."""
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
                return 200, METRICS_CONTENT_TYPE, render_metrics(status)
        except Exception as exc:  # the provider is daemon code; one bad snapshot is not fatal
            log.exception("status provider failed for %s", route)
            return 500, text, f"status unavailable: {type(exc).__name__}: {exc}\n"
        if status.get("ready"):
            return 200, text, "ready\n"
        return 503, text, f"not ready: {not_ready_reason(status)}\n"


def _make_handler(server: HealthServer) -> type[GuardedHandler]:
    class Handler(GuardedHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            self._reply(send_body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(send_body=False)

        def _reply(self, send_body: bool) -> None:
            code, content_type, body = server.respond(self.path)
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
