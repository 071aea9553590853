"""weft against an etcd that requires client certificates, and one with user/password auth.

Each misconfiguration must end `weft run` within seconds with a message naming the cause; none
may turn into a retry loop.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address

import pytest

from weft.control.etcd_errors import WatchRefused
from weft.control.etcd_registry import EtcdOptions, EtcdRegistry
from weft.control.lease import LeaseAttrs
from weft.control.registry import RegistryError
from weft.tools.lab.etcd import EtcdServer, make_tls_files

WEFT = [sys.executable, "-m", "weft.cli"]
PREFIX = "/weft-auth/network"
CONFIG = '{"Network":"10.7.0.0/16","Backend":{"Type":"alloc"}}'
EXIT_WITHIN = 20.0  # seconds: a fatal misconfiguration must not look like a long wait


@pytest.fixture(scope="module")
def tls_etcd():
    directory = tempfile.mkdtemp(prefix="weft-tls-")
    files = make_tls_files(directory)
    server = EtcdServer(tls=files)
    yield server, files
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_etcd():
    server = EtcdServer()
    server.add_user("weft", "weft-secret", PREFIX + "/")
    server.add_user("stranger", "stranger-secret", "/elsewhere/")
    server.enable_auth()
    yield server
    server.stop()


def base_env(endpoints: str, **flags: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env.update(WEFT_ETCD_ENDPOINTS=endpoints, WEFT_ETCD_PREFIX=PREFIX, WEFT_CONTROL_SOCKET="")
    env.update({f"WEFT_ETCD_{name.upper()}": value for name, value in flags.items()})
    return env


def tls_env(server, files, **overrides) -> dict[str, str]:
    flags = {"cafile": str(files.ca), "certfile": str(files.client_cert),
             "keyfile": str(files.client_key), **overrides}
    return base_env(server.endpoint, **{k: v for k, v in flags.items() if v})


def auth_env(server, user: str = "weft", password: str = "weft-secret") -> dict[str, str]:
    return base_env(server.endpoint, username=user, password=password)


def weft(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([*WEFT, *args], env=env, capture_output=True, text=True, timeout=60)


def run_until_exit(env, tmp_path) -> tuple[int, str, float]:
    """`weft run` that must end on its own: exit code, output, seconds it took."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*WEFT, "run", "--iface", "lo", "--public-ip", "192.0.2.70", "--subnet-file",
         str(tmp_path / "subnet.env")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"weft run still running after {EXIT_WITHIN:.0f}s:\n{out[-3000:]}")
    return proc.returncode, out, time.monotonic() - started


