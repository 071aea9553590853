"""host-gw: plain routes to each peer's subnet via its PublicIP; no data path of our own.

The kernel drops those routes when the external interface goes down (or loses its address);
the reconciler (weft.host.reconcile) puts them back once it is usable again.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, IPv4Network

from weft.backends import BackendError
from weft.backends.peers import PeerPrograms
from weft.backends.repaired import RepairedBackend
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.host import netlink
from weft.host.netlink_batch import NetlinkBatch
from weft.host.reconcile import Route, Wanted
from weft.status import BackendStatus, DatapathStatus

log = logging.getLogger(__name__)

NAT_ERROR = ("your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
             "which is not supported by host-gw backend")


class HostGwBackend(RepairedBackend):
    forward_devices: tuple[str, ...] = ()  # routed by the kernel: nothing of ours to forward
    tracehub = None  # no userspace data path to trace

    def __init__(self, config: NetworkConfig, iface: ExternalInterface) -> None:
        if iface.address != iface.public_ip:
            raise BackendError(NAT_ERROR)
        self.iface = iface
        self.mtu = iface.mtu
        self.peers = PeerPrograms("host-gw", self._program_many, self._unprogram_many)
        self._init_repair()

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.iface.public_ip, backend_type="host-gw")

    def start(self, lease: Lease) -> None:
        self.reconciler.start()

    # -- what the reconciler keeps in place (weft.host.reconcile.Repairable) ---------------
    def wanted(self) -> Wanted:
        return Wanted(self.iface, tuple(self._route(lease)
                                        for lease in self.peers.programmed.values()))

    def setup_device(self) -> None:
        pass  # no device of our own

    def recreate_device(self) -> None:
        pass

    def public_ip_changed(self, address: IPv4Address) -> None:
        self._note_public_ip(address)

    def _route(self, lease: Lease) -> Route:
        return Route(lease.subnet, self.iface.index, lease.attrs.public_ip)

    def _program_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        """A route per peer via its PublicIP, for peers on our L2 segment (read once a round)."""
        segments = netlink.connected_networks(self.iface.index)
        failures: dict[IPv4Network, str] = {}
        batch = NetlinkBatch()
        for lease in leases:
            if not any(lease.attrs.public_ip in net for net in segments):
                failures[lease.subnet] = (
                    f"PublicIP {lease.attrs.public_ip} is not on our L2 segment "
                    f"({', '.join(map(str, segments)) or 'none'} on {self.iface.name}); host-gw "
                    f"needs every host on one segment, use vxlan otherwise")
                continue
            route = self._route(lease)
            batch.route_replace(lease.subnet, route.dst, oif=route.oif, gateway=route.gateway)
        failures.update(batch.commit())
        return failures

    def _unprogram_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        batch = NetlinkBatch()
        for lease in leases:
            batch.route_delete(lease.subnet, lease.subnet, oif=self.iface.index)
        return batch.commit()

    def status(self) -> BackendStatus:
        return BackendStatus(kind="host-gw", peers=self.peers.peers(),
                             unprogrammed=self.peers.unprogrammed(),
                             datapath=DatapathStatus(mode="kernel routes"),
                             repair=self.reconciler.status())

    def close(self) -> None:
        self.reconciler.stop()  # routes stay, as flannel leaves them; a restart replaces them


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> HostGwBackend:
    return HostGwBackend(config, iface)
