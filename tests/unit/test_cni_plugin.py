"""weft's CNI plugin as a runtime sees it: env + stdin in, result or error JSON out.

The delegate here is a stand-in shell script that logs what it was given, so these need no
root; tests/netns/test_cni.py runs the real bridge and host-local plugins.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weft.cni import install, plugin

ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1450\n"
       "FLANNEL_IPMASQ=false\n")
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.15.2/24"}]}
FAKE_BRIDGE = f"""#!/bin/sh
# Stand-in delegate: log command, container and conf; answer from files beside it.
dir=$(dirname "$0")
conf=$(cat)
printf '%s %s %s\\n' "$CNI_COMMAND" "$CNI_CONTAINERID" "$conf" >> "$dir/calls"
if [ -e "$dir/fail" ]; then cat "$dir/fail"; exit 1; fi
if [ "$CNI_COMMAND" = ADD ]; then echo '{json.dumps(RESULT)}'; fi
"""


class Host:
    """A temp dir standing in for a host: subnet.env, plugin dir, data dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.subnet_env = root / "subnet.env"
        self.subnet_env.write_text(ENV)
        self.bin = root / "bin"
        self.bin.mkdir()
        bridge = self.bin / "bridge"
        bridge.write_text(FAKE_BRIDGE)
        bridge.chmod(0o755)
        self.data = root / "data"

    def conf(self, **over) -> dict:
        return {"cniVersion": "1.0.0", "name": "cbr0", "type": "weft",
                "delegate": {"isDefaultGateway": True}, "subnetFile": str(self.subnet_env),
                "dataDir": str(self.data), **over}

    def env(self, command: str, container: str = "c1", **over) -> dict:
        return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
                "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_ARGS": "",
                "CNI_PATH": f"/nonexistent:{self.bin}", **over}

    def run(self, command: str, conf: dict | str | None = None, **env) -> tuple[int, dict | None]:
        conf = self.conf() if conf is None else conf
        out = io.StringIO()
        text = conf if isinstance(conf, str) else json.dumps(conf)
        code = plugin.main(io.StringIO(text), out, self.env(command, **env))
        return code, json.loads(out.getvalue()) if out.getvalue().strip() else None

    def calls(self) -> list[tuple[str, str, dict]]:
        path = self.bin / "calls"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [(c, cid, json.loads(conf)) for c, cid, conf in (ln.split(" ", 2) for ln in lines)]


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_version_lists_the_spec_versions(host: Host) -> None:
    code, out = host.run("VERSION", {"cniVersion": "0.4.0"})
    assert code == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_add_saves_the_delegate_and_passes_its_result_on(host: Host) -> None:
    code, out = host.run("ADD")
    assert (code, out) == (0, RESULT)
    [(command, container, conf)] = host.calls()
    assert (command, container) == ("ADD", "c1")
    assert conf["type"] == "bridge" and conf["ipam"]["ranges"] == [[{"subnet": "10.1.15.0/24"}]]
    assert json.loads((host.data / "c1").read_text()) == conf


def test_del_replays_the_saved_delegate_after_subnet_env_changed(host: Host) -> None:
    host.run("ADD")
    host.subnet_env.write_text(ENV.replace("10.1.15.1/24", "10.1.99.1/24"))
    assert host.run("DEL") == (0, None)
    command, _, conf = host.calls()[-1]
    assert command == "DEL" and conf["ipam"]["ranges"] == [[{"subnet": "10.1.15.0/24"}]]
    assert not (host.data / "c1").exists()


def test_del_of_an_unknown_container_succeeds_without_calling_the_delegate(host: Host) -> None:
    host.subnet_env.unlink()  # DEL needs neither subnet.env nor a namespace
    assert host.run("DEL", CNI_NETNS="") == (0, None)
    assert host.calls() == []


def test_check_delegates_with_the_runtime_s_prev_result(host: Host) -> None:
    host.run("ADD")
    assert host.run("CHECK", host.conf(prevResult=RESULT)) == (0, None)
    command, _, conf = host.calls()[-1]
    assert command == "CHECK" and conf["prevResult"] == RESULT and conf["type"] == "bridge"


def test_a_failed_delegate_s_error_is_passed_on_and_del_still_cleans_up(host: Host) -> None:
    (host.bin / "fail").write_text('{"cniVersion":"1.0.0","code":11,"msg":"busy"}')
    assert host.run("ADD") == (1, {"cniVersion": "1.0.0", "code": 11, "msg": "busy"})
    (host.bin / "fail").unlink()
    assert host.run("DEL") == (0, None)  # the saved conf lets DEL undo a half-done ADD
    assert [c for c, _, _ in host.calls()] == ["ADD", "DEL"]


