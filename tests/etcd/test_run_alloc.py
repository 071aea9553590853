"""`weft run` with the alloc backend, as real processes against a real etcd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from weft.control.lease import LeaseAttrs, subnet_key

WEFT = [sys.executable, "-m", "weft.cli"]


def weft_env(etcd_server, prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env["WEFT_ETCD_ENDPOINTS"] = etcd_server.endpoint
    env["WEFT_ETCD_PREFIX"] = prefix
    env["WEFT_CONTROL_SOCKET"] = ""  # many daemons at once: none may take the default socket
    return env


def weft(env, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*WEFT, *args], env=env, capture_output=True, text=True, timeout=60,
                          **kwargs)


def start_run(env, public_ip: str, subnet_file: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*WEFT, "run", "--iface", "lo", "--public-ip", public_ip, "--subnet-file",
         str(subnet_file), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_for_subnet(proc: subprocess.Popen, subnet_file: Path, timeout: float = 60) -> IPv4Network:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subnet_file.exists():
            for line in subnet_file.read_text().splitlines():
                if line.startswith("FLANNEL_SUBNET="):
                    return IPv4Interface(line.split("=", 1)[1]).network
        if proc.poll() is not None:
            raise AssertionError(f"weft run exited {proc.returncode}: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("weft run wrote no subnet file")


def stop(proc: subprocess.Popen, timeout: float = 10) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def leases(env) -> dict:
    result = weft(env, "leases", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def env(etcd_server, etcd_prefix):
    env = weft_env(etcd_server, etcd_prefix)
    return env


def put_config(env, text: str) -> None:
    result = weft(env, "config", "put", text)
    assert result.returncode == 0, result.stderr


def test_invalid_config_exits_2_and_writes_nothing(env):
    result = weft(env, "config", "put", '{"Network":"10.1.0.0/16","SubnetLen":31}')
    assert result.returncode == 2
    assert "SubnetLen must be less than /31" in result.stderr
    result = weft(env, "config", "put", '{"Network":"10.1.0.0/16","Backend":{"Port":1}}')
    assert result.returncode == 2 and "unknown backend type: " in result.stderr
    result = weft(env, "config", "put",
                  '{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}')
    assert result.returncode == 2 and "VNI 16777216 is out of range" in result.stderr
    shown = weft(env, "config", "show")
    assert shown.returncode == 1 and "flannel config not found in etcd store" in shown.stderr


def test_config_put_from_file_and_show(env, tmp_path):
    path = tmp_path / "net.json"
    path.write_text('{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}')
    put_config(env, str(path))
    shown = json.loads(weft(env, "config", "show").stdout)
    assert shown["Network"] == "10.5.0.0/16" and shown["SubnetMin"] == "10.5.1.0"


def etcd_lease_ids(registry, subnet: IPv4Network, count: int, timeout: float = 60) -> set[int]:
    """The distinct etcd lease ids seen on our lease key, until `count` of them (renewals)."""
    seen: set[int] = set()
    deadline = time.time() + timeout
    while len(seen) < count and time.time() < deadline:
        seen |= {lease.etcd_lease_id for lease in registry.list_leases()[0]
                 if lease.subnet == subnet}
        time.sleep(0.05)
    return seen


def test_run_acquires_writes_subnet_env_renews_and_keeps_lease_on_sigterm(env, tmp_path,
                                                                            registry):
    put_config(env, '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}')
    subnet_file = tmp_path / "subnet.env"
    proc = start_run(env, "192.0.2.21", subnet_file, "--lease-ttl", "4")
    subnet = wait_for_subnet(proc, subnet_file)
    assert subnet_file.read_text() == (
        f"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={subnet.network_address + 1}/24\n"
        f"FLANNEL_MTU=65536\nFLANNEL_IPMASQ=false\n")
    # Each renewal grants a new etcd lease, at half the 4 s TTL: seeing three renewals means
    # more than a TTL has passed, so only renewal can have kept the lease alive.
    lease_ids = etcd_lease_ids(registry, subnet, count=4)
    assert len(lease_ids) == 4
    snapshot = leases(env)
    assert snapshot["leases"] == {str(subnet): {"PublicIP": "192.0.2.21", "PublicIPv6": None}}
    started = time.time()
    code, out = stop(proc)
    assert code == 0 and time.time() - started < 5
    assert "renewed lease" in out and "keeping lease" in out
    # Kept, not deleted: asked in-process at once, since the kept lease has at most the 4 s TTL
    # left (a `weft leases` process could start too late to see it).
    assert [lease.subnet for lease in registry.list_leases()[0]] == [subnet]


def test_thirty_hosts_at_once_get_distinct_subnets(env, tmp_path):
    put_config(env, '{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.0","SubnetMax":"10.1.40.0",'
                    '"Backend":{"Type":"alloc"}}')
    procs = [(start_run(env, f"192.0.2.{100 + i}", tmp_path / f"{i}.env"), tmp_path / f"{i}.env")
             for i in range(30)]
    try:
        subnets = [wait_for_subnet(proc, path, timeout=120) for proc, path in procs]
    finally:
        outputs = [stop(proc)[1] for proc, _ in procs]
    assert len(set(subnets)) == 30, outputs
    snapshot = leases(env)["leases"]
    assert sorted(snapshot) == sorted(map(str, subnets))
    assert {v["PublicIP"] for v in snapshot.values()} == {f"192.0.2.{100 + i}" for i in range(30)}


def test_fourth_host_is_out_of_subnets(env, tmp_path):
    put_config(env, '{"Network":"10.1.0.0/28","SubnetLen":30,"Backend":{"Type":"alloc"}}')
    procs = [start_run(env, f"192.0.2.{i}", tmp_path / f"{i}.env") for i in (1, 2, 3)]
    try:
        subnets = {wait_for_subnet(p, tmp_path / f"{i}.env") for p, i in zip(procs, (1, 2, 3),
                                                                               strict=True)}
        assert len(subnets) == 3
        fourth = start_run(env, "192.0.2.4", tmp_path / "4.env")
        code, out = fourth.wait(timeout=30), fourth.stdout.read()
        assert code != 0 and "out of subnets" in out
    finally:
        for proc in procs:
            stop(proc)


def test_restart_with_same_public_ip_keeps_subnet(env, tmp_path):
    put_config(env, '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}')
    first = start_run(env, "192.0.2.30", tmp_path / "a.env")
    subnet = wait_for_subnet(first, tmp_path / "a.env")
    stop(first)
    # a different subnet file: only the PublicIP can lead back to the same lease
    again = start_run(env, "192.0.2.30", tmp_path / "b.env")
    try:
        assert wait_for_subnet(again, tmp_path / "b.env") == subnet
    finally:
        stop(again)
    assert len(leases(env)["leases"]) == 1


def lease_of(registry, public_ip: str, timeout: float = 30) -> IPv4Network:
    """The subnet etcd holds for public_ip (the subnet file may still show an old one)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for lease in registry.list_leases()[0]:
            if str(lease.attrs.public_ip) == public_ip:
                return lease.subnet
        time.sleep(0.05)
    raise AssertionError(f"no lease for {public_ip}")


