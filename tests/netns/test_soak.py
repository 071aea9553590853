"""60 s soak: traffic between pods while hosts join and leave; the daemons must not leak.

The full 10-minute run is `python -m weft.tools.lab.soak --seconds 600`; this is its CI size.
"""

from __future__ import annotations

import pytest

from weft.tools.lab.soak import run_soak, summarize

pytestmark = pytest.mark.netns

FD_NOISE = 2  # a netlink or etcd socket opened at the moment of sampling
THREAD_NOISE = 2  # a short-lived helper thread (etcd lease keep-alive, watch reconnect)
RSS_GROWTH_KIB = 64 * 1024  # generous: allocator and JIT caches settle over the first minutes


def test_soak_one_minute_no_growth_and_no_stale_peers():
    result = run_soak(60)
    assert result["cycles"] >= 4, result  # hosts really joined and left, several times
    assert result["pings_answered"] >= 0.9 * result["pings_sent"] > 0, result
    assert result["tcp_gbit_s"] > 0, result
    for host, s in summarize(result).items():
        first_fds, last_fds, _ = s["fds"]
        first_threads, last_threads, _ = s["threads"]
        first_rss, last_rss, _ = s["rss_kib"]
        assert last_fds <= first_fds + FD_NOISE, (host, s)
        assert last_threads <= first_threads + THREAD_NOISE, (host, s)
        assert last_rss - first_rss < RSS_GROWTH_KIB, (host, s)
        assert s["stale_peers_last"] == 0, (host, s)
