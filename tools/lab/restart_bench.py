"""`weft bench --restart`: what a pod sees while one host's `weft run` is replaced.

A two-host lab, one pod per host: a ping every 5 ms both ways (probe.SteadyPing) and an iperf3
TCP stream pod -> pod run through each scenario, while host 0 is handed over `count` times:
  - stop-start: SIGTERM, wait for the exit, start without descriptors (the baseline: what a
    restart costs without the fd store);
  - reload: SIGHUP, weft re-executes itself with its TUN/TAP and UDP socket (same PID);
  - restart: as `systemctl restart` with FileDescriptorStoreMax= (SystemdStandIn keeps the
    descriptors in its store and passes them to the next start);
  - upgrade: one SIGHUP after the compiled code's cache was emptied, as after installing a new
    version: the old process compiles the new data path while it forwards, then hands over.
The upgrade needs a cache of its own to empty: the bench's daemons then use NUMBA_CACHE_DIR
under the checkout's cache (filled once, before the lab starts), never the cache others use.

Per scenario: pings sent and lost each way, the longest RTT, the TCP stream's worst 0.5 s
interval beside its median one and its retransmits, and from host 0's log the gap (the old
process's last line before it stops forwarding to the new one's "datapath" line) and the
overlap (how long the old process kept forwarding while the new code was made ready).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from weft import jitcache
from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.systemd_standin import SystemdStandIn
from weft.tools.lab.topology import Lab

SCENARIOS = ("stop-start", "reload", "restart", "upgrade")
BACKENDS = ("vxlan", "udp")
HOST = 0  # the host handed over; host 1 keeps running
SETTLE = 2.0  # seconds of steady traffic before the first and after the last hand-over
BETWEEN = 0.5  # seconds between hand-overs

# Log lines (weft.cli, weft.daemon, weft.drivers.mode_fallback) that bound a hand-over.
_OLD_ENDS = ("reloading: handing devices", "stopping; keeping lease")
_NEW_FORWARDS = "datapath "
_RELOAD_ASKED = "received SIGHUP"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+: (.*)$")


# -- the log: when forwarding stopped and started again -------------------------------------

def handover_times(log_text: str) -> list[dict]:
    """Per hand-over in `log_text` (weft's text log): gap, seconds from the old process's last
    line before its loops stop to the new one's first "datapath" line, and overlap, seconds
    from the signal to that last line (the old loops forwarded while the new code got ready)."""
    found: list[dict] = []
    asked = ended = None  # asked: a SIGHUP (after SIGTERM the old one forwards for nobody)
    for line in log_text.splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match[2]
        if message.startswith(_RELOAD_ASKED):
            asked = when
        elif message.startswith(_OLD_ENDS):
            ended = when
        elif message.startswith(_NEW_FORWARDS) and ended is not None:
            found.append({"gap": when - ended,
                          "overlap": ended - asked if asked is not None else 0.0})
            asked = ended = None
    return found


class LogTail:
    """What host `index`'s log gained since the last mark()."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster, self.index, self.offset = cluster, index, 0
        self.mark()

    def mark(self) -> None:
        self.offset = len(self.cluster.host_log(self.index))

    def text(self) -> str:
        return self.cluster.host_log(self.index)[self.offset:]


def wait_for(predicate: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


# -- traffic: pings both ways and a TCP stream -----------------------------------------------

@contextlib.contextmanager
def traffic(cluster: Cluster) -> Iterator[dict]:
    """Pings every 5 ms both ways and an iperf3 TCP stream pod 0 -> pod 1 while the block runs;
    the dict is filled at the end: pings (two SteadyPing results), tcp (tcp_figures)."""
    lab = cluster.lab
    src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
    server = lab.run(dst.ns, ["iperf3", "-s", "-1", "-B", str(dst.ip)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    pingers: list[probe.SteadyPing] = []
    result: dict = {}
    try:
        probe.wait_reachable(src.ns, str(dst.ip), timeout=10)
        pingers = [probe.SteadyPing(src.ns, str(dst.ip)), probe.SteadyPing(dst.ns, str(src.ip))]
        # -t: longer than any scenario; SIGINT ends it and iperf3 still writes its intervals.
        client = lab.run(src.ns, ["iperf3", "-c", str(dst.ip), "-t", "3600", "-i", "0.5", "-J"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(SETTLE)
        yield result
        time.sleep(SETTLE)
    finally:
        result["pings"] = [p.stop() for p in pingers]
        if client is not None:
            client.send_signal(signal.SIGINT)
            try:
                out, _ = client.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                client.kill()
                out, _ = client.communicate()
            result["tcp"] = tcp_figures(out)
        server.kill()
        server.wait()


def tcp_figures(iperf3_json: str, settle: float = SETTLE) -> dict:
    """Worst Mbit/s over iperf3's full 0.5 s intervals beside the median of those before the
    first hand-over (the first `settle` seconds: the steady rate), retransmits, and the error
    iperf3 met, if any but the interrupt that ended it (a reset stream would show here)."""
    try:
        report = json.loads(iperf3_json)
    except ValueError:
        return {"error": "no iperf3 report"}
    sums = [i["sum"] for i in report.get("intervals", [])]
    full = [s for s in sums if s["seconds"] >= 0.4] or sums
    rates = [s["bits_per_second"] / 1e6 for s in full]
    steady = [s["bits_per_second"] / 1e6 for s in full if s["end"] <= settle] or rates
    error = report.get("error", "")
    return {"worst_mbit_s": min(rates, default=0.0),
            "steady_mbit_s": statistics.median(steady) if steady else 0.0,
            "retransmits": sum(s.get("retransmits", 0) for s in sums),
            "error": None if error.startswith("interrupt") else error or None}


# -- the scenarios: each hands host 0 over `count` times -------------------------------------

class Handovers:
    """Host 0's `weft run` and the ways to replace it; `standin` once restarts go through
    systemd's fd store."""

    def __init__(self, cluster: Cluster, cache_dir: str | None, log: Callable[[str], None]):
        self.cluster = cluster
        self.cache_dir = cache_dir
        self.log = log
        self.standin: SystemdStandIn | None = None
        self.stop_seconds: list[float] = []

    @property
    def proc(self):
        return self.cluster.host(HOST).proc

    def wait_serving(self, timeout: float = 60.0) -> None:
        def serving() -> bool:
            status = self.cluster.status(HOST) or {}
            return bool(status.get("ready") and status.get("peers"))

        wait_for(serving, f"host {HOST} not ready:\n{self.cluster.host_log(HOST)[-2000:]}",
                 timeout)

    def stop_start(self) -> None:
        started = time.monotonic()
        self.cluster.stop_weft(HOST, timeout=60)
        self.stop_seconds.append(time.monotonic() - started)
        self.cluster.start_weft(HOST)
        self.wait_serving()

    def reload(self, timeout: float = 60.0) -> None:
        tail = LogTail(self.cluster, HOST)
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "adopted device" in tail.text(),
                 f"the reload adopted no device:\n{tail.text()[-2000:]}", timeout)
        self.wait_serving()

    def restart(self) -> None:
        if self.standin is None:  # hand host 0 to systemd's stand-in (not measured)
            self.cluster.stop_weft(HOST, timeout=60)
            self.standin = SystemdStandIn(self.cluster, HOST)
            self.standin.start()
            self.standin.wait_ready(timeout=60)
            wait_for(lambda: (self.standin.drain() or len(self.standin.store) >= 2),
                     f"weft stored {self.standin.store}, not its device and socket", 30)
            return
        # SIGTERM, wait for the exit, start with the store, READY=1
        self.stop_seconds.append(self.standin.restart())
        self.wait_serving()

    def upgrade(self) -> None:
        """The installed code changed: its compiled code is in no cache. Emptying the bench's
        own cache makes it so; the old process compiles while it forwards, then hands over."""
        assert self.cache_dir is not None
        shutil.rmtree(self.cache_dir)
        os.makedirs(self.cache_dir)
        self.reload(timeout=900.0)

    def close(self) -> None:
        if self.standin is not None:
            proc = self.standin.proc
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
            self.standin.close()


def run_scenario(cluster: Cluster, handovers: Handovers, scenario: str, count: int) -> dict:
    step = {"stop-start": handovers.stop_start, "reload": handovers.reload,
            "restart": handovers.restart, "upgrade": handovers.upgrade}[scenario]
    if scenario == "restart":
        step()  # the first start under the stand-in fills its store; not a hand-over
    if scenario == "upgrade":
        count = 1
    tail = LogTail(cluster, HOST)
    handovers.stop_seconds.clear()
    started = time.monotonic()
    with traffic(cluster) as seen:
        for n in range(count):
            if n:
                time.sleep(BETWEEN)
            step()
    times = handover_times(tail.text())
    there, back = seen["pings"]
    return {"scenario": scenario, "count": count, "seconds": time.monotonic() - started,
            "sent": [there["sent"], back["sent"]],
            "lost": [there["sent"] - there["received"], back["sent"] - back["received"]],
            "max_rtt_ms": max((p["max_rtt"] or 0.0) * 1e3 for p in (there, back)),
            "tcp": seen.get("tcp", {"error": "no iperf3 report"}),
            "gap_ms": [t["gap"] * 1e3 for t in times],
            "overlap_s": [t["overlap"] for t in times],
            "stop_s": list(handovers.stop_seconds),
            "traceback": "Traceback" in tail.text()}


def measure(backend: str, count: int, scenarios=SCENARIOS, cache_dir: str | None = None,
            log: Callable[[str], None] = print) -> list[dict]:
    """Every scenario in order on one fresh lab for `backend`; a row per scenario."""
    rows = []
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend=backend, log=log)
        cluster.start_etcd()
        if cache_dir is not None:
            cluster.env["NUMBA_CACHE_DIR"] = cache_dir
        for h in cluster.hosts:
            cluster.start_weft(h.index)
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.add_pods(1)
        handovers = Handovers(cluster, cache_dir, log)
        try:
            for scenario in scenarios:
                log(f"[restart] {backend}: {scenario} x{1 if scenario == 'upgrade' else count}")
                row = run_scenario(cluster, handovers, scenario, count)
                rows.append({"backend": backend, **row})
                log("  " + format_row(rows[-1]))
        finally:
            handovers.close()
    return rows


# -- output ----------------------------------------------------------------------------------

def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}/{max(values):.0f}" if values else "-"


def format_row(row: dict) -> str:
    return "  ".join(_cells(row))


def _cells(row: dict) -> tuple[str, ...]:
    tcp = row["tcp"]
    rate = (f"{tcp['worst_mbit_s']:.0f}/{tcp['steady_mbit_s']:.0f}" if "worst_mbit_s" in tcp
            else "-")
    if tcp.get("error"):
        rate += " (" + tcp["error"][:30] + ")"
    return (row["backend"], row["scenario"], str(row["count"]),
            "{}/{}".format(*row["sent"]), "{}/{}".format(*row["lost"]),
            f"{row['max_rtt_ms']:.0f}", rate, str(tcp.get("retransmits", "-")),
            _ms(row["gap_ms"]), f"{max(row['overlap_s'], default=0.0):.2f}",
            f"{max(row['stop_s']):.2f}" if row["stop_s"] else "-")


HEADER = ("backend", "scenario", "n", "pings sent", "lost", "max RTT ms", "TCP Mbit/s",
          "retrans", "gap ms", "overlap s", "stop s")


def format_table(rows: list[dict]) -> str:
    table = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    lines.append(
        "(pings sent, lost: pod 0 -> pod 1 / pod 1 -> pod 0, one every 5 ms; max RTT: the "
        "longest echo in the scenario; TCP: iperf3 pod 0 -> pod 1, worst 0.5 s interval / "
        f"median 0.5 s interval in the {SETTLE:.0f} s before the first hand-over; "
        "retrans: the sender's retransmits in the scenario; gap: median/max "
        "of the old process's last log line before its loops stop to the new one's "
        "\"datapath\" line; overlap: the old process forwarding while the new code got ready "
        "(SIGHUP to hand-over; exec keeps the PID, and systemd starts the new process after "
        "the old one exited: no two weft processes ever run at once); stop: SIGTERM to exit)")
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------

def bench_cache_dir() -> str:
    """The bench's own compile cache, beside the checkout's: emptied for the upgrade."""
    return os.path.join(jitcache.cache_root(), "restart-bench")


def fill_cache(cache_dir: str, log: Callable[[str], None]) -> None:
    """Compile into `cache_dir` before the lab starts (nothing to do when it is warm)."""
    os.makedirs(cache_dir, exist_ok=True)
    log(f"[restart] compiling the data path into {cache_dir} (once per version)")
    subprocess.run([sys.executable, "-m", "weft.drivers.compile_job"], check=True,
                   env={**os.environ, "NUMBA_CACHE_DIR": cache_dir},
                   stdout=subprocess.DEVNULL)


def run_restart_bench(count: int = 3, backends=BACKENDS, scenarios=SCENARIOS,
                      as_json: bool = False, log: Callable[[str], None] = print) -> int:
    if not shutil.which("iperf3"):
        log("weft: bench --restart needs iperf3 (Debian: apt-get install iperf3)")
        return 1
    cache_dir = None
    if "upgrade" in scenarios:
        cache_dir = bench_cache_dir()
        fill_cache(cache_dir, log)
    rows = [row for backend in backends
            for row in measure(backend, count, scenarios, cache_dir, log)]
    print(json.dumps(rows, indent=2) if as_json else format_table(rows))
    return 0
