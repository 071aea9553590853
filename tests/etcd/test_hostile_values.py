"""Hostile values in a real etcd: garbage under lease keys, and nasty `weft config put` input.

Anyone with write access to the prefix can put anything there. Listing (registry and `weft
leases`) and the watch must skip each bad value with a log line and keep every good lease; a
bad config must be refused with exit 2 and a message, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from weft.control.lease import LeaseAttrs, subnet_key

WEFT = [sys.executable, "-m", "weft.cli"]
CONFIG = '{"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}'
GOOD = {IPv4Network(f"10.1.{i}.0/24"): LeaseAttrs(IPv4Address(f"192.0.2.{i}"), None, "vxlan",
                                                   {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"})
        for i in (1, 2)}
BAD_VALUES = {
    "10.1.10.0-24": os.urandom(512),
    "10.1.12.0-24": b"[" * 50_000,
    "10.1.13.0-24": b'{"PublicIP": 3221225995}',
    "10.1.14.0-24": b'{"PublicIP": ["192.0.2.14"]}',
    "10.1.15.0-24": b'{"PublicIP": "192.0.2.15", "BackendType": 7}',
    "10.1.16.0-24": b'{"PublicIP": ' + b"1" * 5000 + b"}",
    "10.1.17.0-24": b"null",
    "not-a-subnet": b'{"PublicIP": "192.0.2.99"}',
}
# Huge but well-formed (1 MiB of BackendData, near etcd's request limit): kept, nothing breaks.
HUGE_SUBNET = IPv4Network("10.1.11.0/24")
HUGE_VALUE = b'{"PublicIP": "192.0.2.11", "BackendData": "' + b"a" * (1 << 20) + b'"}'


def env_for(etcd_server, prefix: str) -> dict[str, str]:
    return {**os.environ, "WEFT_ETCD_ENDPOINTS": etcd_server.endpoint,
            "WEFT_ETCD_PREFIX": prefix, "WEFT_CONTROL_SOCKET": ""}


def put_bad_values(registry) -> None:
    for key, value in BAD_VALUES.items():
        registry.client.put(registry.subnets_prefix + key, value)
    registry.client.put(registry.subnets_prefix + subnet_key(HUGE_SUBNET), HUGE_VALUE)


def test_list_and_weft_leases_skip_bad_values_and_keep_good(registry, etcd_server, etcd_prefix,
                                                            caplog):
    registry.put_network_config(CONFIG)
    for subnet, attrs in GOOD.items():
        registry.create_lease(subnet, attrs, ttl=600)
    put_bad_values(registry)

    with caplog.at_level(logging.WARNING):
        leases, _ = registry.list_leases()
    assert {lease.subnet for lease in leases} == {*GOOD, HUGE_SUBNET}
    assert all(lease.attrs == GOOD[lease.subnet] for lease in leases if lease.subnet in GOOD)
    skipped = [r for r in caplog.records if "refusing lease" in r.getMessage()]
    assert len(skipped) == len(BAD_VALUES)

    result = subprocess.run([*WEFT, "leases", "--json"], env=env_for(etcd_server, etcd_prefix),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["leases"]) == {str(s) for s in (*GOOD, HUGE_SUBNET)}
    assert result.stderr.count("refusing lease") == len(BAD_VALUES)
    assert "Traceback" not in result.stderr


def test_watch_skips_bad_values_and_delivers_good(registry, caplog):
    _, revision = registry.list_leases()
    events: queue.Queue = queue.Queue()
    errors: list = []
    stop = registry.watch_leases(revision, events.put, errors.append)
    try:
        with caplog.at_level(logging.WARNING):
            put_bad_values(registry)
            for subnet, attrs in GOOD.items():
                registry.create_lease(subnet, attrs, ttl=600)
            added = {}
            while set(added) != {*GOOD, HUGE_SUBNET}:
                batch = events.get(timeout=15)
                added.update({lease.subnet: lease.attrs for lease in batch.added})
    finally:
        stop()
    assert all(added[subnet] == attrs for subnet, attrs in GOOD.items()) and not errors
    skipped = [r for r in caplog.records if "refusing lease" in r.getMessage()]
    assert len(skipped) == len(BAD_VALUES)


@pytest.mark.parametrize("source", [
    "{" + "[" * 100_000,  # starts like JSON, nests past the parser's limit
    '{"Network": "10.1.0.0/16", "SubnetLen": ' + "9" * 5000 + "}",
    '{"Network": 10, "Backend": {"Type": "vxlan"}}',
    '{"Network": "10.1.0.0/16", "Backend": {"Type": ["vxlan"]}}',
    '{"Network": "10.1.0.0/16", "Backend": {"Type": "gre"}}',
    "file:binary",
    "file:missing",
])
def test_config_put_nasty_input_is_exit_2_with_a_message(etcd_server, etcd_prefix, tmp_path,
                                                         source):
    if source == "file:binary":
        path = tmp_path / "config.json"
        path.write_bytes(b'{"Network": "10.1.0.0/16"\xff\xfe}')
        source = str(path)
    elif source == "file:missing":
        source = str(tmp_path / "nothing.json")
    result = subprocess.run([*WEFT, "config", "put", source],
                            env=env_for(etcd_server, etcd_prefix), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("weft: ") and "Traceback" not in result.stderr
    assert len(result.stderr) < 2000


def test_config_put_from_stdin_with_bad_utf8(etcd_server, etcd_prefix):
    result = subprocess.run([*WEFT, "config", "put", "-"], input=b"\xff\xfe\x00{",
                            env=env_for(etcd_server, etcd_prefix), capture_output=True,
                            timeout=60)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr and b"invalid network config" in result.stderr


def test_lease_key_helper_matches_bad_value_keys():
    # The bad values sit under keys shaped like real leases (except one), so they are decoded,
    # not filtered out by name.
    assert subnet_key(IPv4Network("10.1.10.0/24")) in BAD_VALUES


# Keys that alias a good lease's subnet, or name a subnet no host may route: each is refused
# with its reason by the listing, `weft leases` and the watch; deleting it clears the refusal.
ALIAS_KEYS = {
    "10.1.1.0-024": "key_not_canonical",  # flannel's pattern takes it: it would alias 10.1.1.0-24
    "10.1.1.0-24\n": "malformed_key",  # `$` let a trailing newline through
    "x/10.1.1.0-24": "malformed_key",  # only the last path segment used to be read
    "0.0.0.0-0": "subnet_size",  # a default route on every host-gw host
    "10.0.0.0-8": "subnet_size",  # overlapped every candidate: "out of subnets"
    "192.0.2.254-32": "subnet_size",  # diverted one address (etcd's, say)
    "10.2.0.0-24": "outside_network",
}
HIJACK = LeaseAttrs(IPv4Address("192.0.2.77"), None, "vxlan",
                    {"VNI": 1, "VtepMAC": "02:00:00:00:00:77"})


def test_alias_and_foreign_keys_are_refused_with_reasons(registry, etcd_server, etcd_prefix):
    registry.put_network_config(CONFIG)
    for subnet, attrs in GOOD.items():
        registry.create_lease(subnet, attrs, ttl=600)
    for key in ALIAS_KEYS:
        registry.client.put(registry.subnets_prefix + key, HIJACK.to_json())

    result = subprocess.run([*WEFT, "leases", "--json"], env=env_for(etcd_server, etcd_prefix),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["leases"]["10.1.1.0/24"]["PublicIP"] == "192.0.2.1"  # not the alias's
    assert set(listing["leases"]) == {str(s) for s in GOOD}
    assert {key: why["reason"] for key, why in listing["refused"].items()} == ALIAS_KEYS

    table = subprocess.run([*WEFT, "leases"], env=env_for(etcd_server, etcd_prefix),
                           capture_output=True, text=True, timeout=60)
    assert f"{len(ALIAS_KEYS)} key(s) refused" in table.stdout
    assert "'10.1.1.0-024'  key_not_canonical" in table.stdout


def test_watch_refuses_alias_keys_and_forgets_them_when_deleted(registry):
    _, revision = registry.list_leases()
    events: queue.Queue = queue.Queue()
    stop = registry.watch_leases(revision, events.put)
    try:
        for key in ALIAS_KEYS:
            registry.client.put(registry.subnets_prefix + key, HIJACK.to_json())
        marker = IPv4Network("10.1.2.0/24")
        registry.create_lease(marker, GOOD[marker], ttl=600)
        added = []
        while marker not in {lease.subnet for lease in added}:
            added.extend(events.get(timeout=15).added)
        # Key-format refusals happen in the watch itself; the others reach the consumer,
        # whose policy refuses them (covered in tests/unit/test_lease_policy.py).
        keys = {lease.key for lease in added}
        assert not keys & {"10.1.1.0-024", "10.1.1.0-24\n", "x/10.1.1.0-24"}
        current = registry.rejections.snapshot().current
        assert {k: current[k].reason for k in current} == {
            k: r for k, r in ALIAS_KEYS.items() if r in ("key_not_canonical", "malformed_key")}
        for key in ALIAS_KEYS:
            registry.client.delete(registry.subnets_prefix + key)
        deadline = time.monotonic() + 15
        while registry.rejections.snapshot().current and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.rejections.snapshot().current == {}
        assert registry.rejections.totals["key_not_canonical"] == 1
    finally:
        stop()
