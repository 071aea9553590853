"""alloc: only acquires and renews the lease; no data path (as flannel's alloc backend)."""

from __future__ import annotations

from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.registry import LeaseEvents


class AllocBackend:
    forward_devices: tuple[str, ...] = ()
    def __init__(self, iface: ExternalInterface) -> None:
        self.iface = iface
        self.mtu = iface.mtu
        self.peers: dict = {}

    def lease_attrs(self) -> LeaseAttrs:
        # flannel's alloc publishes the PublicIP only, like udp
        return LeaseAttrs(self.iface.public_ip)

    def start(self, lease: Lease) -> None:
        pass

    def handle(self, events: LeaseEvents) -> None:
        if events.reset:
            self.peers.clear()
        for lease in events.removed:
            self.peers.pop(lease.subnet, None)
        for lease in events.added:
            self.peers[lease.subnet] = lease

    def status(self) -> dict:
        return {"backend": "alloc", "peers": len(self.peers)}

    def close(self) -> None:
        pass


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> AllocBackend:
    return AllocBackend(iface)
