import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from weft.observe.http import HealthServer
from weft.observe.metrics import render_metrics

STATUS = {
    "ready": True,
    "lease": {"subnet": "10.1.15.0/24", "public_ip": "192.0.2.11", "backend": "vxlan",
              "expires_in": 86000.0},
    "peers": [
        {"subnet": "10.1.16.0/24", "public_ip": "192.0.2.12", "vtep_mac": "aa:bb:cc:dd:ee:01"},
        {"subnet": "10.1.17.0/24", "public_ip": "192.0.2.13", "vtep_mac": "aa:bb:cc:dd:ee:02"},
    ],
    "counters": {"egress": {"packets": 10, "bytes": 1500}, "ingress": {"packets": 7, "bytes": 700},
                 "drops": {"wrong_vni": 3, "unknown_sender": 1},
                 "slow_path": {"arp_replied": 4}},
    "datapath": {"mode": "plain"},
}

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
    samples = parse_samples(render_metrics(STATUS))
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


def test_render_metrics_help_and_type_once_per_family():
    text = render_metrics(STATUS)
    for name in ("weft_packets_total", "weft_bytes_total", "weft_drops_total",
                 "weft_slow_path_total", "weft_peers", "weft_lease_expiry_seconds", "weft_ready"):
        assert text.count(f"# HELP {name} ") == 1
        assert text.count(f"# TYPE {name} ") == 1
    assert "# TYPE weft_packets_total counter" in text
    assert "# TYPE weft_ready gauge" in text


def test_render_metrics_empty_status():
    samples = parse_samples(render_metrics({}))
    assert samples["weft_ready"] == 0
    assert samples["weft_peers"] == 0
    assert samples['weft_packets_total{direction="egress"}'] == 0
    assert "weft_lease_expiry_seconds" not in samples  # no lease: no made-up expiry


def test_render_metrics_tolerates_junk():
    status = {"ready": False, "lease": None, "peers": "oops",
              "counters": {"drops": {"unknown_sender": "many"}, "egress": None, "ingress": 3}}
    samples = parse_samples(render_metrics(status))
    assert 'weft_drops_total{reason="unknown_sender"}' not in samples
    assert samples['weft_packets_total{direction="egress"}'] == 0
    assert samples["weft_peers"] == 0


def test_same_reason_by_name_and_code_is_summed():
    samples = parse_samples(render_metrics({"counters": {"drops": {"wrong_vni": 1, 5: 2}}}))
    assert samples['weft_drops_total{reason="wrong_vni"}'] == 3


def test_numeric_reason_keys_are_named():
    samples = parse_samples(render_metrics({"counters": {"drops": {5: 2, "11": 1, 250: 9}}}))
    assert samples['weft_drops_total{reason="wrong_vni"}'] == 2
    assert samples['weft_drops_total{reason="ttl_exceeded"}'] == 1
    assert samples['weft_drops_total{reason="reason_250"}'] == 9


def test_label_values_are_escaped():
    weird = 'we"ird\\\nmode'
    [family] = [f for f in text_string_to_metric_families(
        render_metrics({"datapath": {"mode": weird}})) if f.name == "weft_datapath_info"]
    assert family.samples[0].labels == {"mode": weird}


@pytest.fixture
def server():
    state = {"status": dict(STATUS), "fail": False}

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
    state["status"] = {"ready": False, "lease": None}
    code, _, body = get(srv, "/readyz")
    assert code == 503
    assert body.startswith("not ready: no subnet lease")
    state["status"] = {"ready": False, "reason": "backend starting"}
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
    srv = HealthServer("127.0.0.1", 0, lambda: {})
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


OUTAGE = {**STATUS, "ready": False, "reason": "renewing lease 10.1.15.0/24 has failed for 9s",
          "etcd": {"up": False, "down_since": 1_700_000_000.0, "down_for": 12.3, "retries": 7,
                   "last_error": "UNAVAILABLE: connection refused", "outages": 1,
                   "watch": "reconnecting", "watch_restarts": 2},
          "lease_keeper": {"renewals": 4, "checks": 9, "renew_failures": 3, "recreated": 1},
          "peer_sync": {"pending_removal": ["10.1.16.0/24"], "deferred": 1, "cancelled": 5}}


def test_metrics_say_etcd_is_down_and_count_the_lease_upkeep():
    samples = parse_samples(render_metrics(OUTAGE))
    assert samples["weft_etcd_up"] == 0 and samples["weft_etcd_retries"] == 7
    assert samples["weft_watch_up"] == 0 and samples["weft_watch_restarts_total"] == 2
    assert samples["weft_lease_renew_failures_total"] == 3
    assert samples["weft_lease_recreated_total"] == 1
    assert samples["weft_peers_pending_removal"] == 1
    assert samples["weft_peer_removals_cancelled_total"] == 5
    assert samples["weft_ready"] == 0
    assert "weft_etcd_up" not in parse_samples(render_metrics(STATUS))  # no registry: no sample


def test_status_text_says_etcd_is_unreachable_and_why_not_ready():
    from weft.observe.status_text import format_status

    text = format_status(OUTAGE)
    assert "state:     not ready (renewing lease 10.1.15.0/24 has failed for 9s)" in text
    assert "etcd:      unreachable since " in text
    assert "(12s ago), 7 retries: UNAVAILABLE: connection refused" in text
    assert "watch:     reconnecting (2 restarts)" in text
    assert "renewals:  4 ok, 3 failed, 1 re-created" in text
    assert "pending:   peers 10.1.16.0/24 lost their lease" in text
    healthy = format_status({**OUTAGE, "ready": True, "etcd": {**OUTAGE["etcd"], "up": True}})
    assert "etcd:      reachable" in healthy and "state:     ready\n" in healthy


def test_readyz_gives_the_reason():
    server = HealthServer("127.0.0.1", 0, lambda: OUTAGE)
    code, _, body = server.respond("/readyz")
    assert code == 503 and body == "not ready: renewing lease 10.1.15.0/24 has failed for 9s\n"
