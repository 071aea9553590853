import itertools
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from etcd_server import EtcdServer  # noqa: E402

from switch.etcd_registry import EtcdOptions, EtcdRegistry  # noqa: E402

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd_server():
    server = EtcdServer()
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix(etcd_server):
    """A fresh key prefix per test, so tests share one server without seeing each other."""
    return f"/weft-test/{os.getpid()}-{next(_prefixes)}/network"


@pytest.fixture
def registry(etcd_server, etcd_prefix):
    reg = EtcdRegistry(EtcdOptions(endpoints=etcd_server.endpoint, prefix=etcd_prefix))
    yield reg
    reg.client.close()


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
