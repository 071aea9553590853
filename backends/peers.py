"""Per-peer programming shared by the backends (flannel's route network, trimmed).

Turns LeaseEvents into program/unprogram calls: a reset diffs against what is programmed, a
changed lease is reprogrammed, a lease of another backend type is skipped with a warning, and
one failing peer is logged while the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Network

from weft.control.lease import Lease
from weft.control.registry import LeaseEvents

log = logging.getLogger(__name__)


class PeerPrograms:
    def __init__(self, backend_type: str, program: Callable[[Lease], None],
                 unprogram: Callable[[Lease], None]) -> None:
        self.backend_type = backend_type
        self._program = program
        self._unprogram = unprogram
        self.programmed: dict[IPv4Network, Lease] = {}
        self.failed: dict[IPv4Network, str] = {}  # subnet -> why it is not programmed

    def handle(self, events: LeaseEvents) -> None:
        if events.reset:
            current = {lease.subnet for lease in events.added}
            for subnet in list(self.programmed):
                if subnet not in current:
                    self._remove(subnet)
            for subnet in list(self.failed):
                if subnet not in current:
                    del self.failed[subnet]
        for lease in events.removed:
            self._remove(lease.subnet)
            self.failed.pop(lease.subnet, None)
        for lease in events.added:
            self._add(lease)

    def _add(self, lease: Lease) -> None:
        if lease.attrs.effective_backend != self.backend_type:
            log.warning("ignoring lease %s of PublicIP %s: backend %s, we run %s",
                        lease.subnet, lease.attrs.public_ip, lease.attrs.effective_backend,
                        self.backend_type)
            self.failed[lease.subnet] = f"backend type {lease.attrs.effective_backend}"
            return
        old = self.programmed.get(lease.subnet)
        if old is not None and old.attrs == lease.attrs:
            return
        if old is not None:
            self._remove(lease.subnet)
        try:
            self._program(lease)
        except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the others
            log.error("programming peer %s (%s) failed: %s", lease.subnet,
                      lease.attrs.public_ip, exc)
            self.failed[lease.subnet] = str(exc)
            return
        self.failed.pop(lease.subnet, None)
        self.programmed[lease.subnet] = lease
        log.info("peer %s via %s programmed", lease.subnet, lease.attrs.public_ip)

    def _remove(self, subnet: IPv4Network) -> None:
        lease = self.programmed.get(subnet)
        if lease is None:
            return
        try:
            self._unprogram(lease)
            log.info("peer %s removed", subnet)
        except Exception as exc:  # noqa: BLE001
            log.error("removing peer %s failed: %s", subnet, exc)
        # Forget it only now: status must not report a peer gone while its routes still work.
        del self.programmed[subnet]
