"""Prometheus metrics of a status snapshot, exposed through prometheus_client.

Everything comes from one DaemonStatus (weft.status, what `weft status` prints), read when a
scrape arrives: the data path keeps its counters in numpy arrays as it always does and is never
called per metric, so exposition costs it nothing. prometheus_client provides the metric
families, the text and OpenMetrics formats (chosen from the scraper's Accept header) and their
escaping. Fields are read by attribute: a field renamed in weft.status fails here and in the
tests, never as a metric silently gone. Only a section that is genuinely absent (None: no lease
yet, no data path, no iptables rules) yields fewer samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, generate_latest

from weft.status import BackendStatus, DaemonStatus


def render_metrics(status: DaemonStatus) -> str:
    """The snapshot in Prometheus' text format (0.0.4)."""
    return generate_latest(_Snapshot(status)).decode()


def negotiate(status: DaemonStatus, accept: str) -> tuple[str, bytes]:
    """(content type, body) of a snapshot in the format a scraper's Accept header asks for:
    OpenMetrics when it says so, else the text format."""
    encode, content_type = choose_encoder(accept)
    return content_type, encode(_Snapshot(status))


class _Snapshot:
    """A prometheus_client collector over one snapshot (what the encoders iterate)."""

    def __init__(self, status: DaemonStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        return metric_families(self.status)


def metric_families(status: DaemonStatus) -> Iterator[Metric]:
    yield from _traffic(status)
    yield from _lease_and_datapath(status)
    yield from _store(status)
    repair = status.backend.repair if status.backend is not None else None
    yield _labelled(CounterMetricFamily, "weft_repairs_total",
                    "Kernel state restored by the repair pass, by what was restored.", "what",
                    sorted(repair.repairs.items()) if repair is not None else ())
    if status.iptables is not None:  # absent when weft installs no rules
        yield _single(CounterMetricFamily, "weft_iptables_resyncs_total",
                      "Times the masquerade/forward iptables rules were found changed and "
                      "re-applied.", status.iptables.resyncs)


def _traffic(status: DaemonStatus) -> Iterator[Metric]:
    counters = status.backend.counters if status.backend is not None else None
    packets = CounterMetricFamily("weft_packets_total", "Packets forwarded, by direction.",
                                  labels=["direction"])
    octets = CounterMetricFamily("weft_bytes_total", "Bytes forwarded, by direction.",
                                 labels=["direction"])
    if counters is not None:  # none without a userspace data path (host-gw, alloc)
        for direction, figures in (("egress", counters.egress), ("ingress", counters.ingress)):
            packets.add_metric([direction], figures.packets)
            octets.add_metric([direction], figures.bytes)
    yield packets
    yield octets
    yield _labelled(CounterMetricFamily, "weft_drops_total", "Packets dropped, by reason.",
                    "reason", sorted(counters.drops.items()) if counters is not None else ())
    yield _labelled(CounterMetricFamily, "weft_slow_path_total",
                    "Packets handled by the slow path, by outcome.", "reason",
                    sorted(counters.slow_path.items()) if counters is not None else ())


def _lease_and_datapath(status: DaemonStatus) -> Iterator[Metric]:
    backend = status.backend
    yield _single(GaugeMetricFamily, "weft_peers", "Remote subnets currently programmed.",
                  len(backend.peers) if backend is not None else 0)
    lease = status.lease
    expiry = GaugeMetricFamily("weft_lease_expiry_seconds",
                               "Seconds until our subnet lease expires (absent without a lease).")
    if lease is not None and lease.expires_in is not None:
        expiry.add_metric([], lease.expires_in)
    yield expiry
    info = GaugeMetricFamily("weft_lease_info", "Our subnet lease; the value is always 1.",
                             labels=["subnet", "public_ip", "backend"])
    if lease is not None:
        info.add_metric([lease.subnet, lease.public_ip, lease.backend or ""], 1)
    yield info
    if lease is not None and lease.ipv6_subnet is not None:  # dual-stack (EnableIPv6) only
        yield from _ipv6_half(lease.ipv6_subnet, lease.public_ipv6, backend)
    yield _single(GaugeMetricFamily, "weft_ready",
                  "1 when the lease is held and peers are synced.", 1 if status.ready else 0)
    mode = GaugeMetricFamily("weft_datapath_info", "Datapath mode; the value is always 1.",
                             labels=["mode"])
    if backend is not None and backend.datapath is not None:
        mode.add_metric([backend.datapath.mode], 1)
    yield mode


def _ipv6_half(subnet: str, public_ipv6: str | None,
               backend: BackendStatus | None) -> Iterator[Metric]:
    """Our lease's IPv6 half, and how many peers are routed over IPv6 as well: weft_peers
    minus weft_peers_ipv6 is how many peers pods reach over IPv4 only. Families of their own,
    so that an IPv4-only host's weft_lease_info keeps the labels it always had."""
    info = GaugeMetricFamily("weft_lease_ipv6_info",
                             "Our lease's IPv6 half (EnableIPv6); the value is always 1.",
                             labels=["ipv6_subnet", "public_ipv6"])
    info.add_metric([subnet, public_ipv6 or ""], 1)
    yield info
    peers = backend.peers if backend is not None else ()
    yield _single(GaugeMetricFamily, "weft_peers_ipv6",
                  "Remote subnets whose IPv6 half is programmed too (dual-stack peers).",
                  sum(1 for peer in peers if peer.ipv6_subnet is not None))


def _store(status: DaemonStatus) -> Iterator[Metric]:
    """etcd reachability, the lease watch and our lease's upkeep (absent before they exist)."""
    etcd = status.etcd
    yield _single(GaugeMetricFamily, "weft_etcd_up",
                  "1 while etcd answers, 0 once a request failed.", 1 if etcd.up else 0)
    yield _single(GaugeMetricFamily, "weft_etcd_retries",
                  "Failed etcd requests in the current outage (0 while etcd answers).",
                  etcd.retries)
    yield _single(CounterMetricFamily, "weft_watch_restarts_total",
                  "Times the lease watch had to reconnect or re-list.", etcd.watch_restarts)
    yield _single(GaugeMetricFamily, "weft_watch_up",
                  "1 while the lease watch stream is connected.",
                  1 if etcd.watch == "connected" else 0)
    keeper = status.lease_keeper
    if keeper is not None:
        yield _single(CounterMetricFamily, "weft_lease_renew_failures_total",
                      "Renewals of our lease that etcd did not answer.", keeper.renew_failures)
        yield _single(CounterMetricFamily, "weft_lease_recreated_total",
                      "Times our lease key was gone (expired or deleted) and we put it back.",
                      keeper.recreated)
    refused = status.leases_rejected
    yield _labelled(CounterMetricFamily, "weft_leases_rejected_total",
                    "Leases refused (never programmed, never counted as holding a subnet), "
                    "by reason.", "reason", sorted(refused.total.items()))
    yield _single(GaugeMetricFamily, "weft_leases_refused",
                  "Lease keys in etcd refused now.", len(refused.current))
    peer_sync = status.peer_sync
    if peer_sync is not None:
        yield _single(GaugeMetricFamily, "weft_peers_pending_removal",
                      "Peers whose lease is gone, kept for the removal grace period.",
                      len(peer_sync.pending_removal))
        yield _single(CounterMetricFamily, "weft_peer_removals_cancelled_total",
                      "Peer removals cancelled because the lease came back within the grace.",
                      peer_sync.cancelled)


def _single(kind: type, name: str, help_text: str, value: float) -> Metric:
    family = kind(name, help_text)
    family.add_metric([], value)
    return family


def _labelled(kind: type, name: str, help_text: str, label: str,
              samples: Iterable[tuple[str, float]]) -> Metric:
    family = kind(name, help_text, labels=[label])
    for key, value in samples:
        family.add_metric([key], value)
    return family
