"""--iface (repeatable), --iface-regex, --iface-can-reach and --ip-blackhole-route.

The interface lookups read this host's own links and routes through netlink, which needs no
root: the loopback interface (lo, 127.0.0.1) is on every host.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from weft.control.blackhole import add_blackhole_route
from weft.control.iface import InterfaceError, find_external_interface


def test_first_iface_that_exists_is_used():
    found = find_external_interface(["no-such-if0", "lo"], None)
    assert found.name == "lo" and found.public_ip == IPv4Address("127.0.0.1")


def test_no_iface_exists_names_them_all():
    with pytest.raises(InterfaceError, match="no-such-if0, no-such-if1"):
        find_external_interface(["no-such-if0", "no-such-if1"], None)


def test_single_iface_keeps_its_message():
    with pytest.raises(InterfaceError, match="failed to find interface 'no-such-if0'"):
        find_external_interface("no-such-if0", None)


@pytest.mark.parametrize("regexes", [["^lo$"], ["no-match", "^127\\.0\\.0\\."], [r"o"]])
def test_iface_regex_matches_address_or_name(regexes):
    # r"o" is a search (Go's MatchString), not a full match: "lo" matches
    assert find_external_interface(None, None, iface_regex=regexes).name == "lo"


def test_iface_regex_without_match_or_invalid():
    with pytest.raises(InterfaceError, match="no interface matches any --iface-regex"):
        find_external_interface(None, None, iface_regex=["^nothing-here$", "^nor-here$"])
    with pytest.raises(InterfaceError, match="invalid --iface-regex"):
        find_external_interface(None, None, iface_regex=["("])


def test_iface_wins_over_regex():
    with pytest.raises(InterfaceError, match="no-such-if0"):
        find_external_interface(["no-such-if0"], None, iface_regex=["^lo$"])


def test_iface_can_reach_takes_the_routed_interface():
    found = find_external_interface(None, IPv4Address("192.0.2.1"),
                                    can_reach=IPv4Address("127.0.0.9"))
    assert found.name == "lo" and found.public_ip == IPv4Address("192.0.2.1")


class FakeIPRoute:
    calls: list = []
    refuse = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def route(self, command, **kwargs):
        if self.refuse:
            raise NetlinkError(1, "Operation not permitted")
        self.calls.append((command, kwargs))


def test_blackhole_route_is_a_replace_of_type_blackhole():
    FakeIPRoute.calls = []
    assert add_blackhole_route(IPv4Network("10.1.7.0/24"), FakeIPRoute)
    assert FakeIPRoute.calls == [("replace", {"dst": "10.1.7.0/24", "type": 6})]


def test_refused_blackhole_route_is_logged_not_fatal(caplog):
    FakeIPRoute.refuse = True
    try:
        assert not add_blackhole_route(IPv4Network("10.1.7.0/24"), FakeIPRoute)
    finally:
        FakeIPRoute.refuse = False
    assert "adding blackhole route for 10.1.7.0/24 failed" in caplog.text
