"""Dual-stack (EnableIPv6) as an operator sees it: `weft leases`, `weft status`, /metrics and
the status JSON show each lease's IPv6 half; an IPv4-only host's output is what it was."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import SimpleNamespace

import pytest
from status_samples import DUAL, FULL, HOSTGW_DUAL, LEASE
from test_observe import parse_samples

from weft import cli
from weft.backends.peers import PeerPrograms
from weft.control.config import parse_config
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_policy import LeaseRejections
from weft.control.peer_sync import PeerChanges
from weft.control.registry import load_snapshot
from weft.observe.metrics import render_metrics
from weft.observe.status_text import format_status
from weft.status import DaemonStatus

pytestmark = pytest.mark.unit

CONFIG = ('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48",'
          '"Backend":{"Type":"host-gw"}}')
DUAL_LEASE = Lease(IPv4Network("10.1.54.0/24"),
                   LeaseAttrs(IPv4Address("192.0.2.1"), IPv6Address("fd00::1"), "host-gw"),
                   IPv6Network("fd10:0:0:3f::/64"))
V4_LEASE = Lease(IPv4Network("10.1.7.0/24"), LeaseAttrs(IPv4Address("192.0.2.7"),
                                                       backend_type="host-gw"))


def _weft_leases(monkeypatch, capsys, leases: list[Lease], *flags: str) -> str:
    registry = SimpleNamespace(
        get_network_config=lambda: parse_config(CONFIG), list_leases=lambda: (leases, 42),
        rejections=LeaseRejections(), with_expirations=lambda listed: listed)
    monkeypatch.setattr(cli, "_registry", lambda _args: registry)
    assert cli.main(["leases", *flags]) == 0
    return capsys.readouterr().out


def test_weft_leases_table_has_the_ipv6_columns_only_in_a_dual_stack_listing(monkeypatch,
                                                                             capsys):
    out = _weft_leases(monkeypatch, capsys, [DUAL_LEASE, V4_LEASE]).splitlines()
    assert out[0].split() == ["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN",
                              "IPV6-SUBNET", "PUBLIC-IPV6"]
    rows = {line.split()[0]: line.split() for line in out[1:3]}
    assert rows["10.1.54.0/24"][5:] == ["fd10:0:0:3f::/64", "fd00::1"]
    assert rows["10.1.7.0/24"][5:] == ["-", "-"]  # an IPv4-only peer in a dual-stack cluster
    v4_only = _weft_leases(monkeypatch, capsys, [V4_LEASE]).splitlines()
    assert v4_only[0].split() == ["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN"]


def test_weft_leases_json_carries_the_ipv6_half_and_reads_back(monkeypatch, capsys, tmp_path):
    out = _weft_leases(monkeypatch, capsys, [DUAL_LEASE, V4_LEASE], "--json")
    listing = json.loads(out)["leases"]
    assert listing["10.1.54.0/24"] == {"PublicIP": "192.0.2.1", "PublicIPv6": "fd00::1",
                                       "BackendType": "host-gw",
                                       "IPv6Subnet": "fd10:0:0:3f::/64"}
    assert "IPv6Subnet" not in listing["10.1.7.0/24"]
    path = tmp_path / "leases.json"
    path.write_text(out)
    snapshot = load_snapshot(path)
    assert {lease.subnet: lease.ipv6_subnet for lease in snapshot.leases} == {
        DUAL_LEASE.subnet: DUAL_LEASE.ipv6_subnet, V4_LEASE.subnet: None}


def test_weft_status_shows_our_ipv6_half_and_each_peers():
    text = format_status(DUAL)
    assert "IPv6:      fd10:0:0:f::/64, public IPv6 fd00::11\n" in text
    [header] = [line for line in text.splitlines() if line.strip().startswith("SUBNET")]
    assert header.split() == ["SUBNET", "PUBLIC", "IP", "VTEP", "MAC", "IPV6", "SUBNET",
                              "PUBLIC", "IPV6"]
    [routed] = [line for line in text.splitlines() if "10.1.16.0/24" in line]
    assert routed.split()[-2:] == ["fd10:0:0:10::/64", "fd00::12"]
    [v4_only] = [line for line in text.splitlines() if "10.1.2.0/24" in line]
    assert v4_only.split()[-2:] == ["-", "-"]
    assert "repairs:   route=1, route_ipv6=2" in text
    full = format_status(FULL)  # IPv4 only: no IPv6 line, no IPv6 columns
    assert "IPv6" not in full and "IPV6" not in full


def test_the_status_json_round_trips_and_an_ipv4_lease_has_no_ipv6_keys():
    assert DaemonStatus.from_json(json.loads(json.dumps(DUAL.to_json()))) == DUAL
    assert DUAL.to_json()["lease"]["ipv6_subnet"] == "fd10:0:0:f::/64"
    assert DUAL.to_json()["peers"][0]["public_ipv6"] == "fd00::12"
    assert set(LEASE.to_json()) == {"subnet", "public_ip", "backend", "expires_in"}
    assert set(FULL.to_json()["peers"][0]) == {"subnet", "public_ip", "vtep_mac"}


def test_metrics_of_a_dual_stack_host():
    samples = parse_samples(render_metrics(DUAL))
    assert samples['weft_lease_ipv6_info{ipv6_subnet="fd10:0:0:f::/64",'
                   'public_ipv6="fd00::11"}'] == 1
    assert samples["weft_peers"] == 2 and samples["weft_peers_ipv6"] == 1
    assert samples['weft_repairs_total{what="route_ipv6"}'] == 2
    # the IPv4 series keep their names and labels
    assert samples['weft_lease_info{backend="host-gw",public_ip="192.0.2.11",'
                   'subnet="10.1.15.0/24"}'] == 1
    names = {line.split()[2] for line in render_metrics(DUAL).splitlines()
             if line.startswith("# TYPE")}
    assert {"weft_lease_ipv6_info", "weft_peers_ipv6"} <= names
    assert not any("ipv6" in line for line in render_metrics(FULL).splitlines())


def test_a_renamed_ipv6_field_fails_the_render():
    lease = SimpleNamespace(**{k: v for k, v in vars(DUAL.lease).items() if k != "public_ipv6"},
                            public_v6="fd00::11")
    with pytest.raises(AttributeError, match="public_ipv6"):
        render_metrics(SimpleNamespace(**{**vars(DUAL), "lease": lease}))
    peers = (SimpleNamespace(subnet="10.1.16.0/24", public_ip="192.0.2.12", v6="x"),)
    with pytest.raises(AttributeError, match="ipv6_subnet"):
        render_metrics(replace(DUAL, backend=replace(HOSTGW_DUAL, peers=peers)))


def test_peer_status_shows_the_ipv6_half_only_where_it_is_routed():
    programs = PeerPrograms("host-gw", lambda leases: {}, lambda leases: {})
    programs.handle(PeerChanges(added=(DUAL_LEASE, V4_LEASE)))
    dual = {p.subnet: (p.ipv6_subnet, p.public_ipv6) for p in programs.peers(ipv6=True)}
    assert dual == {"10.1.54.0/24": ("fd10:0:0:3f::/64", "fd00::1"), "10.1.7.0/24": (None, None)}
    assert all(p.ipv6_subnet is None for p in programs.peers())  # an IPv4-only backend

