from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from weft.control.config import ConfigError, parse_config


def test_flannel_example_with_defaults():
    config = parse_config(
        '{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}'
    )
    assert config.network == IPv4Network("10.1.0.0/16")
    assert config.subnet_len == 24
    assert config.subnet_min == IPv4Address("10.1.1.0")  # first subnet skipped
    assert config.subnet_max == IPv4Address("10.1.255.0")
    assert config.backend_type == "vxlan"
    assert config.backend_option("vni") == 1 and config.backend_option("PORT") == 8472


@pytest.mark.parametrize(
    ("network", "subnet_len"),
    [("10.0.0.0/8", 24), ("10.1.0.0/22", 24), ("10.1.0.0/23", 25), ("10.1.0.0/28", 30)],
)
def test_default_subnet_len(network, subnet_len):
    assert parse_config(f'{{"Network":"{network}"}}').subnet_len == subnet_len


def test_keys_are_case_insensitive_and_unknown_keys_ignored():
    config = parse_config('{"network":"10.2.0.0/16","SUBNETLEN":26,"whatever":1,'
                          '"backend":{"type":"Host-GW"}}')
    assert config.network == IPv4Network("10.2.0.0/16")
    assert config.subnet_len == 26
    assert config.backend_type == "host-gw"


def test_backend_absent_means_udp():
    assert parse_config('{"Network":"10.1.0.0/16"}').backend_type == "udp"


def test_backend_without_type_is_empty_type():
    # flannel then fails with "unknown backend type: "; weft's backend registry does the same
    assert parse_config('{"Network":"10.1.0.0/16","Backend":{"VNI":2}}').backend_type == ""


def test_explicit_min_max():
    config = parse_config('{"Network":"10.1.0.0/16","SubnetMin":"10.1.10.0",'
                          '"SubnetMax":"10.1.20.0"}')
    assert list(config.subnets()) == list(range(10, 21))
    assert config.subnet_at(10) == IPv4Network("10.1.10.0/24")


FLANNEL_ERRORS = [
    ('{}', "please define a correct Network parameter in the flannel config"),
    ('{"Network":""}', "please define a correct Network parameter in the flannel config"),
    ('{"Network":"10.1.0.0/16","SubnetLen":31}', "SubnetLen must be less than /31"),
    ('{"Network":"10.1.0.0/16","SubnetLen":17}',
     "network must be able to accommodate at least four subnets"),
    ('{"Network":"10.1.0.0/29"}', "network is too small. Minimum useful network prefix is /28"),
    ('{"Network":"10.1.0.0/16","SubnetMin":"10.2.0.0"}',
     "SubnetMin is not in the range of the Network"),
    ('{"Network":"10.1.0.0/16","SubnetMax":"10.2.0.0"}',
     "SubnetMax is not in the range of the Network"),
    ('{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.5"}',
     "SubnetMin is not on a SubnetLen boundary: 10.1.1.5"),
    ('{"Network":"10.1.0.0/16","SubnetMax":"10.1.1.5"}',
     "SubnetMax is not on a SubnetLen boundary: 10.1.1.5"),
    ('{"EnableIPv4":false,"EnableIPv6":true}',
     "please define a correct IPv6Network parameter in the flannel config"),
    ('{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/126"}',
     "IPv6Network is too small. Minimum useful network prefix is /124"),
    ('{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/48","IPv6SubnetLen":127}',
     "SubnetLen must be less than /127"),
    ('{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/48","IPv6SubnetLen":49}',
     "network must be able to accommodate at least four subnets"),
    ('{"EnableIPv6":true,"Network":"10.1.0.0/16","IPv6Network":"fd00::/48",'
     '"IPv6SubnetMin":"fd01::"}', "IPv6SubnetMin is not in the range of the Network"),
]


@pytest.mark.parametrize(("text", "message"), FLANNEL_ERRORS)
def test_flannel_error_texts(text, message):
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text)
    assert str(excinfo.value) == message


@pytest.mark.parametrize(
    "text",
    ['{"Network":"10.1.0.0/16"', "[1]", '{"Network":"banana"}', '{"Network":"10.1.0.0/16",'
     '"SubnetLen":"24"}', '{"Network":"10.1.0.0/16","Backend":"vxlan"}',
     '{"Network":"10.1.0.0/16","EnableIPv4":"yes"}'],
)
def test_malformed_input_gets_a_clear_error(text):
    with pytest.raises(ConfigError) as excinfo:
        parse_config(text)
    assert str(excinfo.value)


def test_ipv6_fields_parsed_with_defaults():
    config = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,'
                          '"IPv6Network":"fd00:12:13::/48"}')
    assert config.ipv6_subnet_len == 64
    assert config.ipv6_subnet_min == IPv6Address("fd00:12:13:1::")
    assert config.ipv6_subnet_max == IPv6Address("fd00:12:13:ffff::")
    assert config.to_json()["IPv6SubnetLen"] == 64
