"""The per-container store of weft's CNI plugin: durable writes, and one operation at a time
per container (a runtime that gives up on a slow ADD sends DEL while the ADD still runs)."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from weft.cni import plugin, store

SUBNET_ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1450\n"
              "FLANNEL_IPMASQ=false\n")
RESULT = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.15.2/24"}]}
# A delegate logging when each command starts and ends; its ADD takes a while once told to.
SLOW_BRIDGE = f"""#!/bin/sh
cat >/dev/null
log="$(dirname "$0")/log"
echo "start $CNI_COMMAND" >> "$log"
if [ "$CNI_COMMAND" = ADD ] && [ -e "$(dirname "$0")/slow" ]; then sleep 0.5; fi
echo "end $CNI_COMMAND" >> "$log"
if [ "$CNI_COMMAND" = ADD ]; then echo '{json.dumps(RESULT)}'; fi
exit 0
"""


class Host:
    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.subnet_env = root / "subnet.env"
        self.subnet_env.write_text(SUBNET_ENV)
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "bridge").write_text(SLOW_BRIDGE)
        (self.bin / "bridge").chmod(0o755)

    def run(self, command: str, container: str = "c1") -> tuple[int, str]:
        conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "weft",
                "subnetFile": str(self.subnet_env), "dataDir": str(self.data)}
        env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container,
               "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": str(self.bin)}
        out = io.StringIO()
        return plugin.main(io.StringIO(json.dumps(conf)), out, env), out.getvalue()

    def log(self) -> list[str]:
        path = self.bin / "log"
        return path.read_text().splitlines() if path.exists() else []

    def files(self) -> list[str]:
        return sorted(os.listdir(self.data))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def in_thread(target, *args) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(target(*args)), daemon=True)
    thread.start()
    return thread, results


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- durability -----------------------------------------------------------------------------

def record(monkeypatch: pytest.MonkeyPatch, events: list) -> None:
    """Log fsync (by inode, so the temp file counts as the file it becomes), replace, unlink."""
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    def unlink(path, **kw) -> None:
        events.append(("unlink", os.stat(path).st_ino))
        real_unlink(path, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "unlink", unlink)


def test_save_syncs_the_file_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(str(tmp_path), "c1", {"type": "bridge"})  # the directory exists already
    events: list = []
    record(monkeypatch, events)
    store.save(str(tmp_path), "c1", {"type": "bridge", "mtu": 1400})
    saved = (tmp_path / "c1").stat()
    assert stat.S_ISREG(saved.st_mode) and json.loads((tmp_path / "c1").read_text())["mtu"] == 1400
    assert events == [("fsync", saved.st_ino), ("replace", saved.st_ino),
                      ("fsync", tmp_path.stat().st_ino)]
    assert os.listdir(tmp_path) == ["c1"]  # no temp file left


def test_remove_syncs_the_directory_after_the_unlink(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(str(tmp_path), "c1", {"type": "bridge"})
    inode = (tmp_path / "c1").stat().st_ino
    events: list = []
    record(monkeypatch, events)
    store.remove(str(tmp_path), "c1")
    assert events == [("unlink", inode), ("fsync", tmp_path.stat().st_ino)]
    store.remove(str(tmp_path), "c1")  # already gone: nothing to do, nothing to sync
    assert len(events) == 2


# --- one operation per container at a time ---------------------------------------------------

@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_a_command_waits_while_another_holds_the_container(host: Host, command: str) -> None:
    assert host.run("ADD")[0] == 0
    with store.locked(str(host.data), "c1"):
        thread, results = in_thread(host.run, command)
        thread.join(0.5)
        assert thread.is_alive() and results == []  # blocked on the lock
    thread.join(10)
    assert results and results[0][0] == 0, results


def test_del_racing_a_slow_add_waits_and_then_undoes_it(host: Host) -> None:
    """Without the lock DEL would remove the conf the ADD just saved and run the delegate's DEL
    while its ADD is still under way; the ADD finishes after it, leaving an interface and an
    address that no saved conf can undo."""
    (host.bin / "slow").touch()
    add, add_result = in_thread(host.run, "ADD")
    wait_for(lambda: "start ADD" in host.log())  # ADD has saved its conf and runs the delegate
    assert host.run("DEL") == (0, "")
    add.join(10)
    assert add_result[0][0] == 0
    assert host.log() == ["start ADD", "end ADD", "start DEL", "end DEL"]
    assert host.files() == []  # the conf and its lock file are gone with the container


def test_lock_files_live_only_as_long_as_their_container(host: Host) -> None:
    assert host.run("ADD")[0] == 0
    assert host.files() == [".c1.lock", "c1"]  # kept: the container is live
    assert host.run("DEL") == (0, "")
    assert host.files() == []
    assert host.run("CHECK", "unknown")[0] == 1  # 3: unknown container
    assert host.run("DEL", "unknown") == (0, "")
    host.subnet_env.unlink()
    assert host.run("ADD", "failed")[0] == 1  # failed before anything was saved
    assert host.files() == []


def test_a_waiter_on_a_removed_lock_file_does_not_run_beside_a_newcomer(tmp_path: Path) -> None:
    """B opens the lock file and waits; A (holding it, no conf saved) removes the file on its
    way out; C then creates a new one. B must not go on holding a lock on the removed file while
    C holds the new one."""
    inside, most, guard = [0], [0], threading.Lock()

    def critical() -> None:
        with store.locked(str(tmp_path), "c1"):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.4)
            with guard:
                inside[0] -= 1

    with store.locked(str(tmp_path), "c1"):  # A
        b, _ = in_thread(critical)
        time.sleep(0.2)  # B has opened .c1.lock and waits in flock
    c, _ = in_thread(critical)
    b.join(10)
    c.join(10)
    assert most[0] == 1
    assert os.listdir(tmp_path) == []
