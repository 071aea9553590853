"""weft.service lets weft take iptables-legacy's lock under ProtectSystem=strict.

The machine running the suite has no systemd as init, so `systemd-run` cannot start the unit.
The test makes the mounts systemd makes for it instead, from the unit's own lines: in a
private mount (and network) namespace, a fresh tmpfs stands for the host's /run with no lock
file yet; the unit's `+` ExecStartPre= commands run there, unsandboxed; then, for ExecStart=,
a nested namespace bind-mounts the ReadWritePaths= under /run onto themselves and makes /run
read-only (ProtectSystem=strict), and weft's own iptables code applies a rule set through
iptables-legacy-restore, as on a host whose iptables alternative is legacy.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.resources import files

import pytest

UNIT = (files("weft.tools") / "systemd" / "weft.service").read_text()
LOCK = "/run/xtables.lock"
RULES = "*filter\n:WEFT-LOCK-TEST - [0:0]\n-A WEFT-LOCK-TEST -s 10.9.0.0/16 -j RETURN\nCOMMIT\n"

# weft's code path: switch/host/iptables.py runs `iptables-restore --noflush --wait`.
APPLY = ("import sys\nfrom weft.host.iptables import Iptables\n"
         "Iptables().restore(sys.stdin.read())\n")

pytestmark = pytest.mark.skipif(
    not (shutil.which("unshare") and shutil.which("iptables-legacy-restore",
                                                  path="/usr/sbin:/sbin:/usr/bin")),
    reason="needs unshare(1) and iptables-legacy-restore")


def unit_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT, re.MULTILINE)


def privileged_pre_commands() -> list[str]:
    """The unit's ExecStartPre= lines that run outside the sandbox (`+`), prefixes removed."""
    commands = []
    for value in unit_values("ExecStartPre"):
        prefix, command = re.fullmatch(r"([-+@:!|]*)(.*)", value).groups()
        if "+" in prefix:
            commands.append(command)
    return commands


def writable_under_run() -> list[str]:
    return [p.lstrip("-") for v in unit_values("ReadWritePaths") for p in v.split()
            if p.lstrip("-").startswith("/run/")]


def run_as_the_unit(tmp_path, *, pre: list[str], held_by_host: bool = False,
                    apply: str | None = None) -> subprocess.CompletedProcess:
    """`pre` on the host's (fresh) /run, then `apply` (default: weft applies RULES) in the
    sandbox systemd builds for ExecStart=. `held_by_host`: another iptables user holds the
    lock while weft starts."""
    bindir = tmp_path / "bin"  # iptables-restore is iptables-legacy-restore, whatever the host has
    bindir.mkdir(exist_ok=True)
    legacy = shutil.which("iptables-legacy-restore", path="/usr/sbin:/sbin:/usr/bin")
    (bindir / "iptables-restore").unlink(missing_ok=True)
    (bindir / "iptables-restore").symlink_to(legacy)
    rules = tmp_path / "rules"
    rules.write_text(RULES)
    if apply is None:
        apply = f"{shlex.quote(sys.executable)} -c {shlex.quote(APPLY)} < {shlex.quote(str(rules))}"
    binds = "".join(f"[ -e {p} ] && mount --bind {p} {p}; " for p in writable_under_run())
    sandbox = (f"{binds}mount -o remount,bind,ro /run; "
               f"PATH={shlex.quote(str(bindir))}:$PATH; export PATH; {apply}")
    host = ["set -e", "mount --make-rprivate /", "mount -t tmpfs tmpfs /run"]
    if held_by_host:
        # one process that holds an exclusive flock() on the lock until killed
        host += [f"sh -c 'exec 9<>{LOCK}; flock -x 9; exec sleep 20' & HOLDER=$!",
                 f"while flock -n {LOCK} true; do sleep 0.05; done"]
    host += [*pre, "set +e", f"unshare -m sh -c {shlex.quote(sandbox)}", "rc=$?",
             'if [ -n "${HOLDER:-}" ]; then kill "$HOLDER"; fi', "exit $rc"]
    script = tmp_path / "host.sh"
    script.write_text("\n".join(host) + "\n")
    return subprocess.run(["unshare", "-n", "-m", "sh", str(script)], capture_output=True,
                          text=True, timeout=60)


def test_without_the_unit_lines_iptables_legacy_cannot_lock(tmp_path):
    """The failure the unit works around: no lock file, read-only /run."""
    done = run_as_the_unit(tmp_path, pre=[])
    assert done.returncode != 0
    assert f"can't open lock file {LOCK}" in done.stderr, done.stderr


def test_weft_applies_its_rules_in_the_units_sandbox(tmp_path):
    pre = privileged_pre_commands()
    assert pre, "weft.service has no privileged ExecStartPre="
    done = run_as_the_unit(tmp_path, pre=pre)
    assert done.returncode == 0, done.stderr


def test_the_lock_weft_takes_is_the_hosts(tmp_path):
    """With the lock held outside the sandbox (kube-proxy, docker, ...), a restore in the
    sandbox waits for it: the same file, not a private copy. The start's own commands leave
    a held lock alone."""
    # weft's argv but for a 1 s bound on the wait; iptables takes the lock for a COMMIT
    wait_briefly = f"iptables-restore --noflush --wait=1 < {tmp_path / 'rules'}; echo rc=$?"
    done = run_as_the_unit(tmp_path, pre=privileged_pre_commands(), held_by_host=True,
                           apply=wait_briefly)
    assert "Another app is currently holding the xtables lock" in done.stderr, done.stderr
    assert "rc=4" in done.stdout, done.stdout
