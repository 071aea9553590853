from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from weft.control.lease import (
    KEY_NOT_CANONICAL,
    MALFORMED_KEY,
    Lease,
    LeaseAttrs,
    LeaseFormatError,
    parse_subnet_cidr,
    parse_subnet_key,
    parse_vtep_mac,
    subnet_key,
)

FLANNEL_VALUES = [
    '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"7e:81:33:71:e9:51"}}',
    '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VtepMAC":"7e:81:33:71:e9:51"}}',  # flannel <= 0.13: no VNI
    '{"PublicIP":"192.0.2.1","PublicIPv6":null}',  # udp: no BackendType at all
    '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}',
    '{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"host-gw"}',
]


@pytest.mark.parametrize("value", FLANNEL_VALUES)
def test_flannel_lease_json_round_trips_byte_for_byte(value):
    assert LeaseAttrs.from_json(value).to_json() == value


def test_vxlan_fields():
    attrs = LeaseAttrs.from_json(FLANNEL_VALUES[0])
    assert attrs.vtep_mac == "7e:81:33:71:e9:51" and attrs.vni == 1
    assert LeaseAttrs.from_json(FLANNEL_VALUES[1]).vni is None
    assert LeaseAttrs.from_json(FLANNEL_VALUES[2]).effective_backend == "udp"


def test_built_vxlan_lease_matches_flannel_bytes():
    attrs = LeaseAttrs(IPv4Address("192.0.2.1"), backend_type="vxlan",
                       backend_data={"VNI": 1, "VtepMAC": "7e:81:33:71:e9:51"})
    assert attrs.to_json() == FLANNEL_VALUES[0]


def test_keys():
    assert subnet_key(IPv4Network("10.1.15.0/24")) == "10.1.15.0-24"
    assert subnet_key(IPv4Network("10.1.15.0/24"), IPv6Network("fd00:12:13::/56")) == \
        "10.1.15.0-24&fd00:12:13::-56"
    assert parse_subnet_key("10.1.15.0-24") == (IPv4Network("10.1.15.0/24"), None)
    assert parse_subnet_key("10.1.15.0-24&fd00:12:13::-56")[1] == IPv6Network("fd00:12:13::/56")
    assert parse_subnet_cidr("10.1.15.0-24") == parse_subnet_cidr("10.1.15.0/24")
    assert Lease(IPv4Network("10.1.15.0/24"), LeaseAttrs.from_json(FLANNEL_VALUES[2])).key == \
        "10.1.15.0-24"


@pytest.mark.parametrize("key", ["10.1.15.0", "garbage", "10.1.15.0-24x", "999.1.1.0-24",
                                 "10.1.15.7-24", "x/10.1.15.0-24", "10.1.15.0-24\n",
                                 " 10.1.15.0-24", "10.1.15.0-" + "9" * 5000])
def test_malformed_keys_rejected(key):
    with pytest.raises(LeaseFormatError) as caught:
        parse_subnet_key(key)
    assert caught.value.reason == MALFORMED_KEY


# Keys flannel's pattern accepts that name a subnet another key already names: each would
# alias the canonical key (and win in other hosts' tables while the owner never sees it).
@pytest.mark.parametrize("key", ["10.1.15.0-024", "10.1.15.0-00024",
                                 "10.1.15.0-24&fd00:12:13:0::-56",
                                 "10.1.15.0-24&fd00:0012:13::-56",
                                 "10.1.15.0-24&fd00:12:13::-056"])
def test_non_canonical_keys_rejected(key):
    with pytest.raises(LeaseFormatError) as caught:
        parse_subnet_key(key)
    assert caught.value.reason == KEY_NOT_CANONICAL


@pytest.mark.parametrize("text", ["7e:81:33:71:e9:51", "7E-81-33-71-E9-51"])
def test_vtep_mac_parses(text):
    assert parse_vtep_mac(text) == bytes.fromhex("7e813371e951")


@pytest.mark.parametrize("text", ["7e:81:33:71:e9", "7e:81:33:71:e9:51:00", "7e:81-33:71:e9:51",
                                  "7e8133:71e951", "7e:81:33:71:e9:5g", "", 7, None])
def test_vtep_mac_refused(text):
    with pytest.raises(ValueError):
        parse_vtep_mac(text)


@pytest.mark.parametrize("value", ["not json", "[]", '{"PublicIP":"nope"}', '{}',
                                   '{"PublicIP":"192.0.2.1","BackendType":5}'])
def test_malformed_values_rejected(value):
    with pytest.raises(LeaseFormatError):
        LeaseAttrs.from_json(value)
