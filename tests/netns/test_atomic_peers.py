"""A peer that cannot be programmed leaves nothing in the kernel, and its removal nothing either.

A vxlan backend runs inside a namespace of its own (no daemon, no etcd: its handle() gets the
lease events directly, so the control plane's own lease checks cannot stop a bad lease first).
Two peers fail at different steps: a /32 lease the peer table refuses, and a lease whose onlink
route the kernel refuses after its neighbour entry went in (its gateway, the subnet's network
address, is a local address of the host). What `ip route` and `ip neigh` show is checked.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.tools.lab import netns

pytestmark = pytest.mark.netns

DEVICE = "weft.1"
GOOD, TABLE_REFUSES, KERNEL_REFUSES = "10.1.2.0/24", "10.1.77.0/32", "10.1.78.0/24"


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def _peer_state() -> str:
    """Every route and neighbour on the device except the device's own network route."""
    routes = [line for line in _ip("-4", "route", "show", "dev", DEVICE).splitlines()
              if not line.startswith("10.1.0.0/16")]
    return "\n".join(routes + _ip("-4", "neigh", "show", "dev", DEVICE).splitlines())


def _lease(subnet: str, public_ip: str):
    from weft.control.lease import Lease, LeaseAttrs

    return Lease(IPv4Network(subnet), LeaseAttrs(
        IPv4Address(public_ip), backend_type="vxlan",
        backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:0" + public_ip[-1]}))


def _program_and_remove() -> dict:
    """In the namespace: program three peers, then remove them; the kernel state after each."""
    from weft.backends.vxlan import VxlanBackend
    from weft.control.config import NetworkConfig
    from weft.control.iface import ExternalInterface
    from weft.control.peer_sync import PeerChanges

    _ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    for dev in ("eth0", "eth1"):
        _ip("link", "set", dev, "up")
    _ip("addr", "add", "192.0.2.10/24", "dev", "eth0")
    # The kernel refuses an onlink route via a local address ("Nexthop has invalid gateway").
    _ip("addr", "add", "10.1.78.0/32", "dev", "eth0")
    iface = ExternalInterface("eth0", int(_ip("-o", "link", "show", "eth0").split(":")[0]),
                              IPv4Address("192.0.2.10"), 1500, IPv4Address("192.0.2.10"))
    config = NetworkConfig(IPv4Network("10.1.0.0/16"), 24, None, None, backend_type="vxlan")
    backend = VxlanBackend(config, iface, {"datapath": "plain"})
    leases = (_lease(TABLE_REFUSES, "192.0.2.11"), _lease(KERNEL_REFUSES, "192.0.2.12"),
              _lease(GOOD, "192.0.2.13"))
    try:
        backend.handle(PeerChanges(added=leases))
        programmed = _peer_state()
        failed = {str(subnet): why for subnet, why in backend.peers.failed.items()}
        table = [str(subnet) for subnet, _ip_, _mac in backend.pipeline.table.peers()]
        backend.handle(PeerChanges(removed=tuple(lease.subnet for lease in leases)))
        return {"programmed": programmed, "failed": failed, "table": table,
                "removed": _peer_state()}
    finally:
        backend.close()


@pytest.fixture
def namespace():
    name = f"weft-atomic-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def test_failed_peers_leave_no_route_or_neighbour_and_removal_leaves_nothing(namespace):
    seen = netns.call_in(namespace, _program_and_remove, timeout=120)
    programmed = seen["programmed"]
    assert "10.1.2.0/24 via 10.1.2.0 proto static onlink" in programmed, programmed
    assert "10.1.2.0 lladdr 02:00:00:00:00:03 PERMANENT" in programmed, programmed
    assert "10.1.77" not in programmed and "10.1.78" not in programmed, programmed
    assert set(seen["failed"]) == {TABLE_REFUSES, KERNEL_REFUSES}, seen["failed"]
    assert "route replace" in seen["failed"][KERNEL_REFUSES]
    assert seen["table"] == [GOOD]
    assert seen["removed"] == "", seen["removed"]
