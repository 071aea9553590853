"""The network config is operator input: any text must parse into a config a host can run, or
raise ConfigError.

Any other exception would reach `weft config put` (and `weft run`) as a traceback instead of
exit 2 with a message. And a config that parses must hold what the rest of weft relies on
without checking again: the subnet geometry, and VNI/Port/MTU options in their ranges (a 5 MB
VNI accepted here would only fail later, on every host, when the backend starts).
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.control.config import ConfigError, NetworkConfig, parse_config

KEYS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6",
        "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Backend", "network"]
# Values at and around the edges of every range the config has.
EDGES = st.sampled_from([0, 1, -1, 16, 24, 28, 30, 31, 67, 68, 1450, 65535, 65536,
                         (1 << 24) - 1, 1 << 24, 1 << 32, 1 << 63])
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | EDGES | st.floats()
           | st.text(max_size=24))
CIDRS = st.builds(lambda a, b, c, d, n: f"{a}.{b}.{c}.{d}/{n}", *[st.integers(0, 300)] * 4,
                  st.integers(-1, 40))
V6 = st.sampled_from(["fd00::/48", "fd00::/120", "fd00::/127", "::/0", "fd00::", "fd00::1/64"])
TYPES = st.sampled_from(["vxlan", "udp", "VXLAN", "Udp", "host-gw", "alloc"])
OPTION_KEYS = st.sampled_from(["Type", "type", "VNI", "vni", "Port", "PORT", "MTU", "mtu", "x"])
VALUES = st.recursive(SCALARS | CIDRS | V6 | TYPES,
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(OPTION_KEYS, inner, max_size=4), max_leaves=8)
CONFIGS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
# A valid network with a Backend of a userspace type: the options are what varies.
BACKENDS = st.builds(lambda kind, options: {"Network": "10.1.0.0/16",
                                            "Backend": {"Type": kind, **options}},
                     TYPES, st.dictionaries(OPTION_KEYS.filter(lambda k: k.lower() != "type"),
                                            SCALARS, max_size=4))

# name -> (lowest, highest) a set option may hold; 0 and null mean the default
RANGES = {"vni": (1, (1 << 24) - 1), "port": (1, 65535), "mtu": (68, 65535)}
OPTIONS = {"vxlan": ("vni", "port", "mtu"), "udp": ("port", "mtu")}


def parse(text) -> NetworkConfig | None:
    """The config, its invariants checked, or None when refused with ConfigError."""
    try:
        config = parse_config(text)
    except ConfigError as exc:
        assert len(str(exc)) < 400, "the message echoes the input back"
        return None
    check_invariants(config)
    return config


def check_invariants(config: NetworkConfig) -> None:
    if config.enable_ipv4:
        assert isinstance(config.network, IPv4Network)
        check_subnets(config.network, config.subnet_len, config.subnet_min, config.subnet_max)
    else:
        assert config.network is None
    if config.enable_ipv6:
        assert isinstance(config.ipv6_network, IPv6Network)
        check_subnets(config.ipv6_network, config.ipv6_subnet_len, config.ipv6_subnet_min,
                      config.ipv6_subnet_max)
    else:
        assert config.ipv6_network is None
    assert isinstance(config.backend_type, str)
    assert config.backend_type == config.backend_type.lower()
    for key, value in config.backend.items():
        name = str(key).lower()
        if name not in OPTIONS.get(config.backend_type, ()) or value in (None, 0):
            continue
        low, high = RANGES[name]
        assert type(value) is int and low <= value <= high, (key, value)
    # What it says it holds, written out and read back, is the same config.
    written = config.to_json()
    assert parse_config(json.dumps(written)).to_json() == written


def check_subnets(network, subnet_len, low, high) -> None:
    bits = network.max_prefixlen
    assert network.prefixlen + 2 <= subnet_len <= bits - 2  # four subnets, two addresses each
    size = 1 << (bits - subnet_len)
    for address in (low, high):
        assert address in network
        assert int(address) % size == 0  # on a SubnetLen boundary


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS)
def test_config_shaped_objects(raw):
    parse(json.dumps(raw))


@settings(max_examples=400)
@given(BACKENDS)
def test_backend_options(raw):
    parse(json.dumps(raw))


@settings(max_examples=300)
@given(st.binary(max_size=256))
def test_random_bytes(data):
    parse(data)


@settings(max_examples=300)
@given(st.text(max_size=256))
def test_random_text(text):
    parse(text)


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"Network": "10.0.0.0/8", "Backend": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"Network": "10.0.0.0/8", "SubnetLen": ' + "9" * 10_000 + "}",
    '{"Network": "10.0.0.0/8", "SubnetLen": NaN}',
    '{"Network": "10.0.0.0/8", "SubnetLen": 1e400}',
    '{"Network": "10.0.0.0/8", "SubnetMin": "10.0.0.0/8"}',
    '{"Network": "10.0.0.0/8", "EnableIPv6": true, "IPv6Network": "10.0.0.0/8"}',
    '{"Network": "::/0"}',
    '{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan", "VNI": "' + "x" * 5_000_000 + '"}}',
    '{"Network": "10.0.0.0/8", "Backend": {"Type": "vxlan", "VNI": ' + "9" * 4000 + '}}',
    "\ud800",
    b"\xff\xfe{",
])
def test_nasty_configs_are_refused(text):
    assert parse(text) is None


@pytest.mark.parametrize("backend,message", [
    ({"Type": "vxlan", "VNI": 1 << 24}, "VXLAN backend config: VNI 16777216 is out of range"),
    ({"Type": "vxlan", "VNI": -1}, "VNI -1 is out of range: 1 to 16777215"),
    ({"Type": "vxlan", "vni": "1"}, 'VNI must be an integer, not "1"'),
    ({"Type": "vxlan", "VNI": 1.0}, "VNI must be an integer, not 1.0"),
    ({"Type": "vxlan", "VNI": True}, "VNI must be an integer, not true"),
    ({"Type": "vxlan", "VNI": 1, "vni": 1 << 30}, "VNI 1073741824 is out of range"),
    ({"Type": "vxlan", "Port": 65536}, "Port 65536 is out of range: 1 to 65535"),
    ({"Type": "udp", "Port": -8285}, "UDP backend config: Port -8285 is out of range"),
    ({"Type": "udp", "MTU": 67}, "MTU 67 is out of range: 68 to 65535"),
    ({"Type": "vxlan", "MTU": 1 << 16}, "MTU 65536 is out of range"),
    ({"Type": "udp", "MTU": [1450]}, "MTU must be an integer, not [1450]"),
])
def test_out_of_range_backend_options_are_refused_in_flannels_words(backend, message):
    text = json.dumps({"Network": "10.1.0.0/16", "Backend": backend})
    with pytest.raises(ConfigError, match="^error decoding") as refused:
        parse_config(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("backend", [
    {"Type": "vxlan", "VNI": (1 << 24) - 1, "Port": 65535, "MTU": 68},
    {"Type": "vxlan", "VNI": 1, "Port": 1, "MTU": 65535},
    {"Type": "vxlan", "VNI": 0, "Port": 0, "MTU": 0},  # 0: the defaults
    {"Type": "udp", "Port": None, "MTU": None},
    {"Type": "udp", "VNI": "udp has no VNI: not its option, not checked"},
    {"Type": "host-gw", "Port": "not an option of host-gw"},
])
def test_backend_options_in_range_are_kept(backend):
    config = parse(json.dumps({"Network": "10.1.0.0/16", "Backend": backend}))
    assert config is not None and config.backend == backend
