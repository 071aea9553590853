"""The network config is operator input: any text must parse or raise ConfigError.

Any other exception would reach `weft config put` (and `weft run`) as a traceback instead of
exit 2 with a message.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.control.config import ConfigError, parse_config

KEYS = ["Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6",
        "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Backend", "network"]
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=24))
CIDRS = st.builds(lambda a, b, c, d, n: f"{a}.{b}.{c}.{d}/{n}", *[st.integers(0, 300)] * 4,
                  st.integers(-1, 40))
V6 = st.sampled_from(["fd00::/48", "fd00::/120", "fd00::/127", "::/0", "fd00::", "fd00::1/64"])
VALUES = st.recursive(SCALARS | CIDRS | V6, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["Type", "type", "VNI", "Port", "x"]),
                                        inner, max_size=3), max_leaves=8)
CONFIGS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


def parse(text) -> None:
    try:
        parse_config(text)
    except ConfigError:
        pass


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS)
def test_config_shaped_objects(raw):
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
    "\ud800",
    b"\xff\xfe{",
])
def test_nasty_configs(text):
    parse(text)