def run_acquires(env, tmp_path) -> None:
    """config put/show, `weft run` takes a lease and writes subnet.env, `weft leases` lists it."""
    put = weft(env, "config", "put", CONFIG)
    assert put.returncode == 0, put.stderr
    shown = weft(env, "config", "show")
    assert shown.returncode == 0 and '"10.7.0.0/16"' in shown.stdout, shown.stderr
    subnet_file = tmp_path / "subnet.env"
    proc = subprocess.Popen(
        [*WEFT, "run", "--iface", "lo", "--public-ip", "192.0.2.71", "--subnet-file",
         str(subnet_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 60
        while not subnet_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert subnet_file.exists(), f"no subnet.env; weft run exited {proc.poll()}"
        subnet = next(line.split("=", 1)[1] for line in subnet_file.read_text().splitlines()
                      if line.startswith("FLANNEL_SUBNET="))
        listed = weft(env, "leases")
        assert listed.returncode == 0, listed.stderr
        assert "192.0.2.71" in listed.stdout and subnet.rsplit(".", 1)[0] in listed.stdout
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out[-3000:]


def report(case: str, seconds: float, out: str) -> None:
    message = next((line for line in out.splitlines() if line.startswith("weft: ")), out[-300:])
    print(f"\n[{case}] exited after {seconds:.1f}s: {message}")


# -- TLS ----------------------------------------------------------------------------------------
def test_tls_with_client_certificate(tls_etcd, tmp_path):
    server, files = tls_etcd
    assert server.endpoint.startswith("https://")
    run_acquires(tls_env(server, files), tmp_path)


@pytest.mark.parametrize("case, overrides, expected", [
    ("wrong CA", {"cafile": "other_ca"},
     "TLS handshake failed: certificate verify failed: the server's certificate is not signed "
     "by the CA in --etcd-cafile (or is expired) — check --etcd-cafile"),
    ("expired client certificate", {"certfile": "expired_cert", "keyfile": "expired_key"},
     "TLS handshake failed: etcd rejected our client certificate (missing, expired, or not "
     "signed by a CA etcd trusts) — check --etcd-certfile and --etcd-keyfile"),
    ("no client certificate", {"certfile": "", "keyfile": ""},
     "TLS handshake failed: etcd rejected our client certificate"),
])
def test_tls_failures_end_run_with_the_cause(tls_etcd, tmp_path, case, overrides, expected):
    server, files = tls_etcd
    env = tls_env(server, files, **{k: str(getattr(files, v)) if v else ""
                                    for k, v in overrides.items()})
    code, out, seconds = run_until_exit(env, tmp_path)
    report(case, seconds, out)
    assert code == 1
    assert f"weft: etcd at {server.endpoint}: {expected}" in out
    assert "retrying" not in out and "Traceback" not in out


def test_unreadable_tls_file_is_named(tls_etcd, tmp_path):
    server, files = tls_etcd
    result = weft(tls_env(server, files, cafile=str(tmp_path / "missing.crt")), "config", "show")
    assert result.returncode == 1
    assert f"weft: cannot read --etcd-cafile {tmp_path / 'missing.crt'}: No such file" in \
        result.stderr


# -- user/password ------------------------------------------------------------------------------
def test_user_password_over_http(auth_etcd, tmp_path):
    run_acquires(auth_env(auth_etcd), tmp_path)


@pytest.mark.parametrize("case, user, password, expected", [
    ("wrong password", "weft", "not-the-password",
     "weft: etcd authentication failed for user 'weft': wrong user name or password"),
    ("permission denied", "stranger", "stranger-secret",
     f"weft: permission denied on {PREFIX}/...: the etcd role of user 'stranger' must allow "
     "read-write on that prefix"),
    ("missing credentials", "", "",
     "requires authentication: set --etcd-username and --etcd-password"),
])
def test_auth_failures_end_run_with_the_cause(auth_etcd, tmp_path, case, user, password,
                                              expected):
    env = auth_env(auth_etcd, user, password)
    if not user:
        env = base_env(auth_etcd.endpoint)
    code, out, seconds = run_until_exit(env, tmp_path)
    report(case, seconds, out)
    assert code == 1
    assert expected in out
    assert "retrying" not in out and "Traceback" not in out


def test_a_refused_watch_is_an_error_not_a_silent_one(auth_etcd):
    # The stranger may not read the prefix: etcd cancels the watch as it creates it.
    registry = EtcdRegistry(EtcdOptions(endpoints=auth_etcd.endpoint, prefix=PREFIX,
                                        username="stranger", password="stranger-secret"))
    errors: queue.Queue = queue.Queue()
    stop = registry.watch_leases(0, lambda batch: None, errors.put)
    try:
        error = errors.get(timeout=EXIT_WITHIN)
    finally:
        stop()
        registry.client.close()
    assert isinstance(error, WatchRefused) and "permission denied" in str(error)


def test_a_stale_token_is_renewed_by_logging_in_again(caplog):
    # Tokens live one second here (etcd's default: 5 idle minutes); calls after that still
    # work, through one fresh login each, and a new watch gets a fresh token too.
    server = EtcdServer(extra_args=("--auth-token-ttl", "1"))
    try:
        server.add_user("weft", "weft-secret", PREFIX + "/")
        server.enable_auth()
        registry = EtcdRegistry(EtcdOptions(endpoints=server.endpoint, prefix=PREFIX,
                                            username="weft", password="weft-secret"))
        caplog.set_level(logging.INFO, logger="weft.control.etcd_client")
        registry.put_network_config(CONFIG)
        time.sleep(3)
        assert registry.get_network_config().backend_type == "alloc"
        assert caplog.text.count("expired; logging in again") == 1
        time.sleep(3)
        events: queue.Queue = queue.Queue()
        stop = registry.watch_leases(registry.list_leases()[1], events.put, events.put)
        time.sleep(3)  # the token the watch was created with is stale again
        subnet = next(iter(registry.get_network_config().network.subnets(new_prefix=24)))
        registry.create_lease(subnet, LeaseAttrs(IPv4Address("192.0.2.72")), ttl=60)
        batch = events.get(timeout=EXIT_WITHIN)
        stop()
        assert not isinstance(batch, BaseException), batch
        assert [lease.subnet for lease in batch.added] == [subnet]
        registry.client.close()
        with pytest.raises(RegistryError, match="wrong user name or password"):
            EtcdRegistry(EtcdOptions(endpoints=server.endpoint, prefix=PREFIX, username="weft",
                                     password="wrong")).get_network_config()
    finally:
        server.stop()
