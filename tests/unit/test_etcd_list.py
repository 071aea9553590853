"""Listing leases: paged ranges at one revision, no TTL lookups; times left only on request."""

from ipaddress import IPv4Address
from types import SimpleNamespace

import grpc

from weft.control import etcd_registry
from weft.control.etcd_registry import EtcdOptions, EtcdRegistry
from weft.control.lease import LeaseAttrs

PREFIX = "/coreos.com/network/subnets/"


class FakeEtcd:
    """Keys in order; ranges honour start, limit and revision; counts every request."""

    def __init__(self, count: int, revision: int = 77):
        self.kvs = []
        for i in range(count):
            attrs = LeaseAttrs(IPv4Address(0xC6120001 + i), backend_type="vxlan")
            key = f"{PREFIX}10.{i // 256}.{i % 256}.0-24".encode()
            self.kvs.append(SimpleNamespace(key=key, value=attrs.to_json().encode(),
                                            lease=1000 + i))
        self.kvs.sort(key=lambda kv: kv.key)
        self.revision = revision
        self.ranges = []
        self.ttl_lookups = 0

    def get_range_response(self, start, end, sort_order=None, limit=None, revision=None):
        self.ranges.append(revision)
        rows = [kv for kv in self.kvs if start <= kv.key < end]
        page = rows[:limit]
        return SimpleNamespace(kvs=page, more=len(rows) > len(page),
                               header=SimpleNamespace(revision=self.revision))

    def get_lease_info(self, lease_id):
        self.ttl_lookups += 1
        if lease_id == 1003:
            raise grpc.RpcError()
        return SimpleNamespace(TTL=lease_id)


def test_list_reads_pages_at_the_first_pages_revision_without_ttl_lookups(monkeypatch):
    monkeypatch.setattr(etcd_registry, "LIST_PAGE", 100)
    fake = FakeEtcd(250)
    registry = EtcdRegistry(EtcdOptions(), client=fake)
    leases, revision = registry.list_leases()
    assert len(leases) == 250 and revision == 77
    assert fake.ranges == [None, 77, 77]  # the later pages are pinned to the first's revision
    assert fake.ttl_lookups == 0
    assert all(lease.expiration is None and lease.etcd_lease_id for lease in leases)
    assert len({lease.subnet for lease in leases}) == 250


def test_with_expirations_fills_times_left_and_survives_a_failed_lookup():
    fake = FakeEtcd(20)
    registry = EtcdRegistry(EtcdOptions(), client=fake)
    leases, _ = registry.list_leases()
    filled = registry.with_expirations(leases)
    assert fake.ttl_lookups == 20
    assert [lease.subnet for lease in filled] == [lease.subnet for lease in leases]
    for lease in filled:
        if lease.etcd_lease_id == 1003:
            assert lease.expiration is None
        else:
            assert lease.expiration is not None
