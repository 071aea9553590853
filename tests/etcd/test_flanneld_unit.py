"""A flanneld unit's command line, unchanged but for the binary, runs `weft run`.

Fedora/CentOS ship `flanneld.service` with
    EnvironmentFile=/etc/sysconfig/flanneld
    ExecStart=/usr/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} \
              -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS
The test expands that line as systemd does (EnvironmentFile syntax; `${VAR}` inside a word,
`$VAR` alone split into words) and runs the result with the alloc backend: no root needed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from test_run_alloc import stop, wait_for_subnet

EXEC_START = ("/usr/bin/flanneld -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} "
              "-etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS")

SYSCONFIG = """\
# Flanneld configuration options

# etcd url location.  Point this to the server where etcd runs
FLANNEL_ETCD_ENDPOINTS="{endpoints}"

# etcd config key.  This is the configuration key that flannel queries
# For address range assignment
FLANNEL_ETCD_PREFIX="{prefix}"

# Any additional options that you want to pass
FLANNEL_OPTIONS="-iface=lo -public-ip 192.0.2.61 -subnet-file={subnet_file} -ip-masq=true \
-iptables-forward-rules=true -subnet-lease-renew-margin 30 -v=0"
"""


def read_environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile=: KEY=VALUE lines, # comments, quotes removed, \\-newline
    joins lines."""
    env = {}
    for line in text.replace("\\\n", "").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value)
        env[key.strip()] = " ".join(words)
    return env


def expand_exec_start(line: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart= expansion: a word that is exactly $VAR becomes the value's words;
    ${VAR} elsewhere is replaced inside its word."""
    argv = []
    for word in shlex.split(line):
        if re.fullmatch(r"\$\w+", word):
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


def weft_instead_of_flanneld(argv: list[str]) -> list[str]:
    assert argv[0] == "/usr/bin/flanneld"
    return [sys.executable, "-m", "weft.cli", "run", *argv[1:]]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "FLANNELD_"))}
    env["WEFT_CONTROL_SOCKET"] = ""  # several daemons in the suite: none takes the default
    env.update(extra)
    return env


def test_fedora_unit_exec_start_runs_unchanged(etcd_server, etcd_prefix, registry, tmp_path):
    registry.put_network_config('{"Network":"10.7.0.0/16","Backend":{"Type":"alloc"}}')
    subnet_file = tmp_path / "subnet.env"
    sysconfig = SYSCONFIG.format(endpoints=etcd_server.endpoint, prefix=etcd_prefix,
                                 subnet_file=subnet_file)
    argv = weft_instead_of_flanneld(expand_exec_start(EXEC_START,
                                                      read_environment_file(sysconfig)))
    assert f"-etcd-endpoints={etcd_server.endpoint}" in argv and "-v=0" in argv
    proc = subprocess.Popen(argv, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        subnet = wait_for_subnet(proc, subnet_file)
        assert "FLANNEL_NETWORK=10.7.0.0/16" in subnet_file.read_text()
        assert "FLANNEL_IPMASQ=true" in subnet_file.read_text()
        held = {lease.subnet: str(lease.attrs.public_ip) for lease in registry.list_leases()[0]}
        assert held == {subnet: "192.0.2.61"}
    finally:
        code, out = stop(proc)
    assert code == 0, out
    # -ip-masq and -iptables-forward-rules=true are taken; alloc carries no pod traffic to filter
    assert "backend alloc carries no pod traffic: no iptables rules installed" in out


def test_flanneld_environment_variables_alone_configure_run(etcd_server, etcd_prefix, registry,
                                                           tmp_path: Path):
    registry.put_network_config('{"Network":"10.8.0.0/16","Backend":{"Type":"alloc"}}')
    subnet_file = tmp_path / "subnet.env"
    env = clean_env(FLANNELD_ETCD_ENDPOINTS=etcd_server.endpoint,
                    FLANNELD_ETCD_PREFIX=etcd_prefix, FLANNELD_IFACE="lo",
                    FLANNELD_PUBLIC_IP="192.0.2.62", FLANNELD_SUBNET_FILE=str(subnet_file),
                    FLANNELD_IPTABLES_FORWARD_RULES="false")
    proc = subprocess.Popen([sys.executable, "-m", "weft.cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        subnet = wait_for_subnet(proc, subnet_file)
        assert [str(lease.attrs.public_ip) for lease in registry.list_leases()[0]
                if lease.subnet == subnet] == ["192.0.2.62"]
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert "FORWARD" not in out  # turned off explicitly: nothing to warn about


def test_expansion_helpers_behave_as_systemd():
    env = read_environment_file('A="x y"\n# B=1\nC=\'-p=1 -q\'\n')
    assert env == {"A": "x y", "C": "-p=1 -q"}
    assert expand_exec_start("/bin/f -a=${A} $C $UNSET -z", env) == [
        "/bin/f", "-a=x y", "-p=1", "-q", "-z"]
