"""The reconciler's lean netlink dump reads what pyroute2 reads, at the scale it is for.

A namespace holds a veth pair with an address, 2,000 onlink routes and 2,000 permanent
neighbours (a peer table's worth, programmed as the vxlan backend does), and IPv6 routes and
neighbours beside them (host-gw and vxlan in dual stack): the raw parser must give, entry for
entry, what pyroute2's parser gives for the same dumps, with IPv6 only when asked for.
"""

from __future__ import annotations

import json
import os
import uuid
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest

from weft.host import netlink_dump
from weft.host.netlink_batch import NetlinkBatch
from weft.host.rtnl import IFA_F_NODAD
from weft.tools.lab import netns

pytestmark = pytest.mark.netns

PEERS = 2000


PEERS6 = 200


def _pyroute2_view() -> dict:
    """The same dumps through pyroute2's parser, as plain values (routes and neighbours of
    both families)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        def routes(family: int) -> list[dict]:
            anywhere = "0.0.0.0" if family == 2 else "::"
            return [{"family": 4 if family == 2 else 6,
                     "dst": f"{m.get_attr('RTA_DST') or anywhere}/{m['dst_len']}",
                     "oif": m.get_attr("RTA_OIF"), "gateway": m.get_attr("RTA_GATEWAY"),
                     "flags": m["flags"]} for m in ipr.get_routes(family=family, table=254)]

        def neighbours(family: int) -> list[dict]:
            return [{"family": 4 if family == 2 else 6, "ifindex": m["ifindex"],
                     "ip": m.get_attr("NDA_DST"), "mac": m.get_attr("NDA_LLADDR"),
                     "state": m["state"]} for m in ipr.get_neighbours(family=family)]
        return {
            "links": [{"index": m["index"], "name": m.get_attr("IFLA_IFNAME"),
                       "up": bool(m["flags"] & 1), "mtu": m.get_attr("IFLA_MTU"),
                       "mac": m.get_attr("IFLA_ADDRESS")} for m in ipr.get_links()],
            "addrs": [{"index": m["index"], "address": m.get_attr("IFA_ADDRESS"),
                       "prefixlen": m["prefixlen"]} for m in ipr.get_addr(family=2)],
            "routes": routes(2), "neighbours": neighbours(2),
            "routes6": routes(10), "neighbours6": neighbours(10),
        }


def _program_and_dump() -> tuple[dict, dict, dict]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname="peers0", kind="veth", peer="peers1")
        index = ipr.link_lookup(ifname="peers0")[0]
        ipr.link("set", index=index, state="up", mtu=1450)
        ipr.link("set", index=ipr.link_lookup(ifname="peers1")[0], state="up")
        ipr.addr("add", index=index, address="10.0.0.1", prefixlen=32)
        # the IPv6 segment the non-onlink IPv6 gateways are on (no DAD: usable at once)
        ipr.addr("add", index=index, address="fd00::ffff", prefixlen=64, family=10,
                 flags=IFA_F_NODAD)
    batch = NetlinkBatch()
    for k in range(1, PEERS + 1):
        subnet = IPv4Network((0x0A000000 + (k << 8), 24))
        batch.neigh_replace(k, subnet.network_address, bytes([2, 0, 0, 0, k >> 8, k & 255]),
                            ifindex=index)
        batch.route_replace(k, subnet, oif=index, gateway=subnet.network_address, onlink=True)
    for k in range(1, PEERS6 + 1):  # host-gw's dual-stack routes: via the peer's PublicIPv6
        batch.route_replace(-k, IPv6Network(f"fd10:0:0:{k:x}::/64"), oif=index,
                            gateway=IPv6Address(f"fd00::{k:x}"), onlink=k % 2 == 0)
    failures = batch.commit()
    assert not failures, failures
    with IPRoute() as ipr:
        for k in range(1, 11):
            ipr.neigh("replace", family=10, dst=f"fd00::{k:x}", ifindex=index, state=0x80,
                      lladdr=f"02:00:00:00:06:{k:02x}")
    return netlink_dump.dump_kernel(), netlink_dump.dump_kernel(ipv6=True), _pyroute2_view()


@pytest.fixture
def namespace():
    name = f"weft-nldump-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def _canonical(entries: list[dict]) -> list[str]:
    return sorted(json.dumps(entry, sort_keys=True) for entry in entries)


def _settled(entries: list[dict]) -> list[dict]:
    """Leaves out the kernel's own multicast neighbours (ff02::, NOARP): it adds them as its
    MLD and neighbour discovery go out, which may be between one dump and the other."""
    return [e for e in entries if not (e.get("ip") or "").startswith("ff02:")]


def test_lean_dump_matches_pyroute2_entry_for_entry(namespace):
    lean, both, reference = netns.call_in(namespace, _program_and_dump)
    assert len(lean["routes"]) >= PEERS and len(lean["neighbours"]) >= PEERS
    for kind in ("links", "addrs", "routes", "neighbours"):
        assert _canonical(lean[kind]) == _canonical(reference[kind]), kind
    # asked for IPv6: the same IPv4 entries and every IPv6 one, nothing else
    for kind in ("routes", "neighbours"):
        assert _canonical(_settled(both[kind])) == _canonical(
            _settled(reference[kind] + reference[kind + "6"])), kind
    assert len(reference["routes6"]) >= PEERS6 and len(reference["neighbours6"]) >= 10
    [route6] = [r for r in both["routes"] if r["dst"] == "fd10:0:0:2::/64"]
    assert route6["gateway"] == "fd00::2" and route6["flags"] & 4 and route6["family"] == 6
    [route] = [r for r in lean["routes"] if r["dst"] == "10.0.1.0/24"]
    assert route["gateway"] == "10.0.1.0" and route["flags"] & 4  # RTNH_F_ONLINK
