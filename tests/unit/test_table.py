"""PeerTable and DatapathConfig: O(1) subnet indexing, replace semantics, the sender set."""

from ipaddress import IPv4Address, IPv4Network

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.packet import fastpath
from weft.packet.table import (
    CFG_LOCAL_INDEX,
    CFG_LOCAL_PUBLIC_IP,
    CFG_LOCAL_VTEP_MAC,
    CFG_MTU,
    CFG_N_SUBNETS,
    CFG_NETMASK,
    CFG_NETWORK,
    CFG_PORT,
    CFG_SUBNET_SHIFT,
    CFG_VNI,
    DatapathConfig,
    PeerTable,
    parse_mac,
)

NET = IPv4Network("10.1.0.0/16")
MAC = bytes.fromhex("7e813371e951")


def ip(text: str) -> int:
    return int(IPv4Address(text))


def test_size_and_index_of() -> None:
    t = PeerTable(NET, 24)
    assert t.size == 256 and t.present.shape == (256,) and t.vtep_mac.shape == (256, 6)
    assert t.index_of(ip("10.1.0.0")) == 0
    assert t.index_of(ip("10.1.15.77")) == 15
    assert t.index_of(ip("10.1.255.255")) == 255
    assert t.index_of(ip("10.0.255.255")) == -1
    assert t.index_of(ip("10.2.0.0")) == -1
    assert PeerTable(IPv4Network("10.1.0.0/16"), 26).index_of(ip("10.1.0.200")) == 3


def test_set_get_remove_peer() -> None:
    t = PeerTable(NET, 24)
    sub = IPv4Network("10.1.16.0/24")
    assert t.peer(sub) is None
    t.set_peer(sub, IPv4Address("192.0.2.2"), MAC)
    assert t.peer(sub) == (IPv4Address("192.0.2.2"), MAC)
    assert t.present[16] == 1 and t.public_ip[16] == ip("192.0.2.2")
    assert bytes(t.vtep_mac[16]) == MAC
    t.set_peer(IPv4Network("10.1.17.0/24"), IPv4Address("192.0.2.3"), None)
    assert t.peer(IPv4Network("10.1.17.0/24")) == (IPv4Address("192.0.2.3"), None)
    assert list(t.peers()) == [
        (sub, IPv4Address("192.0.2.2"), MAC),
        (IPv4Network("10.1.17.0/24"), IPv4Address("192.0.2.3"), None),
    ]
    assert len(t) == 2
    assert t.remove_peer(sub) is True
    assert t.remove_peer(sub) is False
    assert t.peer(sub) is None and t.public_ip[16] == 0 and not t.vtep_mac[16].any()
    t.remove_peer(IPv4Network("10.1.17.0/24"))
    assert len(t) == 0 and not t.has_sender(ip("192.0.2.3")) and not t.sender_keys.any()


def test_replace_is_idempotent_and_moves_sender() -> None:
    t = PeerTable(NET, 24)
    sub = IPv4Network("10.1.16.0/24")
    for _ in range(3):
        t.set_peer(sub, IPv4Address("192.0.2.2"), MAC)
    assert len(t) == 1 and np.count_nonzero(t.sender_keys) == 1
    t.set_peer(sub, IPv4Address("192.0.2.9"), MAC)
    assert not t.has_sender(ip("192.0.2.2")) and t.has_sender(ip("192.0.2.9"))


def test_one_public_ip_with_two_subnets() -> None:
    t = PeerTable(NET, 24)
    t.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address("192.0.2.2"), MAC)
    t.set_peer(IPv4Network("10.1.18.0/24"), IPv4Address("192.0.2.2"), MAC)
    t.remove_peer(IPv4Network("10.1.16.0/24"))
    assert t.has_sender(ip("192.0.2.2"))
    t.remove_peer(IPv4Network("10.1.18.0/24"))
    assert not t.has_sender(ip("192.0.2.2"))


