"""Lease values from etcd are untrusted: any bytes must decode or raise LeaseFormatError.

Anything else escaping the decoder (TypeError, RecursionError, ValueError from int parsing)
would end the lease watch or the listing instead of skipping one bad key. And what decodes
must hold what the backends rely on: addresses of the right family, a string BackendType, and
a value that writes out and reads back the same.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.control.lease import LeaseAttrs, LeaseFormatError

FIELDS = ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "publicip", "PUBLICIP"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
# Objects with the lease's own field names holding values of any type: wrong JSON types.
LEASE_SHAPED = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4)


def decode(value: bytes) -> LeaseAttrs | None:
    """The attributes, their invariants checked, or None when refused with LeaseFormatError."""
    try:
        attrs = LeaseAttrs.from_json(value)
    except LeaseFormatError:
        return None
    assert isinstance(attrs.public_ip, IPv4Address)
    assert attrs.public_ipv6 is None or isinstance(attrs.public_ipv6, IPv6Address)
    assert isinstance(attrs.backend_type, str)
    assert attrs.vni is None or isinstance(attrs.vni, int)
    assert attrs.vtep_mac is None or isinstance(attrs.vtep_mac, str)
    written = attrs.to_json()  # what we republish or show is what we read
    assert LeaseAttrs.from_json(written).to_json() == written
    return attrs


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes(value):
    decode(value)


@settings(max_examples=300)
@given(JSON)
def test_any_json(value):
    decode(json.dumps(value).encode())


@settings(max_examples=500)
@given(LEASE_SHAPED)
def test_lease_fields_with_wrong_types(value):
    attrs = decode(json.dumps(value).encode())
    if attrs is not None:  # accepted only with a real address in a string, as flannel's Go
        raw = {k.lower(): v for k, v in value.items()}
        assert isinstance(raw["publicip"], str)
        assert attrs.public_ip == IPv4Address(raw["publicip"])


@pytest.mark.parametrize("value", [
    b"[" * 100_000,  # nesting beyond the parser's recursion limit
    b'{"PublicIP": "10.0.0.1", "BackendData": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"PublicIP": ' + b"1" * 10_000 + b"}",  # an integer over Python's digit limit
    b'{"PublicIP": "10.0.0.1", "BackendData": {"x": "' + b"a" * (8 << 20) + b'"}}',
    b'{"PublicIP": 167772161}',  # an address as a number: Go's net.IP would not take it
    b'{"PublicIP": true}',
    b'{"PublicIP": "10.0.0.1", "PublicIPv6": 1}',
    b'{"PublicIP": "10.0.0.1", "PublicIPv6": ["::1"]}',
    b'{"PublicIP": "10.0.0.1", "BackendType": {"vxlan": 1}}',
    b"\xef\xbb\xbf{}",
    b'{"PublicIP": "10.0.0.1\\u0000"}',
])
def test_nasty_values_are_format_errors_or_big_but_valid(value):
    attrs = decode(value)
    assert attrs is None or str(attrs.public_ip) == "10.0.0.1"