@pytest.mark.parametrize(("command", "conf", "env", "code", "words"), [
    ("ADD", "{not json", {}, 6, "not JSON"),
    ("ADD", "[1]", {}, 6, "JSON object"),
    ("ADD", {"cniVersion": "0.2.0", "name": "cbr0"}, {}, 1, "0.3.0, 0.3.1, 0.4.0, 1.0.0"),
    ("ADD", {"name": "cbr0"}, {}, 1, "cniVersion is none"),
    ("ADD", {"cniVersion": "1.0.0"}, {}, 7, "no name"),
    ("ADD", None, {"CNI_NETNS": "", "CNI_PATH": ""}, 4, "CNI_PATH, CNI_NETNS not set"),
    ("FROB", None, {}, 4, "CNI_COMMAND is FROB"),
    ("CHECK", None, {}, 3, "no network added for container c1"),
    ("ADD", None, {"CNI_CONTAINERID": "../x"}, 4, "not a valid container id"),
])
def test_errors_carry_the_spec_s_codes(host: Host, command, conf, env, code, words) -> None:
    status, out = host.run(command, conf, **env)
    assert status == 1 and out["code"] == code and words in out["msg"], out
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert host.calls() == []


def test_missing_subnet_env_says_try_again_later(host: Host) -> None:
    host.subnet_env.unlink()
    status, out = host.run("ADD")
    assert status == 1 and out["code"] == 11 and str(host.subnet_env) in out["msg"]


def test_check_before_0_4_0_is_an_incompatible_version(host: Host) -> None:
    status, out = host.run("CHECK", host.conf(cniVersion="0.3.1"))
    assert status == 1 and out["code"] == 1 and out["cniVersion"] == "0.3.1"


def test_a_delegate_missing_from_cni_path_names_the_path(host: Host) -> None:
    status, out = host.run("ADD", host.conf(delegate={"type": "macvlan"}))
    assert status == 1 and out["code"] == 7 and "macvlan" in out["msg"]
    assert str(host.bin) in out["msg"]


def test_install_writes_kube_flannel_s_conflist_and_a_launcher(tmp_path: Path) -> None:
    conf_path, bin_path = install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"))
    assert json.loads(Path(conf_path).read_text()) == {
        "name": "cbr0", "cniVersion": "0.3.1",
        "plugins": [{"type": "weft", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
                    {"type": "portmap", "capabilities": {"portMappings": True}}]}
    assert sorted(os.listdir(tmp_path / "net.d")) == ["10-weft.conflist"]  # no temp files left
    assert os.access(bin_path, os.X_OK)
    # A runtime execs it with its own environment: no virtualenv, no PYTHONPATH.
    out = subprocess.run([bin_path], input='{"cniVersion":"1.0.0"}', capture_output=True,
                         text=True, env={"CNI_COMMAND": "VERSION"}, timeout=60, check=True)
    assert json.loads(out.stdout)["supportedVersions"][-1] == "1.0.0"


def test_install_as_flannel_takes_over_flannel_s_names(tmp_path: Path) -> None:
    conf_path, bin_path = install.install(str(tmp_path / "net.d"), str(tmp_path / "bin"),
                                          name="flannel")
    assert conf_path.endswith("/10-flannel.conflist") and bin_path.endswith("/bin/flannel")
    assert json.loads(Path(conf_path).read_text())["plugins"][0]["type"] == "flannel"
    assert plugin._data_dir({"type": "flannel"}) == "/var/lib/cni/flannel"
    assert plugin._data_dir({"type": "weft"}) == "/var/lib/cni/weft"


def test_the_plugin_imports_nothing_heavy() -> None:
    probe = ("import sys, weft.cni.plugin\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'numpy', 'numba', 'scapy', 'grpc', 'pyroute2', 'pyetcd'}))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_weft_cni_install_command(tmp_path: Path, capsys) -> None:
    from weft.cli import main

    assert main(["cni", "install", "--conf-dir", str(tmp_path / "c"), "--bin-dir",
                 str(tmp_path / "b"), "--subnet-file", "/run/weft/subnet.env"]) == 0
    conf = json.loads((tmp_path / "c" / "10-weft.conflist").read_text())
    assert conf["plugins"][0]["subnetFile"] == "/run/weft/subnet.env"
    assert os.access(tmp_path / "b" / "weft", os.X_OK)
    assert "10-weft.conflist" in capsys.readouterr().out
