"""udp: flannel's userspace backend. A TUN `weft0`; each inner IPv4 packet travels bare as one
UDP datagram from port to port (default: weft.packet.encap.UDP), TTL decremented on send and
receive."""

from __future__ import annotations

from weft.backends.overlay import OverlayBackend
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.packet.encap import UDP


class UdpBackend(OverlayBackend):
    encap = UDP

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.iface.public_ip)  # flannel's udp writes no BackendType

    def _program(self, lease: Lease) -> None:
        self.pipeline.table.set_peer(lease.subnet, lease.attrs.public_ip, None)


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> UdpBackend:
    return UdpBackend(config, iface, options)
