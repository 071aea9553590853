"""`weft run`'s command line as flanneld's: Go flag syntax, FLANNELD_ env, unimplemented flags."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv4Address

import pytest

from weft.cli import build_parser, normalize_run_argv
from weft.goflags import go_bool, normalize

ENV_PREFIXES = ("WEFT_", "FLANNELD_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The parser reads the environment when it is built: start each test without ours."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)


def parse(*argv: str):
    parser = build_parser()
    return parser.parse_args(normalize_run_argv(parser, list(argv)))


def usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["-etcd-endpoints=http://10.0.0.1:2379", "-etcd-prefix=/atomic.io/network"],
    ["-etcd-endpoints", "http://10.0.0.1:2379", "-etcd-prefix", "/atomic.io/network"],
    ["--etcd-endpoints=http://10.0.0.1:2379", "--etcd-prefix", "/atomic.io/network"],
])
def test_go_flag_spellings_all_parse(argv):
    args = parse("run", *argv)
    assert args.etcd_endpoints == "http://10.0.0.1:2379"
    assert args.etcd_prefix == "/atomic.io/network"


def test_booleans_take_go_values_only_after_equals():
    assert parse("run", "-ip-masq").ip_masq is True
    assert parse("run", "-ip-masq=false").ip_masq is False
    assert parse("run", "--ip-masq=0").ip_masq is False
    assert parse("run", "--ip-masq", "-ip-masq=F").ip_masq is False  # the last one wins
    assert parse("run").ip_masq is False


def test_bare_boolean_does_not_swallow_the_next_word(capsys):
    # Go: `-ip-masq false` is ip-masq=true and a stray argument; weft says so instead of
    # quietly reading it as ip-masq=false.
    assert "unrecognized arguments: false" in usage_error(capsys, "run", "-ip-masq", "false")


def test_value_starting_with_a_dash_is_still_a_value():
    assert parse("run", "-etcd-password", "-s3cret").etcd_password == "-s3cret"


def test_repeatable_iface_and_regex():
    args = parse("run", "-iface=eth9", "-iface", "lo", "-iface-regex=^en", "--iface-regex", "x")
    assert args.iface == ["eth9", "lo"] and args.iface_regex == ["^en", "x"]


def test_verbosity_level_as_flanneld():
    assert parse("run", "-v=2").verbose == 2
    assert parse("run", "-v", "3", "-ip-masq").verbose == 3
    assert parse("run", "-v").verbose == 1  # weft's bare -v still means debug
    assert parse("run", "-v=0").verbose == 0
    assert parse("run").verbose == 0
    assert parse("leases", "-v").verbose is True  # other commands unchanged


def test_end_of_flags_and_unknown_flags_keep_their_spelling(capsys):
    assert normalize(["-a=1", "--", "-b"], set(), {"a"}) == ["--a=1", "--", "-b"]
    assert "unrecognized arguments: -no-such-flag=1" in usage_error(
        capsys, "run", "-no-such-flag=1")


def test_only_run_is_rewritten():
    parser = build_parser()
    assert normalize_run_argv(parser, ["leases", "-etcd-prefix=/x"]) == ["leases",
                                                                         "-etcd-prefix=/x"]


def test_precedence_command_line_then_weft_then_flanneld(monkeypatch):
    monkeypatch.setenv("FLANNELD_ETCD_PREFIX", "/from/flanneld")
    assert parse("run").etcd_prefix == "/from/flanneld"
    monkeypatch.setenv("WEFT_ETCD_PREFIX", "/from/weft")
    assert parse("run").etcd_prefix == "/from/weft"
    assert parse("run", "-etcd-prefix=/from/argv").etcd_prefix == "/from/argv"


def test_flanneld_env_types_and_empty_values(monkeypatch):
    monkeypatch.setenv("FLANNELD_IP_MASQ", "true")
    monkeypatch.setenv("FLANNELD_PUBLIC_IP", "192.0.2.9")
    monkeypatch.setenv("FLANNELD_IFACE", "eth0")
    monkeypatch.setenv("FLANNELD_SUBNET_FILE", "")  # empty = unset, as flanneld
    args = parse("run")
    assert args.ip_masq is True and args.public_ip == IPv4Address("192.0.2.9")
    assert args.iface == ["eth0"] and args.subnet_file == "/run/flannel/subnet.env"
    assert parse("run", "-iface=lo").iface == ["lo"]  # replaces the env value, not added to it


def test_flanneld_env_is_not_read_for_weft_only_flags(monkeypatch):
    monkeypatch.setenv("FLANNELD_LEASE_TTL", "5")
    assert parse("run").lease_ttl == 24 * 3600


def test_bad_env_value_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setenv("FLANNELD_HEALTHZ_PORT", "eighty")
    assert "argument --healthz-port: invalid int value: 'eighty'" in usage_error(capsys, "run")


def test_empty_public_ip_means_unset():
    assert parse("run", "-public-ip=").public_ip is None


@pytest.mark.parametrize("argv, message", [
    (["-kube-subnet-mgr"], "not supported (yet) by weft: --kube-subnet-mgr=true"),
])
def test_unimplemented_flags_exit_2_with_the_reason(capsys, argv, message):
    assert message in usage_error(capsys, "run", *argv)


def test_unimplemented_flag_from_flanneld_env_exits_2(monkeypatch, capsys):
    monkeypatch.setenv("FLANNELD_KUBE_SUBNET_MGR", "true")
    assert "not supported (yet) by weft: --kube-subnet-mgr" in usage_error(capsys, "run")


def test_public_ipv6_is_an_ipv6_address_or_unset(monkeypatch, capsys):
    assert str(parse("run", "-public-ipv6=fd00::1").public_ipv6) == "fd00::1"
    assert parse("run", "-public-ipv6=").public_ipv6 is None
    monkeypatch.setenv("FLANNELD_PUBLIC_IPV6", "fd00::2")
    assert str(parse("run").public_ipv6) == "fd00::2"
    monkeypatch.delenv("FLANNELD_PUBLIC_IPV6")
    assert "--public-ipv6" in usage_error(capsys, "run", "-public-ipv6=10.0.0.1")


def test_flanneld_defaults_of_unimplemented_flags_start():
    args = parse("run", "-iptables-forward-rules=true", "-iptables-resync=5", "-public-ipv6=",
                 "-ip-masq-fully-random-disable=false", "-kube-subnet-mgr=false")
    assert args.iptables_forward_rules is True and args.iptables_resync == 5
    assert parse("run", "-iptables-forward-rules=false").iptables_forward_rules is False


def test_masquerade_flags_in_flanneld_syntax(capsys):
    args = parse("run", "-ip-masq", "-iptables-resync", "10", "-ip-masq-fully-random-disable")
    assert args.ip_masq is True and args.iptables_resync == 10
    assert args.ip_masq_fully_random_disable is True
    assert parse("run").iptables_forward_rules is True  # flanneld's default
    assert "must be at least 1" in usage_error(capsys, "run", "-iptables-resync=0")


def test_go_bool_spellings():
    assert [go_bool(t) for t in ("1", "t", "TRUE", "True", "yes")] == [True] * 5
    assert [go_bool(t) for t in ("0", "f", "FALSE", "false", "no")] == [False] * 5
    with pytest.raises(ValueError):
        go_bool("maybe")


def test_version_exits_0_and_prints_it():
    for argv in (["--version"], ["run", "--version"], ["run", "-version"]):
        out = subprocess.run([sys.executable, "-m", "weft.cli", *argv], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.startswith("weft "), (argv, out)


def test_renew_margin_range_still_checked(capsys):
    assert "between 1 and 1439" in usage_error(capsys, "run", "-subnet-lease-renew-margin=0")
    assert parse("run", "-subnet-lease-renew-margin", "30").subnet_lease_renew_margin == 30
