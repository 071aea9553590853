import json
import urllib.error
import urllib.request
from dataclasses import replace
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from status_samples import ETCD_DOWN, FULL, VXLAN, WAITING

from weft.observe.http import HealthServer
from weft.observe.metrics import render_metrics
from weft.observe.status_text import format_status
from weft.status import BackendStatus, DaemonStatus, DatapathStatus, StatusFormatError


def parse_samples(text: str) -> dict[str, float]:
    """'name{labels}' -> value, read by prometheus_client's own parser (which rejects anything
    that is not valid exposition text)."""
    assert text.endswith("\n")
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type in ("counter", "gauge"), family
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def test_render_metrics_full_status():
    samples = parse_samples(render_metrics(FULL))
    assert samples['weft_packets_total{direction="egress"}'] == 10
    assert samples['weft_packets_total{direction="ingress"}'] == 7
    assert samples['weft_bytes_total{direction="egress"}'] == 1500
    assert samples['weft_drops_total{reason="wrong_vni"}'] == 3
    assert samples['weft_drops_total{reason="unknown_sender"}'] == 1
    assert samples['weft_slow_path_total{reason="arp_replied"}'] == 4
    assert samples["weft_peers"] == 2
    assert samples["weft_lease_expiry_seconds"] == 86000
    assert samples["weft_ready"] == 1
    assert samples['weft_datapath_info{mode="plain"}'] == 1
    assert samples['weft_lease_info{backend="vxlan",public_ip="192.0.2.11",'
                   'subnet="10.1.15.0/24"}'] == 1
    assert samples['weft_leases_rejected_total{reason="public_ip"}'] == 2
    assert samples["weft_leases_refused"] == 1
    assert samples['weft_repairs_total{what="route"}'] == 3
    assert samples["weft_iptables_resyncs_total"] == 3


# Every family /metrics exposes, by the section it is read from. A field renamed in
# weft.status breaks the family that reads it (AttributeError), so this fails, not a scrape.
FAMILIES = {
    "weft_packets", "weft_bytes", "weft_drops", "weft_slow_path",  # backend.counters
    "weft_peers", "weft_datapath_info", "weft_repairs",  # backend
    "weft_lease_expiry_seconds", "weft_lease_info", "weft_ready",  # lease, ready
    "weft_etcd_up", "weft_etcd_retries", "weft_watch_restarts", "weft_watch_up",  # etcd
    "weft_lease_renew_failures", "weft_lease_recreated",  # lease_keeper
    "weft_leases_rejected", "weft_leases_refused",  # leases_rejected
    "weft_peers_pending_removal", "weft_peer_removals_cancelled",  # peer_sync
    "weft_iptables_resyncs",  # iptables
}


def test_a_full_snapshot_has_every_family_with_samples():
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(FULL))}
    assert set(families) == FAMILIES
    assert [name for name, f in families.items() if not f.samples] == []


def test_a_renamed_field_fails_the_render():
    """metrics reads the snapshot by attribute: a field it needs that is not there is an error,
    never a family silently left out."""
    renamed = SimpleNamespace(**{**vars(FULL), "peer_sync": SimpleNamespace(
        pending=("10.1.16.0/24",), cancelled=5)})
    with pytest.raises(AttributeError, match="pending_removal"):
        render_metrics(renamed)


def test_render_metrics_help_and_type_once_per_family():
    text = render_metrics(FULL)
    for name in ("weft_packets_total", "weft_bytes_total", "weft_drops_total",
                 "weft_slow_path_total", "weft_peers", "weft_lease_expiry_seconds", "weft_ready"):
        assert text.count(f"# HELP {name} ") == 1
        assert text.count(f"# TYPE {name} ") == 1
    assert "# TYPE weft_packets_total counter" in text
    assert "# TYPE weft_ready gauge" in text


def test_absent_sections_give_no_samples_not_made_up_ones():
    samples = parse_samples(render_metrics(WAITING))
    assert samples["weft_ready"] == 0
    assert samples["weft_peers"] == 0
    assert samples["weft_etcd_up"] == 1
    assert "weft_lease_expiry_seconds" not in samples  # no lease: no made-up expiry
    assert not any(name.startswith(("weft_packets_total", "weft_lease_renew_failures",
                                    "weft_peers_pending", "weft_iptables")) for name in samples)
    host_gw = replace(FULL, backend=BackendStatus(kind="host-gw", peers=VXLAN.peers,
                                                  datapath=DatapathStatus(mode="kernel routes")))
    samples = parse_samples(render_metrics(host_gw))
    assert samples['weft_datapath_info{mode="kernel routes"}'] == 1 and samples["weft_peers"] == 2
    assert not any(name.startswith("weft_packets_total") for name in samples)  # kernel routes


def test_label_values_are_escaped():
    weird = 'we"ird\\\nmode'
    status = replace(FULL, backend=replace(VXLAN, datapath=DatapathStatus(mode=weird)))
    [family] = [f for f in text_string_to_metric_families(render_metrics(status))
                if f.name == "weft_datapath_info"]
    assert family.samples[0].labels == {"mode": weird}


def test_the_json_keeps_the_keys_tools_read():
    """The control socket's JSON: tools/lab/cluster.py, the netns tests and operators' scripts
    read these keys, so a rename must fail here."""
    data = json.loads(json.dumps(FULL.to_json()))
    assert set(data) == {"ready", "lease", "etcd", "leases_rejected", "lease_keeper",
                         "peer_sync", "backend", "device", "peers", "unprogrammed", "counters",
                         "datapath", "trace", "repairs", "repair_failing", "clients", "iptables"}
    assert data["peers"][0] == {"subnet": "10.1.16.0/24", "public_ip": "192.0.2.12",
                                "vtep_mac": "aa:bb:cc:dd:ee:01"}
    assert data["counters"]["egress"]["forwarded"] == 10 and data["counters"]["drops"]
    assert data["datapath"] == {"mode": "plain", "batch": 64, "io": "recvmmsg"}
    assert data["leases_rejected"]["current"]["10.1.9.0-24"]["reason"] == "public_ip"
    assert data["lease_keeper"]["recreated"] == 1 and data["peer_sync"]["cancelled"] == 5
    assert data["iptables"]["resyncs"] == 3 and data["trace"]["subscribers"] == 0
    assert set(WAITING.to_json()) == {"ready", "lease", "etcd", "leases_rejected"}


