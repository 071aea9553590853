"""Dual-stack leases (EnableIPv6) as flannel's local manager makes them: the IPv6 half is chosen
beside the IPv4 subnet, kept on reuse, named in the key and written to subnet.env; leases of
IPv4-only hosts (older flanneld or weft) still count, and configs weft cannot carry are refused."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from weft import backends
from weft.control import subnet_env
from weft.control.allocator import CANDIDATES, OutOfSubnets, choose_subnet
from weft.control.config import ConfigError, parse_config
from weft.control.lease import Lease, LeaseAttrs, parse_subnet_key
from weft.control.lease_manager import LeaseTiming, acquire_lease
from weft.control.memory_registry import MemoryRegistry

DUAL = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48",'
                    '"IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}')
US = IPv4Address("192.0.2.10")
US6 = IPv6Address("fd00::10")


def lease(subnet: str, ip: str, v6: str | None = None) -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip)),
                 IPv6Network(v6) if v6 else None)


def test_a_new_lease_gets_an_ipv6_half_of_ipv6_subnet_len_inside_ipv6_network() -> None:
    choice = choose_subnet(DUAL, [], US, None, random.Random(1))
    assert choice.ipv6_subnet is not None
    assert choice.ipv6_subnet.prefixlen == 64
    assert choice.ipv6_subnet.subnet_of(IPv6Network("fd10::/48"))


def test_held_ipv6_halves_are_not_chosen_and_ipv4_only_leases_block_nothing_v6() -> None:
    first = [IPv6Network(f"fd10:0:0:{n:x}::/64") for n in range(1, CANDIDATES + 1)]
    leases = [lease(f"10.1.{i}.0/24", f"192.0.2.{100 + i % 100}", str(v6))
              for i, v6 in enumerate(first[:-1], start=1)]
    leases.append(lease("10.1.200.0/24", "192.0.2.99"))  # an IPv4-only host (older flanneld)
    for seed in range(20):
        choice = choose_subnet(DUAL, leases, US, None, random.Random(seed))
        assert choice.ipv6_subnet not in {held.ipv6_subnet for held in leases}
        assert choice.subnet not in {held.subnet for held in leases}


def test_our_dual_stack_lease_is_reused_whole_and_a_v4_only_one_is_stale() -> None:
    ours = lease("10.1.7.0/24", str(US), "fd10:0:0:7::/64")
    choice = choose_subnet(DUAL, [ours], US, None, random.Random(0))
    assert choice.reuse == ours and choice.ipv6_subnet == ours.ipv6_subnet
    # an IPv4-only lease of ours does not fit a dual-stack config (flannel deletes it too)
    old = lease("10.1.8.0/24", str(US))
    choice = choose_subnet(DUAL, [old], US, None, random.Random(0))
    assert choice.stale == (old,) and choice.reuse is None and choice.ipv6_subnet is not None


def test_the_previous_pair_from_subnet_env_is_taken_again_when_free() -> None:
    prev, prev6 = IPv4Network("10.1.9.0/24"), IPv6Network("fd10:0:0:9::/64")
    choice = choose_subnet(DUAL, [], US, prev, random.Random(0), previous_v6=prev6)
    assert (choice.subnet, choice.ipv6_subnet) == (prev, prev6)
    other = lease("10.1.50.0/24", "192.0.2.50", str(prev6))  # its IPv6 half is held now
    choice = choose_subnet(DUAL, [other], US, prev, random.Random(0), previous_v6=prev6)
    assert choice.ipv6_subnet != prev6


def test_no_free_ipv6_half_is_out_of_subnets() -> None:
    tiny = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/62",'
                        '"IPv6SubnetLen":64}')  # the first subnet is never handed out: 3 left
    held = [lease(f"10.1.{n}.0/24", f"192.0.2.{n}", f"fd10:0:0:{n}::/64") for n in (1, 2, 3)]
    with pytest.raises(OutOfSubnets):
        choose_subnet(tiny, held, US, None, random.Random(0))


def test_acquire_writes_flannels_combined_key_and_renewal_keeps_it() -> None:
    registry = MemoryRegistry(IPv4Network("10.1.0.0/16"))
    attrs = LeaseAttrs(US, US6, "host-gw")
    acquired = acquire_lease(registry, DUAL, attrs, None, LeaseTiming(ttl=60))
    got = acquired.lease
    assert got.ipv6_subnet is not None
    assert parse_subnet_key(got.key) == (got.subnet, got.ipv6_subnet)
    assert "&fd10:" in got.key
    stored = registry.get_lease(got.subnet, got.ipv6_subnet)
    assert stored is not None and stored.attrs.public_ipv6 == US6
    again = acquire_lease(registry, DUAL, attrs, None, LeaseTiming(ttl=60))
    assert (again.lease.subnet, again.lease.ipv6_subnet) == (got.subnet, got.ipv6_subnet)


def test_subnet_env_has_flannels_ipv6_lines_in_flannels_order(tmp_path) -> None:
    got = Lease(IPv4Network("10.1.54.0/24"), LeaseAttrs(US, US6),
                IPv6Network("fd10:0:0:3f::/64"))
    text = subnet_env.render(DUAL, got, 1500, False)
    assert text == ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.54.1/24\n"
                    "FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:3f::1/64\n"
                    "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n")
    path = tmp_path / "subnet.env"
    path.write_text(text)
    assert subnet_env.read_previous_subnets(path) == (got.subnet, got.ipv6_subnet)


def test_backend_v6_data_round_trips_as_flannel_writes_it() -> None:
    attrs = LeaseAttrs(IPv4Address("192.0.2.1"), IPv6Address("fd00::1"), "vxlan",
                       {"VNI": 1, "VtepMAC": "62:00:00:00:00:01"},
                       {"VNI": 1, "VtepMAC": "5e:00:00:00:00:01"})
    text = attrs.to_json()
    assert text.endswith('"BackendV6Data":{"VNI":1,"VtepMAC":"5e:00:00:00:00:01"}}')
    assert LeaseAttrs.from_json(text) == attrs


@pytest.mark.parametrize("config, says", [
    ('{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48",'
     '"Backend":{"Type":"udp"}}', "backend 'udp' carries IPv4 only"),
    ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48",'
     '"Backend":{"Type":"host-gw"}}', "IPv6-only"),
])
def test_what_weft_cannot_carry_is_refused_with_the_reason(config: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        backends.check_families(parse_config(config))


def test_dual_stack_host_gw_vxlan_and_v4_only_configs_are_carried() -> None:
    dual_vxlan = parse_config('{"Network":"10.1.0.0/16","EnableIPv6":true,'
                              '"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}')
    v4_udp = parse_config('{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}')
    for config in (DUAL, dual_vxlan, v4_udp):
        assert backends.check_families(config) is None, config
