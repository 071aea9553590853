"""A first start on a cold compile cache (an empty NUMBA_CACHE_DIR), as on a fresh install or
after an upgrade: the README's `weft demo` passes the first time, and daemons starting together
network their pods at once on the Python loop, compile once between them, and move to the
compiled loops when it is done (weft.drivers.compile_job, weft.drivers.mode_fallback)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from weft.drivers import modes
from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab


def test_weft_demo_passes_the_first_time_on_a_cold_cache(tmp_path: Path) -> None:
    cache = tmp_path / "numba"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    weft = [sys.executable, "-c", "import sys; from weft.cli import main; sys.exit(main())"]
    # The README's command; two hosts of one pod instead of three of two keep the suite short,
    # the compile step (what a cold cache changes) is the same.
    result = subprocess.run([*weft, "demo", "--hosts", "2", "--pods", "1"], env=env,
                            capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "[compile] compiling the data path for this version" in out
    assert "OK: all 2 pod pairs answered" in out
    # The demo compiled before the hosts started: no host had to.
    assert out.index("[compile] done in") < out.index("[lab] fabric")
    assert sorted(p.name.split("-")[2] for p in cache.glob("weft-compiled-*")) == \
        ["loops", "steps"]


def test_daemons_on_a_cold_cache_carry_traffic_at_once_and_compile_once(tmp_path: Path) -> None:
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start_etcd()
        cluster.env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba")
        for h in cluster.hosts:
            cluster.start_weft(h.index)
        # Within the time the steps take to compile, not the minute the loops take.
        cluster.wait_leases(timeout=40)
        cluster.wait_synced(timeout=20)
        statuses = [cluster.status(h.index) for h in cluster.hosts]
        for status in statuses:
            assert status is not None
            datapath = status["datapath"]
            assert datapath["mode"] == modes.PLAIN, datapath
            assert datapath["compile"].startswith("in progress"), datapath
        cluster.add_pods(1)
        a, b = cluster.pods()
        assert probe.ping(a.ns, str(b.ip), count=3, timeout=2.0) != [None] * 3, \
            "pods do not reach each other while the data path compiles"

        deadline = time.monotonic() + 400
        modes_now: list[str] = []
        while time.monotonic() < deadline:
            modes_now = [cluster.status(h.index)["datapath"]["mode"]
                         for h in cluster.hosts]
            if modes.PLAIN not in modes_now:
                break
            time.sleep(1)
        assert modes.PLAIN not in modes_now, [cluster.host_log(h.index)[-2000:]
                                              for h in cluster.hosts]
        for h in cluster.hosts:
            datapath = cluster.status(h.index)["datapath"]
            assert datapath["compile"].startswith("compiled in"), datapath
        rtts = probe.ping(a.ns, str(b.ip), count=5, timeout=2.0)
        assert all(rtt is not None for rtt in rtts), rtts

        logs = [cluster.host_log(h.index) for h in cluster.hosts]
        for text in logs:
            assert "compiling the data path for this version: first start only" in text
        # Both asked; one process compiled each stage, the other waited and found it done.
        assert sum(text.count("compiled loops in") for text in logs) == 1, logs
        assert sum(text.count("compiled steps in") for text in logs) == 1, logs
        for h in cluster.hosts:
            assert cluster.stop_weft(h.index) == 0
    assert netns.list_prefixed(lab.prefix) == []