def test_weft_status_reads_the_json_back():
    for status in (FULL, WAITING, OUTAGE):
        assert DaemonStatus.from_json(json.loads(json.dumps(status.to_json()))) == status
    data = FULL.to_json()
    del data["counters"]["egress"]["packets"]
    with pytest.raises(StatusFormatError, match="packets"):
        DaemonStatus.from_json(data)
    newer = {**FULL.to_json(), "something_new": 1}  # a newer daemon: ignored, not an error
    assert DaemonStatus.from_json(newer) == FULL


@pytest.fixture
def server():
    state = {"status": FULL, "fail": False}

    def provider():
        if state["fail"]:
            raise RuntimeError("datapath snapshot failed")
        return state["status"]

    srv = HealthServer("127.0.0.1", 0, provider)
    srv.start()
    yield srv, state
    srv.stop()


def get(srv: HealthServer, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{srv.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_port_zero_picks_a_port(server):
    srv, _ = server
    assert srv.port > 0


def test_healthz(server):
    srv, state = server
    assert get(srv, "/healthz")[::2] == (200, "ok\n")
    state["fail"] = True  # liveness does not depend on the provider
    assert get(srv, "/healthz")[0] == 200


def test_readyz_both_states(server):
    srv, state = server
    assert get(srv, "/readyz")[::2] == (200, "ready\n")
    state["status"] = WAITING
    code, _, body = get(srv, "/readyz")
    assert code == 503
    assert body.startswith("not ready: no subnet lease")
    state["status"] = replace(WAITING, reason="backend starting")
    assert get(srv, "/readyz")[::2] == (503, "not ready: backend starting\n")


def test_metrics_over_http(server):
    srv, _ = server
    code, content_type, body = get(srv, "/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert parse_samples(body)["weft_ready"] == 1


def test_openmetrics_when_the_scraper_asks_for_it(server):
    """Prometheus sends Accept: application/openmetrics-text first; the answer follows it."""
    srv, _ = server
    request = urllib.request.Request(
        f"http://127.0.0.1:{srv.port}/metrics",
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        content_type, body = resp.headers["Content-Type"], resp.read().decode()
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(body)}
    assert families["weft_packets"].type == "counter"
    assert {s.labels["direction"]: s.value for s in families["weft_packets"].samples} == {
        "egress": 10, "ingress": 7}


def test_unknown_path_is_404(server):
    srv, _ = server
    assert get(srv, "/nope")[0] == 404


def test_provider_exception_is_500_and_server_survives(server):
    srv, state = server
    state["fail"] = True
    for path in ("/metrics", "/readyz"):
        code, _, body = get(srv, path)
        assert code == 500
        assert "datapath snapshot failed" in body
    state["fail"] = False
    assert get(srv, "/metrics")[0] == 200


def test_stop_releases_the_port():
    srv = HealthServer("127.0.0.1", 0, lambda: WAITING)
    srv.start()
    port = srv.port
    assert get(srv, "/healthz")[0] == 200
    srv.stop()
    with pytest.raises(urllib.error.URLError):  # nothing listens there any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    again = HealthServer("127.0.0.1", port, lambda: {})  # and the port can be bound again
    again.start()
    try:
        assert again.port == port
        assert get(again, "/healthz")[0] == 200
    finally:
        again.stop()


OUTAGE = replace(FULL, ready=False, reason="renewing lease 10.1.15.0/24 has failed for 9s",
                 etcd=ETCD_DOWN)


def test_metrics_say_etcd_is_down_and_count_the_lease_upkeep():
    samples = parse_samples(render_metrics(OUTAGE))
    assert samples["weft_etcd_up"] == 0 and samples["weft_etcd_retries"] == 7
    assert samples["weft_watch_up"] == 0 and samples["weft_watch_restarts_total"] == 2
    assert samples["weft_lease_renew_failures_total"] == 3
    assert samples["weft_lease_recreated_total"] == 1
    assert samples["weft_peers_pending_removal"] == 1
    assert samples["weft_peer_removals_cancelled_total"] == 5
    assert samples["weft_ready"] == 0


def test_status_text_says_etcd_is_unreachable_and_why_not_ready():
    text = format_status(OUTAGE)
    assert "state:     not ready (renewing lease 10.1.15.0/24 has failed for 9s)" in text
    assert "etcd:      unreachable since " in text
    assert "(12s ago), 7 retries: UNAVAILABLE: connection refused" in text
    assert "watch:     reconnecting (2 restarts)" in text
    assert "renewals:  4 ok, 3 failed, 1 re-created" in text
    assert "pending:   peers 10.1.16.0/24 lost their lease" in text
    healthy = format_status(replace(OUTAGE, ready=True, etcd=replace(ETCD_DOWN, up=True)))
    assert "etcd:      reachable" in healthy and "state:     ready\n" in healthy


def test_readyz_gives_the_reason():
    server = HealthServer("127.0.0.1", 0, lambda: OUTAGE)
    code, _, body = server.respond("/readyz")
    assert code == 503 and body == "not ready: renewing lease 10.1.15.0/24 has failed for 9s\n"
