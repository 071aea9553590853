"""Prometheus metrics of a status snapshot, exposed through prometheus_client.

Everything comes from one status dict (what `weft status` prints), read when a scrape arrives:
the data path keeps its counters in numpy arrays as it always does and is never called per
metric, so exposition costs it nothing. prometheus_client provides the metric families, the
text and OpenMetrics formats (chosen from the scraper's Accept header) and their escaping.
Missing keys yield fewer samples (a half-built daemon has no lease or data path yet), and
values that are not numbers are skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest

from weft.packet.reasons import reason_name


def render_metrics(status: dict) -> str:
    """The snapshot in Prometheus' text format (0.0.4)."""
    return generate_latest(_Snapshot(status)).decode()


def negotiate(status: dict, accept: str) -> tuple[str, bytes]:
    """(content type, body) of a snapshot in the format a scraper's Accept header asks for:
    OpenMetrics when it says so, else the text format."""
    encode, content_type = choose_encoder(accept)
    return content_type, encode(_Snapshot(status))


class _Snapshot:
    """A prometheus_client collector over one status dict (what the encoders iterate)."""

    def __init__(self, status: dict) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        return metric_families(self.status)


def metric_families(status: dict) -> Iterator[Metric]:
    yield from _traffic(status)
    yield from _lease_and_datapath(status)
    yield from _store(status)
    yield _labelled(CounterMetricFamily, "weft_repairs_total",
                    "Kernel state restored by the repair pass, by what was restored.", "what",
                    sorted(_mapping(status.get("repairs")).items()))
    iptables = _mapping(status.get("iptables"))
    if iptables:  # absent when weft installs no rules
        yield _single(CounterMetricFamily, "weft_iptables_resyncs_total",
                      "Times the masquerade/forward iptables rules were found changed and "
                      "re-applied.", iptables.get("resyncs", 0))


def _traffic(status: dict) -> Iterator[Metric]:
    counters = _mapping(status.get("counters"))
    packets = CounterMetricFamily("weft_packets_total", "Packets forwarded, by direction.",
                                  labels=["direction"])
    octets = CounterMetricFamily("weft_bytes_total", "Bytes forwarded, by direction.",
                                 labels=["direction"])
    for direction in ("egress", "ingress"):
        per_direction = _mapping(counters.get(direction))
        _add(packets, per_direction.get("packets", 0), direction)
        _add(octets, per_direction.get("bytes", 0), direction)
    yield packets
    yield octets
    yield _labelled(CounterMetricFamily, "weft_drops_total", "Packets dropped, by reason.",
                    "reason", _by_reason(counters.get("drops")))
    yield _labelled(CounterMetricFamily, "weft_slow_path_total",
                    "Packets handled by the slow path, by outcome.", "reason",
                    _by_reason(counters.get("slow_path")))


def _lease_and_datapath(status: dict) -> Iterator[Metric]:
    peers = status.get("peers")
    yield _single(GaugeMetricFamily, "weft_peers", "Remote subnets currently programmed.",
                  len(peers) if isinstance(peers, list | tuple) else 0)
    lease = _mapping(status.get("lease"))
    expiry = GaugeMetricFamily("weft_lease_expiry_seconds",
                               "Seconds until our subnet lease expires (absent without a lease).")
    _add(expiry, lease.get("expires_in"))
    yield expiry
    info = GaugeMetricFamily("weft_lease_info", "Our subnet lease; the value is always 1.",
                             labels=["subnet", "public_ip", "backend"])
    if lease:
        _add(info, 1, lease.get("subnet", ""), lease.get("public_ip", ""),
             lease.get("backend", ""))
    yield info
    yield _single(GaugeMetricFamily, "weft_ready",
                  "1 when the lease is held and peers are synced.", 1 if status.get("ready") else 0)
    datapath = _mapping(status.get("datapath"))
    mode = GaugeMetricFamily("weft_datapath_info", "Datapath mode; the value is always 1.",
                             labels=["mode"])
    if "mode" in datapath:
        _add(mode, 1, datapath["mode"])
    yield mode


def _store(status: dict) -> Iterator[Metric]:
    """etcd reachability, the lease watch and our lease's upkeep (absent before they exist)."""
    etcd = _mapping(status.get("etcd"))
    if etcd:
        yield _single(GaugeMetricFamily, "weft_etcd_up",
                      "1 while etcd answers, 0 once a request failed.", 1 if etcd.get("up") else 0)
        yield _single(GaugeMetricFamily, "weft_etcd_retries",
                      "Failed etcd requests in the current outage (0 while etcd answers).",
                      etcd.get("retries", 0))
        yield _single(CounterMetricFamily, "weft_watch_restarts_total",
                      "Times the lease watch had to reconnect or re-list.",
                      etcd.get("watch_restarts", 0))
        yield _single(GaugeMetricFamily, "weft_watch_up",
                      "1 while the lease watch stream is connected.",
                      1 if etcd.get("watch") == "connected" else 0)
    keeper = _mapping(status.get("lease_keeper"))
    if keeper:
        yield _single(CounterMetricFamily, "weft_lease_renew_failures_total",
                      "Renewals of our lease that etcd did not answer.",
                      keeper.get("renew_failures", 0))
        yield _single(CounterMetricFamily, "weft_lease_recreated_total",
                      "Times our lease key was gone (expired or deleted) and we put it back.",
                      keeper.get("recreated", 0))
    refused = _mapping(status.get("leases_rejected"))
    if refused:
        yield _labelled(CounterMetricFamily, "weft_leases_rejected_total",
                        "Leases refused (never programmed, never counted as holding a subnet), "
                        "by reason.", "reason", sorted(_mapping(refused.get("total")).items()))
        yield _single(GaugeMetricFamily, "weft_leases_refused",
                      "Lease keys in etcd refused now.", len(_mapping(refused.get("current"))))
    peer_sync = _mapping(status.get("peer_sync"))
    if peer_sync:
        yield _single(GaugeMetricFamily, "weft_peers_pending_removal",
                      "Peers whose lease is gone, kept for the removal grace period.",
                      len(peer_sync.get("pending_removal") or ()))
        yield _single(CounterMetricFamily, "weft_peer_removals_cancelled_total",
                      "Peer removals cancelled because the lease came back within the grace.",
                      peer_sync.get("cancelled", 0))


def _single(kind: type, name: str, help_text: str, value: Any) -> Metric:
    family = kind(name, help_text)
    _add(family, value)
    return family


def _labelled(kind: type, name: str, help_text: str, label: str,
              samples: Iterable[tuple[Any, Any]]) -> Metric:
    family = kind(name, help_text, labels=[label])
    for key, value in samples:
        _add(family, value, str(key))
    return family


def _add(family: Metric, value: Any, *labels: Any) -> None:
    number = _number(value)
    if number is not None:
        family.add_metric([str(label) for label in labels], number)


def _number(value: Any) -> float | None:
    """A sample value, or None for anything that is not a number (skipped, not fatal)."""
    if isinstance(value, bool | int | float):
        return float(value)
    return None


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


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