def test_sender_set_matches_kernel_probe() -> None:
    """The hash set the kernels probe agrees with the Python view through adds and removals."""
    t = PeerTable(NET, 24)
    rng = np.random.default_rng(7)
    ips = [int(x) for x in rng.integers(1, 2**32, size=200)]
    for k, public in enumerate(ips):
        t.set_peer(t.subnet_at(k), IPv4Address(public), None)
    for k in range(0, 200, 3):
        t.remove_peer(t.subnet_at(k))
    for public in ips + [int(x) for x in rng.integers(1, 2**32, size=200)]:
        assert fastpath._sender_known(t.sender_keys, public) == t.has_sender(public)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 40)), min_size=1, max_size=120))
def test_sender_set_survives_any_add_remove_sequence(ops: list[tuple[int, int]]) -> None:
    """A 16-subnet table has a 32-slot set; 40 PublicIPs force long probe runs that wrap around.

    Each op sets subnet k to PublicIP p, or removes subnet k when it already holds p, so the
    backward-shift deletion is exercised on every shape of run.
    """
    t = PeerTable(IPv4Network("10.1.0.0/20"), 24)
    for k, p in ops:
        sub, public = t.subnet_at(k), IPv4Address(0x0A000000 + p * 7919)
        if t.peer(sub) == (public, None):
            t.remove_peer(sub)
        else:
            t.set_peer(sub, public, None)
        held = {int(addr) for _, addr, _ in t.peers()}
        assert np.count_nonzero(t.sender_keys) == len(held)
        for q in range(1, 41):
            candidate = 0x0A000000 + q * 7919
            assert fastpath._sender_known(t.sender_keys, candidate) == (candidate in held)


def test_new_vtep_mac_leaves_sender_set_untouched() -> None:
    t = PeerTable(NET, 24)
    sub = IPv4Network("10.1.16.0/24")
    t.set_peer(sub, IPv4Address("192.0.2.2"), MAC)
    before = t.sender_keys.copy()
    t.set_peer(sub, IPv4Address("192.0.2.2"), bytes.fromhex("0a0b0c0d0e0f"))
    assert (t.sender_keys == before).all() and t.peer(sub)[1] == bytes.fromhex("0a0b0c0d0e0f")


def test_rejects_bad_input() -> None:
    t = PeerTable(NET, 24)
    with pytest.raises(ValueError):
        t.set_peer(IPv4Network("10.1.16.0/25"), IPv4Address("192.0.2.2"), MAC)
    with pytest.raises(ValueError):
        t.set_peer(IPv4Network("10.2.16.0/24"), IPv4Address("192.0.2.2"), MAC)
    with pytest.raises(ValueError):
        t.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address("0.0.0.0"), MAC)
    with pytest.raises(ValueError):
        t.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address("192.0.2.2"), b"\x01")
    with pytest.raises(ValueError):
        PeerTable(NET, 8)


def test_datapath_config() -> None:
    c = DatapathConfig(NET, 24, vni=1, port=8472, mtu=1450)
    cfg = c.cfg
    assert cfg.dtype == np.int64
    assert cfg[CFG_NETWORK] == ip("10.1.0.0") and cfg[CFG_NETMASK] == ip("255.255.0.0")
    assert cfg[CFG_SUBNET_SHIFT] == 8 and cfg[CFG_N_SUBNETS] == 256
    assert cfg[CFG_LOCAL_INDEX] == -1
    assert (cfg[CFG_VNI], cfg[CFG_PORT], cfg[CFG_MTU]) == (1, 8472, 1450)
    c.set_local(IPv4Network("10.1.15.0/24"), IPv4Address("192.0.2.1"), MAC)
    assert cfg[CFG_LOCAL_INDEX] == 15 and cfg[CFG_LOCAL_PUBLIC_IP] == ip("192.0.2.1")
    assert cfg[CFG_LOCAL_VTEP_MAC] == 0x7E813371E951
    with pytest.raises(ValueError):
        c.set_local(IPv4Network("10.1.15.0/25"), IPv4Address("192.0.2.1"))
    with pytest.raises(ValueError):
        c.set_backend(vni=1 << 24, port=8472, mtu=1450)


def test_parse_mac() -> None:
    assert parse_mac("7e:81:33:71:e9:51") == MAC
    with pytest.raises(ValueError):
        parse_mac("7e:81:33")
