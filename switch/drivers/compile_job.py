"""Compiling the data path: one visible, shared step, done once per installed version.

numba compiles weft's kernels on their first call and caches the machine code (weft.jitcache
says where and when it is stale). From a cold cache that costs 1-2 minutes of CPU: the
pipeline's steps (what the Python loop and replay call) take ~10 s, the compiled loops the
rest. Several daemons starting at once on a fresh install (the demo's, a node's after an
upgrade) would each compile the same code in parallel, and a daemon compiling on its own
thread would hold back its pods' traffic for that long.

So compiling is its own job, in its own process (`weft compile`, or `python -m
weft.drivers.compile_job` started by a daemon): it takes an exclusive lock next to the cache,
compiles in two stages and leaves a marker per stage, named after the stamp of the code it
compiled. A second process waits on the lock, then finds the markers and compiles nothing.
Each stage is announced on stdout as it ends ("ready steps", "ready loops"), so a daemon can
start its Python loop after the first stage and move to the compiled loops after the second.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from ipaddress import IPv4Network

from weft import jitcache

log = logging.getLogger(__name__)

STEPS = "steps"  # the pipeline's compiled steps: the Python loop, replay and trace call them
LOOPS = "loops"  # the compiled loops of weft.drivers.compiled_loops (they hold the steps)
STAGES = (STEPS, LOOPS)
_STAGE_SOURCE = {STEPS: ("packet", "pipeline_steps.py"),
                 LOOPS: ("drivers", "compiled_loops.py")}
LOCK_NAME = "weft-compile.lock"


def marker_dir() -> str | None:
    """Where the markers and the lock live: beside numba's cache, if we can write there."""
    folder = jitcache.cache_root()
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def stage_stamp(stage: str) -> str:
    """A digest of what a stage's machine code depends on: the weft files it is stamped with
    (weft.jitcache: path, mtime, size, as numba's staleness test), numba, Python and the CPU."""
    import numba  # only to name its version

    source = os.path.join(jitcache.package_root(), *_STAGE_SOURCE[stage])
    digest = hashlib.sha256()
    for path in jitcache.stamp_files(source):
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, jitcache.package_root())}:{st.st_mtime_ns}:"
                      f"{st.st_size}\n".encode())
    digest.update(f"numba {numba.__version__} python {sys.version} "
                  f"{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def _marker(folder: str, stage: str) -> str:
    return os.path.join(folder, f"weft-compiled-{stage}-{stage_stamp(stage)}")


def is_compiled(stage: str = LOOPS) -> bool:
    """Whether this version's `stage` is in the cache (a marker written after it compiled)."""
    folder = marker_dir()
    return folder is not None and os.path.exists(_marker(folder, stage))


@contextmanager
def _compile_lock(folder: str | None, report: Callable[[str], None]):
    if folder is None:  # no shared place: compile unshared rather than not at all
        yield
        return
    with open(os.path.join(folder, LOCK_NAME), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("another process is compiling the data path; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _compile_steps() -> None:
    from weft.packet.batch import Batch
    from weft.packet.encap import ENCAPS
    from weft.packet.pipeline import Pipeline

    # Every encapsulation calls the same two compiled steps (the row's code picks its kernel
    # inside), with the same argument types: one call each compiles them for all.
    pipeline = Pipeline(next(iter(ENCAPS.values())), IPv4Network("10.0.0.0/16"), 24)
    batch = Batch(1)
    pipeline.egress(batch, 0)
    pipeline.ingress(batch, 0)


def _compile_loops() -> None:
    from weft.drivers.compiled_driver import compile_loops

    compile_loops()


_COMPILERS = {STEPS: _compile_steps, LOOPS: _compile_loops}


def compile_datapath(report: Callable[[str], None] = lambda line: None,
                     on_ready: Callable[[str], None] = lambda stage: None,
                     stages: tuple[str, ...] = STAGES) -> dict[str, float]:
    """Compile (or find compiled) each stage under the shared lock; seconds each took to
    compile, 0.0 for a stage that was compiled already. report(line) hears what happens,
    on_ready(stage) when a stage is in the cache.

    A stage compiled already is announced without waiting for the lock: a daemon's Python
    loop needs only the steps, which are ready long before another process's loops are.
    """
    folder = marker_dir()
    took: dict[str, float] = {}
    for stage in stages:
        marker = _marker(folder, stage) if folder else None
        took[stage] = 0.0
        if not (marker and os.path.exists(marker)):
            # One lock a stage: a process that needs only the steps is not held up by the
            # loops another process is compiling; a stage marked meanwhile is not compiled again.
            with _compile_lock(folder, report):
                if not (marker and os.path.exists(marker)):
                    took[stage] = _compile_stage(stage, marker, report)
        on_ready(stage)
    return took


def _compile_stage(stage: str, marker: str | None, report: Callable[[str], None]) -> float:
    report(f"compiling the data path ({stage}) for this version: first start only")
    t0 = time.monotonic()
    _COMPILERS[stage]()
    took = time.monotonic() - t0
    if marker:
        with open(marker, "w") as f:
            f.write(f"compiled in {took:.1f} s\n")
    report(f"compiled {stage} in {took:.1f} s")
    return took


class CompileJob:
    """A `python -m weft.drivers.compile_job` child: the daemon's view of the shared compile.

    The child prints "ready <stage>" as each stage is in the cache; wait(stage) blocks until
    then (or until the child failed: then it returns False and `error` says why).
    """

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.report = report or (lambda line: log.info("compile step: %s", line))
        self.started = time.monotonic()
        self.seconds: float | None = None  # wall time until the last stage was ready
        self.error = ""
        self._ready: dict[str, threading.Event] = {s: threading.Event() for s in STAGES}
        self._done = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weft.drivers.compile_job", "--announce"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # a Ctrl-C at the daemon's terminal is the daemon's
        self._said: list[str] = []  # the child's last lines on stderr, for `error`
        threading.Thread(target=self._relay, name="weft-compile-log", daemon=True).start()
        threading.Thread(target=self._read, name="weft-compile", daemon=True).start()

    def _relay(self) -> None:
        """The child's report lines go to our log (so a host's log says who compiled)."""
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip()
            if line:
                self._said = [*self._said[-9:], line]
                self.report(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stage = line.removeprefix("ready ").strip()
            if stage in self._ready:
                if stage == STAGES[-1]:
                    self.seconds = time.monotonic() - self.started
                self._ready[stage].set()
        code = self.proc.wait()
        if code != 0:
            self.error = f"the compile step exited {code}: {' / '.join(self._said[-3:])}"
        self._done.set()
        for event in self._ready.values():
            event.set()  # wake the waiters: they read `error`

    def wait(self, stage: str, timeout: float | None = None) -> bool:
        """Block until `stage` is ready; False if the child failed (or the wait timed out)."""
        return self._ready[stage].wait(timeout) and not self.error

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weft.drivers.compile_job")
    parser.add_argument("--announce", action="store_true",
                        help="print 'ready <stage>' lines (for the daemon that started us)")
    args = parser.parse_args(argv)
    compile_datapath(report=lambda line: print(line, file=sys.stderr, flush=True),
                     on_ready=_announce if args.announce else lambda stage: None)
    return 0


def _announce(stage: str) -> None:
    print(f"ready {stage}", flush=True)  # what CompileJob reads


if __name__ == "__main__":
    sys.exit(main())
