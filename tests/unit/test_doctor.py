"""weft doctor's judges over fake facts, its output shapes and exit codes (no kernel, no etcd)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from weft import cli
from weft.control.lease import Lease, LeaseAttrs
from weft.observe import doctor, doctor_checks, firewall_view
from weft.observe.doctor_checks import FAIL, OK, WARN, Finding, PeerProbe

NET = IPv4Network("10.1.0.0/16")
SUBNET = IPv4Network("10.1.5.0/24")
ME = IPv4Address("192.0.2.10")


def test_ip_forward():
    assert doctor_checks.ip_forward(1).status == OK
    off = doctor_checks.ip_forward(0)
    assert off.status == FAIL and "sysctl -w net.ipv4.ip_forward=1" in off.fix
    assert doctor_checks.ip_forward(None).status == WARN


def test_br_netfilter_is_only_ever_a_warning():
    assert doctor_checks.br_netfilter(True, 1).status == OK
    zero = doctor_checks.br_netfilter(True, 0)
    assert zero.status == WARN and "bridge-nf-call-iptables=1" in zero.fix
    absent = doctor_checks.br_netfilter(False, None)
    assert absent.status == WARN and absent.fix.startswith("modprobe br_netfilter")


@pytest.mark.parametrize("all_value, dev_value, status", [
    (0, 0, OK), (0, 2, OK), (2, 0, OK), (0, 1, WARN), (1, 0, WARN), (1, 2, OK), (2, 1, OK)])
def test_rp_filter_takes_the_kernels_max(all_value, dev_value, status):
    finding = doctor_checks.rp_filter(all_value, dev_value, "weft.1", True)
    assert finding.status == status
    assert f"effective rp_filter {max(all_value, dev_value)}" in finding.found


def test_rp_filter_fix_names_the_device_or_default():
    assert "net.ipv4.conf.weft.1.rp_filter=2" in doctor_checks.rp_filter(0, 1, "weft.1", True).fix
    absent = doctor_checks.rp_filter(1, 0, "weft.1", False)
    assert "conf.default.rp_filter=2" in absent.fix and "conf.all.rp_filter=2" in absent.fix
    assert "does not exist yet" in absent.found


def test_mtu_fails_when_pod_packets_do_not_fit_the_underlay():
    ok = doctor_checks.mtu("vxlan", 50, 1450, "weft.1", 1450, "eth0", 1500)
    assert ok.status == OK and "1500 - 50" in ok.found
    low = doctor_checks.mtu("vxlan", 50, 1450, "weft.1", 1450, "eth0", 1400)
    assert low.status == FAIL and "1350" in low.found and "1500" in low.fix
    device_only = doctor_checks.mtu("udp", 28, None, "weft0", 1480, "eth0", 1500)
    assert device_only.status == FAIL
    assert doctor_checks.mtu("vxlan", 50, 1450, "weft.1", None, None, None).status == WARN


def test_vxlan_offload():
    assert doctor_checks.vxlan_offload([]).status == OK
    on = doctor_checks.vxlan_offload([("flannel.1", True), ("vx2", False)])
    assert on.status == WARN and on.fix == "ethtool -K flannel.1 tx-checksum-ip-generic off"
    assert "#1279" in on.found
    assert doctor_checks.vxlan_offload([("flannel.1", False)]).status == OK
    assert doctor_checks.vxlan_offload([("flannel.1", None)]).status == WARN


def test_subnet_file():
    assert doctor_checks.subnet_file("/x", None).status == FAIL
    assert doctor_checks.subnet_file("/x", {"FLANNEL_SUBNET": "10.1.5.1/24"}).status == FAIL
    full = {"FLANNEL_NETWORK": "10.1.0.0/16", "FLANNEL_SUBNET": "10.1.5.1/24", "FLANNEL_MTU": "1"}
    assert doctor_checks.subnet_file("/x", full).status == OK


def test_etcd_and_config():
    assert doctor_checks.etcd("http://e:2379", None, 7).status == OK
    assert doctor_checks.etcd("http://e:2379", "etcd at ...: UNAVAILABLE", None).status == FAIL
    assert doctor_checks.config("/p", False, False, None, None).status == WARN
    missing = doctor_checks.config("/p", True, True, None, None)
    assert missing.status == FAIL and "/p/config missing" in missing.found
    assert "weft config put" in missing.fix
    bad = doctor_checks.config("/p", True, False, "SubnetLen must be less than /31", None)
    assert bad.status == FAIL and "SubnetLen" in bad.found
    assert doctor_checks.config("/p", True, False, None, "network x").status == OK


def _lease(subnet: str, ip: str) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), backend_type="vxlan"))


def test_our_lease_is_found_by_subnet_file_then_public_ip():
    leases = [_lease("10.1.5.0/24", "192.0.2.10"), _lease("10.1.6.0/24", "192.0.2.11")]
    find = doctor_checks.find_our_lease
    assert find(leases, SUBNET, None).subnet == SUBNET
    assert find(leases, None, IPv4Address("192.0.2.11")).subnet == IPv4Network("10.1.6.0/24")
    assert find(leases, IPv4Network("10.1.9.0/24"), ME).subnet == SUBNET
    assert find(leases, None, IPv4Address("192.0.2.99")) is None


def test_lease_time_left_against_the_renew_margin():
    ours = _lease("10.1.5.0/24", "192.0.2.10")
    judge = doctor_checks.lease
    assert judge(True, ours, SUBNET, ME, 86000, 3600).status == OK
    low = judge(True, ours, SUBNET, ME, 600, 3600)
    assert low.status == WARN and "renew margin" in low.found
    missing = judge(True, None, SUBNET, ME, None, 3600)
    assert missing.status == FAIL and "subnet 10.1.5.0/24 or PublicIP 192.0.2.10" in missing.found
    other = judge(True, _lease("10.1.5.0/24", "192.0.2.77"), SUBNET, ME, 86000, 3600)
    assert other.status == FAIL and "held by PublicIP 192.0.2.77" in other.found
    assert judge(False, None, SUBNET, ME, None, 3600).status == WARN


def _probe(**kwargs) -> PeerProbe:
    base = dict(subnet=IPv4Network("10.1.6.0/24"), public_ip=IPv4Address("192.0.2.11"),
                route="eth0", port=8472)
    return PeerProbe(**{**base, **kwargs})


def test_peer_verdicts():
    assert doctor_checks.peer(_probe(echo_ms=0.2), "vxlan").status == OK
    no_route = doctor_checks.peer(_probe(route=None, route_error="Network is unreachable"),
                                  "vxlan")
    assert no_route.status == FAIL and "no route" in no_route.found
    refused = doctor_checks.peer(_probe(echo_ms=0.2, port_refused=True), "udp")
    assert refused.status == FAIL and "nothing listens on udp/8472" in refused.found
    dead = doctor_checks.peer(_probe(neighbour_failed=True), "vxlan")
    assert dead.status == FAIL and "no ARP reply" in dead.found
    filtered = doctor_checks.peer(_probe(), "vxlan")
    assert filtered.status == WARN and "no reply in 1 s" in filtered.found
    assert "empty UDP datagram to 192.0.2.11:8472" in filtered.found
    hostgw = doctor_checks.peer(_probe(port=None, echo_ms=1.0), "host-gw")
    assert hostgw.status == OK and "UDP" not in hostgw.found


# -- the filter table ---------------------------------------------------------------------------

def _save(forward: str = "ACCEPT", input_policy: str = "ACCEPT", rules: str = "") -> str:
    return (f"# Generated by iptables-save\n*filter\n:INPUT {input_policy} [0:0]\n"
            f":FORWARD {forward} [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j DROP\nCOMMIT\n")


WEFT_FWD = (":WEFT-FWD - [0:0]\n"
            '-A FORWARD -m comment --comment "weft forward" -j WEFT-FWD\n'
            '-A WEFT-FWD -s 10.1.0.0/16 -m comment --comment "weft forward" -j ACCEPT\n'
            '-A WEFT-FWD -d 10.1.0.0/16 -m comment --comment "weft forward" -j ACCEPT\n')


def test_forward_policy_drop_needs_accept_rules_for_the_network():
    assert firewall_view.forward_check(_save(), NET).status == OK
    bare = firewall_view.forward_check(_save("DROP"), NET)
    assert bare.status == FAIL and "no rule accepts the pod network 10.1.0.0/16" in bare.found
    assert "iptables -A FORWARD -s 10.1.0.0/16 -j ACCEPT" in bare.fix
    assert firewall_view.forward_check(_save("DROP", rules=WEFT_FWD), NET).status == OK
    wider = "-A FORWARD -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD -d 10.0.0.0/8 -j ACCEPT\n"
    assert firewall_view.forward_check(_save("DROP", rules=wider), NET).status == OK
    one_way = firewall_view.forward_check(_save("DROP", rules=wider.splitlines()[0] + "\n"), NET)
    assert one_way.status == WARN and "only traffic from" in one_way.found
    docker = "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    assert firewall_view.forward_check(_save("DROP", rules=docker), NET).status == FAIL
    assert firewall_view.forward_check(_save("DROP"), None).status == WARN


def test_forward_policy_drop_needs_an_accept_for_the_tunnel_gso_tx_tap():
    assert firewall_view.forward_check(_save("DROP", rules=WEFT_FWD), NET, "weft.1tx").status \
        == FAIL
    with_tx = WEFT_FWD + '-A WEFT-FWD -i weft.1tx -m comment --comment "weft forward" -j ACCEPT\n'
    assert firewall_view.forward_check(_save("DROP", rules=with_tx), NET, "weft.1tx").status == OK
    negated = WEFT_FWD + "-A WEFT-FWD ! -i weft.1tx -j ACCEPT\n"
    assert firewall_view.forward_check(_save("DROP", rules=negated), NET, "weft.1tx").status \
        == FAIL
    assert firewall_view.forward_check(_save(), NET, "weft.1tx").status == OK  # policy ACCEPT


@pytest.mark.parametrize("rule, status", [
    ("-A INPUT -p udp -m udp --dport 8472 -j DROP", FAIL),
    ("-A INPUT -p udp -m multiport --dports 4789,8000:9000 -j REJECT "
     "--reject-with icmp-port-unreachable", FAIL),
    ("-A INPUT -j REJECT --reject-with icmp-host-prohibited", FAIL),  # firewalld's last rule
    ("-A INPUT -p tcp -m tcp --dport 8472 -j DROP", OK),
    ("-A INPUT -p udp -m udp --dport 8285 -j DROP", OK),
    ("-A INPUT -p udp -m udp ! --dport 8472 -j DROP", OK),
    ("-A INPUT -s 203.0.113.0/24 -p udp -m udp --dport 8472 -j DROP", WARN),
    ("-A INPUT -i eth1 -j DROP", WARN),
])
def test_port_check_finds_rules_dropping_the_backend_port(rule, status):
    finding = firewall_view.port_check(_save(rules=rule + "\n"), 8472)
    assert finding.status == status, finding
    if status == FAIL:
        assert finding.fix.startswith("iptables -D " + rule[3:])
        assert "iptables -I INPUT -p udp --dport 8472 -j ACCEPT" in finding.fix


def test_port_check_follows_order_chains_and_policy():
    accept_first = ("-A INPUT -p udp -m udp --dport 8472 -j ACCEPT\n"
                    "-A INPUT -j REJECT --reject-with icmp-host-prohibited\n")
    assert firewall_view.port_check(_save(rules=accept_first), 8472).status == OK
    chained = (":FW - [0:0]\n-A INPUT -j FW\n-A FW -p udp -m udp --dport 8472 -j DROP\n")
    found = firewall_view.port_check(_save(rules=chained), 8472)
    assert found.status == FAIL and "filter FW rule" in found.found
    returned = (":FW - [0:0]\n-A INPUT -j FW\n-A FW -j RETURN\n-A FW -j DROP\n")
    assert firewall_view.port_check(_save(rules=returned), 8472).status == OK
    policy = firewall_view.port_check(_save(input_policy="DROP"), 8472)
    assert policy.status == FAIL and "policy DROP" in policy.found
    opened = "-A INPUT -p udp -m udp --dport 8472 -j ACCEPT\n"
    assert firewall_view.port_check(_save(input_policy="DROP", rules=opened), 8472).status == OK
    loop = (":A - [0:0]\n:B - [0:0]\n-A INPUT -j A\n-A A -j B\n-A B -j A\n")
    assert firewall_view.port_check(_save(rules=loop), 8472).status == OK  # bounded


def test_only_the_filter_table_counts():
    # the nat table's `-A POSTROUTING -j DROP` in _save never shows up
    assert firewall_view.parse_filter(_save()).rules.keys() == {"INPUT", "FORWARD", "OUTPUT"}


# -- output and exit codes ----------------------------------------------------------------------

FINDINGS = [Finding("ip_forward", OK, "net.ipv4.ip_forward=1"),
            Finding("br_netfilter", WARN, "not loaded", "modprobe br_netfilter"),
            Finding("mtu", FAIL, "too big", "raise it")]


def test_json_is_a_list_of_check_status_found_fix():
    data = json.loads(doctor.render_json(FINDINGS))
    assert data == [f.to_json() for f in FINDINGS]
    assert all(set(item) == {"check", "status", "found", "fix"} for item in data)


def test_text_is_one_line_per_check_with_the_fix():
    lines = doctor.render_text(FINDINGS).splitlines()
    assert lines[0].split() == ["ok", "ip_forward", "net.ipv4.ip_forward=1"]
    assert lines[1].startswith("warn  br_netfilter") and lines[1].endswith(
        "-- fix: modprobe br_netfilter")
    assert lines[2].startswith("FAIL  mtu") and "fix: raise it" in lines[2]
    assert lines[3] == "1 ok, 1 warn, 1 FAIL"


def test_exit_code_fails_only_on_fail():
    assert doctor.exit_code(FINDINGS) == 1
    assert doctor.exit_code(FINDINGS[:2]) == 0
    assert doctor.exit_code([]) == 0


def test_cli_wires_doctor_with_run_flags_and_go_syntax(monkeypatch, capsys):
    seen = {}

    def fake_main(args):
        seen.update(vars(args))
        return 1

    monkeypatch.setattr(doctor, "main", fake_main)
    code = cli.main(["doctor", "-etcd-endpoints=http://192.0.2.1:2379", "-iface", "eth0",
                     "-subnet-file=/tmp/s.env", "--subnet-lease-renew-margin", "5", "--json"])
    assert code == 1
    assert seen["etcd_endpoints"] == "http://192.0.2.1:2379" and seen["iface"] == ["eth0"]
    assert seen["subnet_file"] == "/tmp/s.env" and seen["subnet_lease_renew_margin"] == 5
    assert seen["json"] is True and seen["etcd_prefix"] == "/coreos.com/network"
    options = doctor.options_from_args(type("A", (), seen))
    assert options.renew_margin == 300 and options.etcd.timeout == doctor.ETCD_TIMEOUT


def test_cli_usage_error_exits_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["doctor", "--subnet-lease-renew-margin", "0"])
    assert exc.value.code == 2


def test_subnet_file_reader(tmp_path):
    path = tmp_path / "subnet.env"
    assert doctor.read_subnet_file(str(path)) is None
    path.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\nFLANNEL_MTU=1450\n"
                    "garbage\n")
    values = doctor.read_subnet_file(str(path))
    assert values == {"FLANNEL_NETWORK": "10.1.0.0/16", "FLANNEL_SUBNET": "10.1.5.1/24",
                      "FLANNEL_MTU": "1450"}


def test_backend_from_the_config_else_guessed_from_weft_device():
    from weft.control.config import parse_config
    from weft.observe.host_facts import Link

    udp = parse_config('{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":9000}}')
    assert doctor._backend(udp, {}) == ("udp", 1, 9000)
    vxlan = parse_config('{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":4}}')
    assert doctor._backend(vxlan, {}) == ("vxlan", 4, 8472)
    hostgw = parse_config('{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}')
    assert doctor._backend(hostgw, {}) == ("host-gw", 1, None)
    assert doctor._backend(None, {"weft0": Link("weft0", 3, "tun", 1472)}) == ("udp", 0, 8285)
    assert doctor._backend(None, {"weft.2": Link("weft.2", 3, "tun", 1450)}) == ("vxlan", 2, 8472)
    assert doctor._backend(None, {}) == ("vxlan", 1, 8472)


def test_etcd_is_asked_once_within_a_bounded_time(monkeypatch):
    from weft.control.etcd_registry import EtcdOptions

    bad = doctor.ask_etcd(EtcdOptions(endpoints="http://:2379"), None, None)
    assert bad.error is not None and "bad etcd endpoint" in bad.error  # no traffic sent
    calls = []

    def hung(options, subnet, public_ip, facts):  # a client library that never returns
        calls.append(options)
        time.sleep(30)

    monkeypatch.setattr(doctor, "_converse", hung)
    start = time.monotonic()
    facts = doctor.ask_etcd(EtcdOptions(endpoints="http://e:2379", timeout=0.05), None, None)
    assert time.monotonic() - start < 2 and len(calls) == 1
    assert facts.error == "etcd at http://e:2379 did not answer within 1.2 s"


# -- dual-stack (EnableIPv6) ----------------------------------------------------------------------

NET6 = IPv6Network("fd10::/48")


def test_ipv6_forward():
    assert doctor_checks.ipv6_forward(1).status == OK
    off = doctor_checks.ipv6_forward(0)
    assert off.status == FAIL and "sysctl -w net.ipv6.conf.all.forwarding=1" in off.fix
    assert doctor_checks.ipv6_forward(None).status == WARN


@pytest.mark.parametrize(("forwarding", "value", "ra_default", "status"), [
    (1, 2, True, OK),  # RAs accepted with forwarding on
    (1, 0, None, OK),  # RAs off by choice
    (1, 1, False, OK),  # ignored, but the default route is static
    (1, 1, True, WARN),  # the RA default route is not renewed: it expires
    (0, 1, True, WARN),  # ... as soon as forwarding is turned on
    (0, 1, False, OK),
])
def test_accept_ra_with_forwarding(forwarding, value, ra_default, status):
    finding = doctor_checks.accept_ra("eth0", forwarding, value, ra_default)
    assert finding.status == status, finding
    if status == WARN:
        assert "default route" in finding.found
        assert finding.fix.startswith("sysctl -w net.ipv6.conf.eth0.accept_ra=2")


def test_accept_ra_unknown():
    assert doctor_checks.accept_ra(None, 1, 1, True).status == WARN
    assert doctor_checks.accept_ra("eth0", 1, None, True).status == WARN


def _save6(forward: str, rules: str = "") -> str:
    return (f"# Generated by ip6tables-save\n*filter\n:INPUT ACCEPT [0:0]\n"
            f":FORWARD {forward} [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n")


WEFT_FWD6 = (":WEFT-FWD - [0:0]\n-A FORWARD -j WEFT-FWD\n"
             "-A WEFT-FWD -s fd10::/48 -j ACCEPT\n-A WEFT-FWD -d fd10::/48 -j ACCEPT\n")


def test_ip6tables_forward_rules_for_the_ipv6_network():
    check = firewall_view.forward_check
    assert check(_save6("ACCEPT"), NET6, ipv6=True).check == "forward_ipv6"
    assert check(_save6("DROP", WEFT_FWD6), NET6, ipv6=True).status == OK
    bare = check(_save6("DROP"), NET6, ipv6=True)
    assert bare.status == FAIL and bare.check == "forward_ipv6"
    assert "ip6tables -A FORWARD -s fd10::/48 -j ACCEPT" in bare.fix
    # IPv4 rules never count for the IPv6 network (nor the reverse), and do not crash
    v4_rules = "-A FORWARD -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD -d 10.0.0.0/8 -j ACCEPT\n"
    assert check(_save6("DROP", v4_rules), NET6, ipv6=True).status == FAIL
    assert check(_save6("DROP", WEFT_FWD6), NET).status == FAIL


def test_peer_verdict_over_ipv6_names_icmpv6_and_the_combined_key():
    probe = _probe(subnet=IPv6Network("fd10:0:0:6::/64"), public_ip=IPv6Address("fd00::11"),
                   port=None, neighbour_failed=True)
    dead = doctor_checks.peer(probe, "host-gw", "10.1.6.0-24&fd10:0:0:6::-64")
    assert dead.status == FAIL and dead.check == "peer fd10:0:0:6::/64"
    assert "ICMPv6 echo to fd00::11" in dead.found and "neighbour discovery" in dead.found
    assert dead.fix.endswith("subnets/10.1.6.0-24&fd10:0:0:6::-64)")
    ok = doctor_checks.peer(replace(probe, neighbour_failed=False, echo_ms=0.3), "host-gw")
    assert ok.status == OK


def test_dual_stack_peers_are_probed_over_both_families(monkeypatch):
    asked = []

    def probe_all(targets, port, timeout):
        asked.extend(targets)
        return [PeerProbe(subnet, ip, "eth0", echo_ms=0.1) for subnet, ip in targets]

    monkeypatch.setattr(doctor.peer_probe, "probe_all", probe_all)
    dual = Lease(IPv4Network("10.1.6.0/24"), LeaseAttrs(IPv4Address("192.0.2.11"),
                                                        IPv6Address("fd00::11"), "host-gw"),
                 IPv6Network("fd10:0:0:6::/64"))
    v4_only = Lease(IPv4Network("10.1.7.0/24"), LeaseAttrs(IPv4Address("192.0.2.12"),
                                                           backend_type="host-gw"))
    facts = doctor.EtcdFacts(leases=[dual, v4_only])
    findings = doctor._peer_findings(facts, "host-gw", None, 1.0, ipv6=True)
    assert asked == [(dual.subnet, IPv4Address("192.0.2.11")),
                     (dual.ipv6_subnet, IPv6Address("fd00::11")),
                     (v4_only.subnet, IPv4Address("192.0.2.12"))]
    assert [f.check for f in findings] == ["peer 10.1.6.0/24", "peer fd10:0:0:6::/64",
                                           "peer 10.1.7.0/24"]
    asked.clear()
    doctor._peer_findings(facts, "host-gw", None, 1.0)  # IPv4-only config: as before
    assert [ip for _subnet, ip in asked] == [IPv4Address("192.0.2.11"), IPv4Address("192.0.2.12")]


def test_ipv6_network_from_the_config_or_the_subnet_file():
    from weft.control.config import parse_config

    dual = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48",'
                        '"Backend":{"Type":"host-gw"}}')
    assert doctor._ipv6_network(dual, None) == NET6
    assert doctor._ipv6_network(parse_config('{"Network":"10.1.0.0/16"}'), None) is None
    assert doctor._ipv6_network(None, {"FLANNEL_IPV6_NETWORK": "fd10::/48"}) == NET6
    assert doctor._ipv6_network(None, {}) is None
