"""The reconciler's lean netlink dump reads what pyroute2 reads, at the scale it is for.

A namespace holds a veth pair with an address, 2,000 onlink routes and 2,000 permanent
neighbours (a peer table's worth, programmed as the vxlan backend does): the raw parser must
give, entry for entry, what pyroute2's parser gives for the same dumps.
"""

from __future__ import annotations

import json
import os
import uuid
from ipaddress import IPv4Network

import pytest

from weft.host import netlink_dump
from weft.host.netlink_batch import NetlinkBatch
from weft.tools.lab import netns

pytestmark = pytest.mark.netns

PEERS = 2000


def _pyroute2_view() -> dict:
    """The same four dumps through pyroute2's parser, as plain values."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {
            "links": [{"index": m["index"], "name": m.get_attr("IFLA_IFNAME"),
                       "up": bool(m["flags"] & 1), "mtu": m.get_attr("IFLA_MTU"),
                       "mac": m.get_attr("IFLA_ADDRESS")} for m in ipr.get_links()],
            "addrs": [{"index": m["index"], "address": m.get_attr("IFA_ADDRESS"),
                       "prefixlen": m["prefixlen"]} for m in ipr.get_addr(family=2)],
            "routes": [{"dst": f"{m.get_attr('RTA_DST') or '0.0.0.0'}/{m['dst_len']}",
                        "oif": m.get_attr("RTA_OIF"), "gateway": m.get_attr("RTA_GATEWAY"),
                        "flags": m["flags"]}
                       for m in ipr.get_routes(family=2, table=254)],
            "neighbours": [{"ifindex": m["ifindex"], "ip": m.get_attr("NDA_DST"),
                            "mac": m.get_attr("NDA_LLADDR"), "state": m["state"]}
                           for m in ipr.get_neighbours(family=2)],
        }


def _program_and_dump() -> tuple[dict, dict]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname="peers0", kind="veth", peer="peers1")
        index = ipr.link_lookup(ifname="peers0")[0]
        ipr.link("set", index=index, state="up", mtu=1450)
        ipr.addr("add", index=index, address="10.0.0.1", prefixlen=32)
    batch = NetlinkBatch()
    for k in range(1, PEERS + 1):
        subnet = IPv4Network((0x0A000000 + (k << 8), 24))
        batch.neigh_replace(k, subnet.network_address, bytes([2, 0, 0, 0, k >> 8, k & 255]),
                            ifindex=index)
        batch.route_replace(k, subnet, oif=index, gateway=subnet.network_address, onlink=True)
    failures = batch.commit()
    assert not failures, failures
    return netlink_dump.dump_kernel(), _pyroute2_view()


@pytest.fixture
def namespace():
    name = f"weft-nldump-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def test_lean_dump_matches_pyroute2_entry_for_entry(namespace):
    lean, reference = netns.call_in(namespace, _program_and_dump)
    assert len(lean["routes"]) >= PEERS and len(lean["neighbours"]) >= PEERS
    for kind in ("links", "addrs", "routes", "neighbours"):
        def canonical(entries):
            return sorted(json.dumps(entry, sort_keys=True) for entry in entries)
        assert canonical(lean[kind]) == canonical(reference[kind]), kind
    [route] = [r for r in lean["routes"] if r["dst"] == "10.0.1.0/24"]
    assert route["gateway"] == "10.0.1.0" and route["flags"] & 4  # RTNH_F_ONLINK
