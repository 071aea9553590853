"""The systemd unit and environment file shipped in weft.tools/systemd."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.resources import files

from weft.cli import build_parser, env_name

SYSTEMD = files("weft.tools") / "systemd"


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in (SYSTEMD / "weft.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, value)
    return settings


def test_unit_is_notify_with_watchdog_and_least_privilege():
    unit = unit_settings()
    assert unit["Type"] == "notify" and unit["WatchdogSec"]
    assert unit["CapabilityBoundingSet"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert set(unit["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert unit[key] in ("yes", "strict"), key
    assert unit["ExecStart"].split()[1:] == ["run", "$WEFT_OPTIONS"]


def unit_values(key: str) -> list[str]:
    """Every value of a setting that may be given more than once (ExecStartPre=, ...)."""
    return [line.partition("=")[2] for line in (SYSTEMD / "weft.service").read_text().splitlines()
            if line.startswith(f"{key}=")]


XTABLES_LOCK = "/run/xtables.lock"


def test_unit_creates_the_shared_xtables_lock_and_makes_it_writable():
    """ProtectSystem=strict leaves /run read-only: iptables-legacy then cannot create its lock
    and every restore fails. The unit creates the host's one lock file before the sandboxed
    start (`+`: outside the sandbox) and opens that same file to weft
    (tests/netns/test_xtables_lock.py runs these lines)."""
    creators = [cmd for cmd in unit_values("ExecStartPre") if XTABLES_LOCK in cmd.split()]
    assert len(creators) == 1, unit_values("ExecStartPre")
    prefix, command = re.fullmatch(r"([-+@:!|]*)(.*)", creators[0]).groups()
    assert "+" in prefix, "must run unsandboxed: /run is read-only inside the sandbox"
    assert command.split()[0].endswith("/touch"), "touch: never replaces an existing lock file"
    writable = [p.lstrip("-") for v in unit_values("ReadWritePaths") for p in v.split()]
    assert XTABLES_LOCK in writable
    # the shared lock, not a private one: iptables reads another path from XTABLES_LOCKFILE
    assert not any("XTABLES_LOCKFILE" in v for v in unit_values("Environment"))
    assert unit_settings()["ProtectSystem"] == "strict"  # what the lines above work around


def test_every_variable_in_the_environment_file_is_a_run_flag():
    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    known = {env_name(o) for a in run._actions for o in a.option_strings if o.startswith("--")}
    names = re.findall(r"^#?(WEFT_\w+)=", (SYSTEMD / "weft.env").read_text(), re.MULTILINE)
    assert names and set(names) - {"WEFT_OPTIONS"} <= known, set(names) - known


def _verify(unit_text: str, tmp_path) -> str:
    """systemd's own parser on the unit (ExecStart pointed at the installed weft): its
    complaints, empty when systemd takes every line."""
    path = tmp_path / "weft.service"
    path.write_text(unit_text.replace("/usr/local/bin/weft", shutil.which("weft") or "weft"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, timeout=60)
    return (done.stderr + ("" if done.returncode == 0 else f"exit {done.returncode}")).strip()


def test_systemd_accepts_every_line_of_the_unit(tmp_path):
    unit = (SYSTEMD / "weft.service").read_text()
    assert _verify(unit, tmp_path) == ""
    # the check can fail: one misspelt setting is reported
    assert "notifyy" in _verify(unit.replace("Type=notify", "Type=notifyy"), tmp_path)


def test_systemd_rates_the_hardening(tmp_path):
    """`systemd-analyze security` scores exposure from 0 (locked down) to 10; the unit needs
    CAP_NET_ADMIN and the host's network namespace, and stays in the "OK" band."""
    path = tmp_path / "weft.service"
    path.write_text((SYSTEMD / "weft.service").read_text())
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                           str(path)], capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for weft.service: ([0-9.]+) (\w+)", done.stdout)
    assert level, done.stdout[-500:] + done.stderr
    assert float(level[1]) <= 4.0 and level[2] == "OK", level[0]


def test_unit_compiles_the_data_path_into_its_cache_before_the_daemon_starts():
    """A start after an install or upgrade is compiled before ExecStart (`weft compile`, the same
    binary), into the cache the daemon reads: NUMBA_CACHE_DIR under the unit's CacheDirectory=,
    which systemd makes writable under ProtectSystem=strict."""
    weft = unit_settings()["ExecStart"].split()[0]
    compiles = [cmd for cmd in unit_values("ExecStartPre") if cmd.split()[1:] == ["compile"]]
    assert compiles == [f"{weft} compile"], unit_values("ExecStartPre")
    cache = next(v.partition("=")[2] for v in unit_values("Environment")
                 if v.startswith("NUMBA_CACHE_DIR="))
    assert cache.startswith(f"/var/cache/{unit_settings()['CacheDirectory']}/")
    assert "compile" in build_parser()._subparsers._group_actions[0].choices


def test_unit_reloads_by_sighup_and_keeps_an_fd_store_weft_is_told_about():
    """`systemctl reload` is weft's SIGHUP re-exec; `restart` hands the device and socket over
    through the fd store, which systemd keeps only with FileDescriptorStoreMax= > 0, and which
    weft uses only when $FDSTORE says it exists (systemd >= 254 sets it; the unit for older)."""
    unit = unit_settings()
    assert unit["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]
    store = int(unit["FileDescriptorStoreMax"])
    assert store >= 2  # a device and a socket per overlay device
    assert f"FDSTORE={store}" in unit_values("Environment")
