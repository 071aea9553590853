"""The one place weft runs iptables: `iptables-save -t <table>` and `iptables-restore`.

Whole rule sets go through iptables-restore, never `iptables` once per rule: one process per
apply, and each table changes in one atomic commit. Whichever iptables the host has (nft or
legacy) is used, as flanneld and kube-proxy do, so the rules show up where they look.
"""

from __future__ import annotations

import shutil
import subprocess

TIMEOUT = 30.0  # seconds; iptables waits for the xtables lock, but not forever

RANDOM_FULLY_PROBE = ("*nat\n:WEFT-PROBE - [0:0]\n-A WEFT-PROBE -j MASQUERADE --random-fully\n"
                      "COMMIT\n")


class IptablesError(RuntimeError):
    pass


def _binary(name: str) -> str:
    # /usr/sbin is not on every PATH a service manager hands us.
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise IptablesError(f"{name} not found (install iptables)")
    return found


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IptablesError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise IptablesError(f"{' '.join(argv)} failed ({done.returncode}): "
                            f"{done.stderr.strip()}")
    return done.stdout


class Iptables:
    """iptables-save and iptables-restore --noflush (wait for the xtables lock); version=6:
    ip6tables-save and ip6tables-restore, for the rules of a dual-stack network's IPv6 half."""

    def __init__(self, version: int = 4) -> None:
        self.tool = "ip6tables" if version == 6 else "iptables"

    def save(self, table: str) -> str:
        return _run([_binary(f"{self.tool}-save"), "-t", table])

    def restore(self, text: str) -> None:
        _run([_binary(f"{self.tool}-restore"), "--noflush", "--wait"], stdin=text)

    def supports_random_fully(self) -> bool:
        """Whether MASQUERADE --random-fully is accepted (iptables >= 1.6.2 with a kernel that
        has it); `--test` parses and checks the rule without committing anything."""
        try:
            _run([_binary(f"{self.tool}-restore"), "--test", "--noflush"],
                 stdin=RANDOM_FULLY_PROBE)
        except IptablesError:
            return False
        return True
