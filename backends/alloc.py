"""alloc: only acquires and renews the lease; no data path (as flannel's alloc backend)."""

from __future__ import annotations

from ipaddress import IPv4Network

from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.peer_sync import PeerChanges
from weft.status import BackendStatus, PeerStatus


class AllocBackend:
    forward_devices: tuple[str, ...] = ()
    tracehub = None  # no data path

    def __init__(self, iface: ExternalInterface) -> None:
        self.iface = iface
        self.mtu = iface.mtu
        # The peers PeerSync handed us, for `weft status`: nothing is programmed for them.
        self.peers: dict[IPv4Network, Lease] = {}

    def lease_attrs(self) -> LeaseAttrs:
        # flannel's alloc publishes the PublicIP only, like udp
        return LeaseAttrs(self.iface.public_ip)

    def start(self, lease: Lease) -> None:
        pass

    def handle(self, changes: PeerChanges) -> None:
        for subnet in changes.removed:
            self.peers.pop(subnet, None)
        for lease in changes.added:
            self.peers[lease.subnet] = lease

    def peers_synced(self) -> None:
        pass

    def carried_fds(self) -> dict[str, int]:
        return {}

    def detach(self) -> dict[str, int]:
        return {}

    def changed_lease_attrs(self) -> LeaseAttrs | None:
        return None  # no repair pass watches the interface

    def status(self) -> BackendStatus:
        return BackendStatus(kind="alloc", peers=tuple(
            PeerStatus(subnet=str(subnet), public_ip=str(lease.attrs.public_ip))
            for subnet, lease in sorted(self.peers.items())))

    def close(self) -> None:
        pass


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> AllocBackend:
    return AllocBackend(iface)
