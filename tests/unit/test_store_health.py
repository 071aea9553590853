"""StoreHealth: what an etcd outage looks like in the log and in the status snapshot."""

from __future__ import annotations

import logging

from weft.control.memory_registry import ManualClock
from weft.control.store_health import StoreHealth


def test_an_outage_logs_one_line_per_doubling_and_a_summary(caplog):
    caplog.set_level(logging.INFO, logger="weft.control.store_health")
    clock = ManualClock()
    health = StoreHealth(clock)
    health.success()  # answers while up log nothing
    for _ in range(100):
        clock.advance(0.123)
        health.failure("renew", "UNAVAILABLE: connection refused")
    snap = health.snapshot()
    assert snap.up is False and snap.retries == 100 and snap.outages == 1
    assert abs(snap.down_for - 99 * 0.123) < 1e-6
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7  # retries 1, 2, 4, 8, 16, 32, 64
    assert lines[0] == "etcd unreachable (renew): UNAVAILABLE: connection refused; retrying"
    assert lines[-1].startswith("etcd still unreachable after 7.7 s, 64 retries (renew)")
    clock.advance(0.1)
    health.success()
    health.success()
    assert caplog.records[-1].getMessage() == "etcd reachable again after 12.3 s, 100 retries"
    assert len(caplog.records) == 8
    assert health.snapshot().up is True and health.snapshot().retries == 0


def test_watch_state_and_restarts():
    health = StoreHealth()
    assert health.snapshot().watch == "idle"
    health.set_watch("connected")
    health.watch_restarted()
    assert (health.snapshot().watch, health.snapshot().watch_restarts) == ("connected", 1)
