"""What host-gw and the userspace backends share around the repair pass.

Both program peers under one lock that the repair pass (weft.host.reconcile) also takes, and
both hear from that pass when the external interface's address moved: the move is kept until
the daemon asks (`changed_lease_attrs`, once a loop turn) and republishes our lease.
"""

from __future__ import annotations

import dataclasses
import threading
from ipaddress import IPv4Address

from weft.backends.peers import PeerPrograms
from weft.control.iface import ExternalInterface
from weft.control.lease import LeaseAttrs
from weft.control.peer_sync import PeerChanges
from weft.host.reconcile import Reconciler


class RepairedBackend:
    iface: ExternalInterface
    peers: PeerPrograms

    def _init_repair(self) -> None:
        self.lock = threading.RLock()  # peer programming and repair passes take turns
        self.reconciler = Reconciler(self)
        # Set by the repair pass when our PublicIP moved, taken by changed_lease_attrs().
        self._public_ip_moved = threading.Event()

    def lease_attrs(self) -> LeaseAttrs:
        raise NotImplementedError

    def handle(self, changes: PeerChanges) -> None:
        with self.lock:
            self.peers.handle(changes)

    def peers_synced(self) -> None:
        pass

    def carried_fds(self) -> dict[str, int]:
        return {}  # host-gw: routes live in the kernel, nothing to carry

    def detach(self) -> dict[str, int]:
        self.reconciler.stop()
        return self.carried_fds()

    def changed_lease_attrs(self) -> LeaseAttrs | None:
        if not self._public_ip_moved.is_set():
            return None
        self._public_ip_moved.clear()  # before reading: a move after this is seen next turn
        return self.lease_attrs()

    def _note_public_ip(self, address: IPv4Address) -> None:
        """The repair pass saw our address move: use it, and tell the daemon on its next turn."""
        self.iface = dataclasses.replace(self.iface, address=address, public_ip=address)
        self._public_ip_moved.set()