def test_new_public_ip_takes_subnet_from_old_subnet_file_if_free(env, tmp_path, registry):
    put_config(env, '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}')
    old = tmp_path / "subnet.env"
    old.write_text("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.77.1/24\n")
    proc = start_run(env, "192.0.2.31", old)
    try:
        assert lease_of(registry, "192.0.2.31") == IPv4Network("10.1.77.0/24")
    finally:
        stop(proc)
    # now held by 192.0.2.31: another host with the same old subnet file must not take it
    other = tmp_path / "other.env"
    other.write_text("FLANNEL_SUBNET=10.1.77.1/24\n")
    proc = start_run(env, "192.0.2.32", other)
    try:
        subnet = lease_of(registry, "192.0.2.32")
        assert subnet != IPv4Network("10.1.77.0/24")
        assert wait_for_subnet(proc, other) in (subnet, IPv4Network("10.1.77.0/24"))
    finally:
        stop(proc)
    assert f"FLANNEL_SUBNET={subnet.network_address + 1}/24" in other.read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"weft run exited {proc.returncode}: {proc.stdout.read()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # not listening yet, or 503 (an HTTPError is an OSError)
            pass
        time.sleep(0.05)
    raise AssertionError("weft run never became ready")


def test_deleting_our_lease_puts_it_back_and_another_holder_stops_run(env, tmp_path,
                                                                     registry):
    put_config(env, '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}')
    port = free_port()
    proc = start_run(env, "192.0.2.33", tmp_path / "s.env", "--healthz-ip", "127.0.0.1",
                     "--healthz-port", str(port))
    subnet = wait_for_subnet(proc, tmp_path / "s.env")
    wait_ready(proc, port)  # ready means the watch is set up from a revision after our lease
    registry.delete_lease(subnet)
    deadline = time.time() + 15
    while (back := registry.get_lease(subnet)) is None:  # re-created, same subnet
        assert time.time() < deadline and proc.poll() is None, "our lease was not put back"
        time.sleep(0.05)
    assert str(back.attrs.public_ip) == "192.0.2.33"
    wait_ready(proc, port)
    # A blind put of another host's value (etcdctl, or an old flanneld) on our key: lost.
    other = LeaseAttrs(IPv4Address("192.0.2.77"))
    registry.client.put(registry.subnets_prefix + subnet_key(subnet), other.to_json())
    code = proc.wait(timeout=15)
    out = proc.stdout.read()
    assert code == 1 and "Lease has been revoked" in out
    assert "re-created it" in out and "held by PublicIP 192.0.2.77" in out
    assert registry.get_lease(subnet).attrs == other  # left to its holder


def test_malformed_lease_in_etcd_is_skipped_by_run_and_leases(env, tmp_path, registry):
    put_config(env, '{"Network":"10.1.0.0/16","Backend":{"Type":"alloc"}}')
    registry.client.put(registry.subnets_prefix + "10.1.1.0-24", "{not json")
    registry.client.put(registry.subnets_prefix + "bogus-key", "{}")
    proc = start_run(env, "192.0.2.34", tmp_path / "s.env")
    try:
        subnet = wait_for_subnet(proc, tmp_path / "s.env")
        table = weft(env, "leases")
        assert table.returncode == 0 and str(subnet) in table.stdout
        assert "refusing lease" in table.stderr
    finally:
        code, out = stop(proc)
    assert code == 0 and "refusing lease" in out


def test_unimplemented_or_unknown_backend_is_a_clear_error(env, registry, tmp_path):
    registry.put_network_config('{"Network":"10.1.0.0/16","Backend":{"Type":"ipsec"}}')
    proc = start_run(env, "192.0.2.35", tmp_path / "s.env")
    assert proc.wait(timeout=30) == 1
    assert "flannel backend weft does not implement" in proc.stdout.read()
