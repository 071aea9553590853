"""The batched netlink messages and how their acknowledgements are matched (no kernel needed)."""

import errno
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

from fakes.netlink import FakeNetlink, ack, attributes

from weft.host import netlink_batch as nlbatch
from weft.host import rtnl
from weft.host.netlink_batch import NetlinkBatch

SUBNET = IPv4Network("10.1.7.0/24")


def test_route_replace_is_pyroute2s_message():
    batch = NetlinkBatch()
    batch.route_replace("k", SUBNET, oif=3, gateway=SUBNET.network_address, onlink=True)
    kind, flags, body, key, missing_ok = batch._requests[0]
    assert kind == rtnl.RTM_NEWROUTE and key == "k" and not missing_ok
    assert flags == rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    family, dst_len, _src, _tos, table, proto, scope, rtype, rflags = struct.unpack_from(
        "=BBBBBBBBI", body)
    assert (family, dst_len, table, proto, scope, rtype) == (socket.AF_INET, 24, 254, 4, 0, 1)
    assert rflags == rtnl.RTNH_F_ONLINK
    attrs = attributes(body)
    assert attrs[rtnl.RTA_DST] == IPv4Address("10.1.7.0").packed
    assert attrs[rtnl.RTA_GATEWAY] == IPv4Address("10.1.7.0").packed
    assert struct.unpack("=i", attrs[rtnl.RTA_OIF]) == (3,)


def test_neigh_replace_is_permanent_with_the_mac():
    batch = NetlinkBatch()
    batch.neigh_replace("k", IPv4Address("10.1.7.0"), bytes.fromhex("020000000007"), ifindex=5)
    kind, _flags, body, _key, _ok = batch._requests[0]
    family, _p1, _p2, ifindex, state, _f, _t = struct.unpack_from("=BBHiHBB", body)
    assert (kind, family, ifindex, state) == (rtnl.RTM_NEWNEIGH, socket.AF_INET, 5, 0x80)
    attrs = attributes(body)
    assert attrs[rtnl.NDA_LLADDR] == bytes.fromhex("020000000007")


def test_acks_fail_only_their_own_key_and_missing_deletes_are_fine():
    pending = {1: (rtnl.RTM_NEWNEIGH, "a", False), 2: (rtnl.RTM_NEWROUTE, "a", False),
               3: (rtnl.RTM_NEWROUTE, "b", False), 4: (rtnl.RTM_DELROUTE, "c", True)}
    failures: dict = {}
    nlbatch._read_acks(ack(1, 0) + ack(2, errno.EINVAL) + ack(3, 0) + ack(4, errno.ESRCH),
                       pending, failures)
    assert pending == {}
    assert list(failures) == ["a"] and "route replace" in failures["a"]
    assert "errno 22" in failures["a"]


def test_commit_chunks_and_reports_per_key(monkeypatch):
    fake = FakeNetlink().install(monkeypatch)
    batch = NetlinkBatch()
    subnets = [IPv4Network(f"10.{8 + (i >= 290)}.{i % 256}.0/24") for i in range(300)]
    fake.bad_gateways |= {subnet.network_address for subnet in subnets[290:]}  # EINVAL
    for subnet in subnets:
        batch.neigh_replace(subnet, subnet.network_address, bytes(6), ifindex=3)
        batch.route_replace(subnet, subnet, oif=3, gateway=subnet.network_address, onlink=True)
    failures = batch.commit()
    # a few datagrams, not one per request; one more undoes the failed peers' neighbours
    assert fake.datagrams == -(-600 // nlbatch.CHUNK) + 1
    assert set(failures) == set(subnets[290:])
    assert set(fake.routes) == set(subnets[:290])  # and the refused ones' neighbours undone
    assert {ip for _index, ip in fake.neighbours} == {s.network_address for s in subnets[:290]}
    assert len(batch) == 0
