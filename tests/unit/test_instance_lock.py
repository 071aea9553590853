"""weft.instance_lock: one `weft run` per subnet file, waited for while it stops, kept across
the daemon's own exec()."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

import pytest

from weft import instance_lock
from weft.instance_lock import ENV_FD, InstanceBusy, InstanceError, keep_across_exec, lock_path


class FakeTime:
    """clock/sleep for claim(): sleeping advances the clock, and may run a side effect."""

    def __init__(self, on_sleep=None) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.sleeps)


@pytest.fixture(autouse=True)
def fresh_claims(monkeypatch):
    """Each test starts with nothing held and no inherited fd named; its fds are closed."""
    monkeypatch.delenv(ENV_FD, raising=False)
    monkeypatch.setattr(instance_lock, "_held", None)
    opened: list[int] = []
    real_claim = instance_lock.claim

    def tracked(*args, **kwargs):
        lock = real_claim(*args, **kwargs)
        opened.append(lock.fd)
        return lock

    monkeypatch.setattr(instance_lock, "claim", tracked)
    yield
    os.environ.pop(ENV_FD, None)  # keep_across_exec() sets it
    for fd in set(opened):
        try:
            os.close(fd)
        except OSError:
            pass


def hold(path: str) -> int:
    """Another holder: a second open file description, which flock treats as another owner."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"4242\n")
    return fd


def test_a_claim_takes_the_lock_and_names_its_pid(tmp_path):
    subnet_file = str(tmp_path / "run" / "subnet.env")
    lock = instance_lock.claim(subnet_file, None)
    assert lock.path == lock_path(subnet_file) == f"{subnet_file}.lock"
    assert instance_lock.holder_pid(lock.path) == os.getpid()
    assert not os.get_inheritable(lock.fd)  # children (iptables, compile step) never hold it
    assert not os.path.exists(subnet_file)  # nothing but the lock file is touched


def test_a_held_lock_is_waited_for_then_refused_in_one_line(tmp_path):
    subnet_file = str(tmp_path / "subnet.env")
    holder = hold(lock_path(subnet_file))
    said: list[str] = []
    time_ = FakeTime()
    try:
        with pytest.raises(InstanceBusy) as refused:
            instance_lock.claim(subnet_file, None, wait=2.0, say=said.append,
                                clock=time_.clock, sleep=time_.sleep)
    finally:
        os.close(holder)
    assert said == [f"another weft run (pid 4242) holds {subnet_file}.lock; waiting up to 2 s "
                    f"for it to stop"]
    assert "pid 4242" in str(refused.value) and "\n" not in str(refused.value)
    assert 2.0 <= time_.now < 2.2  # bounded: the wait ends at its deadline


def test_a_claim_goes_ahead_as_soon_as_the_stopping_daemon_is_gone(tmp_path):
    subnet_file = str(tmp_path / "subnet.env")
    holder = hold(lock_path(subnet_file))

    def exit_on_third_look(sleeps: int) -> None:
        if sleeps == 3:
            os.close(holder)  # the old daemon exited: the kernel drops its flock

    time_ = FakeTime(exit_on_third_look)
    said: list[str] = []
    lock = instance_lock.claim(subnet_file, None, wait=30.0, say=said.append,
                               clock=time_.clock, sleep=time_.sleep)
    assert time_.sleeps == 3 and len(said) == 1
    assert instance_lock.holder_pid(lock.path) == os.getpid()


def test_a_listening_control_socket_is_waited_for_and_the_lock_let_go(tmp_path):
    subnet_file = str(tmp_path / "subnet.env")
    path = str(tmp_path / "weft.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    said: list[str] = []
    time_ = FakeTime()
    try:
        with pytest.raises(InstanceBusy, match="still listens at"):
            instance_lock.claim(subnet_file, path, wait=1.0, say=said.append,
                                clock=time_.clock, sleep=time_.sleep)
    finally:
        listener.close()
    assert len(said) == 1 and "waiting up to 1 s" in said[0]
    # The refused start kept nothing: the next one gets the lock at once.
    assert instance_lock.claim(subnet_file, path, wait=0.0) is not None


def test_a_stale_socket_does_not_hold_a_start_up(tmp_path):
    path = str(tmp_path / "weft.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # what a crashed daemon leaves: the server's start replaces it
    said: list[str] = []
    assert instance_lock.claim(str(tmp_path / "subnet.env"), path, wait=0.0, say=said.append)
    assert said == []


def test_a_path_that_is_not_a_socket_is_refused_at_once(tmp_path):
    path = tmp_path / "weft.sock"
    path.write_text("keep me")
    with pytest.raises(InstanceBusy, match="not a socket"):
        instance_lock.claim(str(tmp_path / "subnet.env"), str(path), wait=30.0)
    assert path.read_text() == "keep me"


def test_the_claim_survives_the_daemons_own_exec(tmp_path):
    """What a SIGHUP re-exec does: the fd named in the environment, inherited by the new
    image, which holds the same lock without waiting, while nobody else could take it."""
    subnet_file = str(tmp_path / "subnet.env")
    instance_lock.claim(subnet_file, None)
    env = keep_across_exec()
    kept = int(env[ENV_FD])
    # a copy above the numbers the handed-over descriptors take (3, 4, ...), inheritable
    assert kept >= 256 and os.environ[ENV_FD] == str(kept) and os.get_inheritable(kept)
    new_image = (
        "import os, sys\n"
        "from weft import instance_lock\n"
        "lock = instance_lock.claim(sys.argv[1], None, wait=0.0)\n"
        "print(lock.fd, os.get_inheritable(lock.fd), os.environ.get(sys.argv[2]))\n")
    done = subprocess.run([sys.executable, "-c", new_image, subnet_file, ENV_FD],
                          env={**os.environ, **env}, pass_fds=[kept],
                          capture_output=True, text=True, timeout=60)
    os.close(kept)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(kept), "False", "None"]  # adopted, not re-opened
    assert "waiting" not in done.stderr


def test_an_environment_naming_another_file_is_not_trusted(tmp_path, caplog):
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)
    try:
        os.environ[ENV_FD] = str(other)
        lock = instance_lock.claim(str(tmp_path / "subnet.env"), None, wait=0.0)
        assert lock.fd != other and ENV_FD not in os.environ
        assert "does not name" in caplog.text
        os.fstat(other)  # left open: it was not ours to close
    finally:
        os.close(other)


def test_keep_across_exec_without_a_claim_changes_nothing():
    assert keep_across_exec() == {} and ENV_FD not in os.environ


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # the subnet file's folder is a file: it cannot be made
    with pytest.raises(InstanceError, match="cannot open the instance lock"):
        instance_lock.claim(str(blocker / "subnet.env"), None, wait=0.0)


def test_weft_run_refused_before_it_starts_says_why_in_one_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    done = subprocess.run([sys.executable, "-m", "weft.cli", "run", "--subnet-file",
                           str(blocker / "subnet.env"), "--etcd-endpoints",
                           "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no traceback
    assert lines[0].startswith(f"weft: cannot open the instance lock {blocker}/subnet.env.lock: ")
