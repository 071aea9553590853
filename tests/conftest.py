"""Shared fixtures and the suite's rules.

The tests are grouped by what they need, one folder each, and marked by folder:
  unit/   nothing but Python (marker `unit`)
  etcd/   a real etcd server started here (marker `etcd`)
  netns/  root: network namespaces, TUN/TAP devices, real traffic (marker `netns`)
Select a tier with `pytest -m unit`, or its folder. Under CI (CI=true) a skipped test fails the
run: a skip there is a gap nobody sees.
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weft.control.etcd_registry import EtcdOptions, EtcdRegistry
from weft.tools.lab.etcd import EtcdServer

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "etcd", "netns")
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


@pytest.fixture(scope="session", autouse=True)
def compiled_data_path(request):
    """Fill the compile cache once, before the first test that starts daemons, as packaging
    and the unit's ExecStartPre do (`weft compile`): a daemon on a cold cache starts on the
    Python loop and moves later (tests/netns/test_cold_start.py proves that path), which tests
    that look at the compiled modes must not race. Root-free unit runs skip it."""
    if all("unit" in item.keywords for item in request.session.items):
        return
    subprocess.run([sys.executable, "-m", "weft.drivers.compile_job"], check=True,
                   timeout=900)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(item.fspath).resolve().relative_to(TESTS).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session, exitstatus):
    """Under CI a skip is a failure: the run must prove every test, not just not fail."""
    if not _under_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; under CI a skip fails the run",
                            red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
