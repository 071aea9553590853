"""Whether the lease store (etcd) answers, and what the lease watch is doing.

Every registry call and the watch report here, so `weft status`, /metrics and the log can say
"etcd unreachable since T, N retries" instead of staying silent. Logging is rate-limited: the
first failure of an outage is logged, then only the 2nd, 4th, 8th... (at most one line per
backoff step, however many callers retry), and one summary line when the store answers again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from weft.status import EtcdStatus

log = logging.getLogger(__name__)

# What the lease watch is doing; "connected" only means the stream is open: a frozen store
# keeps the stream open and silent, which only a request with a timeout notices.
WATCH_STATES = ("idle", "connected", "reconnecting", "failed")


class StoreHealth:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.up = True
        self.down_since: float | None = None
        self.retries = 0  # failed attempts in the current outage, by any caller
        self.last_error = ""
        self.outages = 0
        self.watch_state = "idle"
        self.watch_restarts = 0  # the watch had to reconnect or re-list

    def failure(self, what: str, error: str) -> None:
        """A request (`what`: "watch", "renew", "check"...) could not reach the store."""
        with self._lock:
            self.last_error = error
            if self.up:
                self.up, self.down_since, self.retries = False, self.clock(), 0
                self.outages += 1
            self.retries += 1
            retries, since = self.retries, self.down_since or self.clock()
        if retries & (retries - 1) == 0:  # 1, 2, 4, 8...: one line per doubling
            if retries == 1:
                log.warning("etcd unreachable (%s): %s; retrying", what, error)
            else:
                log.warning("etcd still unreachable after %.1f s, %d retries (%s): %s",
                            self.clock() - since, retries, what, error)

    def success(self) -> None:
        """A request got an answer."""
        with self._lock:
            if self.up:
                return
            down_for = self.clock() - (self.down_since or self.clock())
            retries = self.retries
            self.up, self.down_since, self.retries = True, None, 0
        log.warning("etcd reachable again after %.1f s, %d retries", down_for, retries)

    def set_watch(self, state: str) -> None:
        assert state in WATCH_STATES, state
        with self._lock:
            self.watch_state = state

    def watch_restarted(self) -> None:
        with self._lock:
            self.watch_restarts += 1

    def snapshot(self) -> EtcdStatus:
        with self._lock:
            return EtcdStatus(
                up=self.up,
                down_since=self.down_since,
                down_for=None if self.down_since is None else self.clock() - self.down_since,
                retries=self.retries,
                last_error=self.last_error,
                outages=self.outages,
                watch=self.watch_state,
                watch_restarts=self.watch_restarts,
            )
