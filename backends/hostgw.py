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
        self.ipv6 = config.enable_ipv6  # a route for each peer's IPv6 half too
        self.mtu = iface.mtu
        self.peers = PeerPrograms("host-gw", self._program_many, self._unprogram_many)
        self._init_repair()

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.iface.public_ip, self.iface.public_ipv6, backend_type="host-gw")

    def start(self, lease: Lease) -> None:
        self.reconciler.start()

    # -- what the reconciler keeps in place (weft.host.reconcile.Repairable) ---------------
    def wanted(self) -> Wanted:
        """Each programmed peer's route, and its IPv6 one when both sides are dual-stack."""
        routes = []
        for lease in self.peers.programmed.values():
            routes.append(self._route(lease))
            v6 = self._route_v6(lease)
            if v6 is not None:
                routes.append(v6)
        return Wanted(self.iface, tuple(routes))

    def setup_device(self) -> None:
        pass  # no device of our own

    def recreate_device(self) -> None:
        pass

    def public_ip_changed(self, address: IPv4Address) -> None:
        self._note_public_ip(address)

    def _route(self, lease: Lease) -> Route:
        return Route(lease.subnet, self.iface.index, lease.attrs.public_ip)

    def _program_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        """A route per peer via its PublicIP (and one for its IPv6 half via its PublicIPv6,
        as flannel's host-gw), for peers on our L2 segment (read once a round). A peer's two
        routes succeed or fail together (one batch key)."""
        segments = netlink.connected_networks(self.iface.index)
        segments_v6 = netlink.connected_networks(self.iface.index, family=10) if self.ipv6 else []
        failures: dict[IPv4Network, str] = {}
        batch = NetlinkBatch()
        for lease in leases:
            if not any(lease.attrs.public_ip in net for net in segments):
                failures[lease.subnet] = _off_segment(lease.attrs.public_ip, segments,
                                                      self.iface.name)
                continue
            v6 = self._route_v6(lease)
            if v6 is not None and not any(v6.gateway in net for net in segments_v6):
                failures[lease.subnet] = _off_segment(v6.gateway, segments_v6, self.iface.name)
                continue
            route = self._route(lease)
            batch.route_replace(lease.subnet, route.dst, oif=route.oif, gateway=route.gateway)
            if v6 is not None:
                batch.route_replace(lease.subnet, v6.dst, oif=v6.oif, gateway=v6.gateway)
        failures.update(batch.commit())
        return failures

    def _route_v6(self, lease: Lease) -> Route | None:
        """The route to a peer's IPv6 half, when both sides are dual-stack (a peer whose
        lease has no IPv6 half is reached over IPv4 only)."""
        if not self.ipv6 or lease.ipv6_subnet is None or lease.attrs.public_ipv6 is None:
            return None
        return Route(lease.ipv6_subnet, self.iface.index, lease.attrs.public_ipv6)

    def _unprogram_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        batch = NetlinkBatch()
        for lease in leases:
            batch.route_delete(lease.subnet, lease.subnet, oif=self.iface.index)
            if lease.ipv6_subnet is not None:
                batch.route_delete(lease.subnet, lease.ipv6_subnet, oif=self.iface.index)
        return batch.commit()

    def status(self) -> BackendStatus:
        return BackendStatus(kind="host-gw", peers=self.peers.peers(ipv6=self.ipv6),
                             unprogrammed=self.peers.unprogrammed(),
                             datapath=DatapathStatus(mode="kernel routes"),
                             repair=self.reconciler.status())

    def close(self) -> None:
        self.reconciler.stop()  # routes stay, as flannel leaves them; a restart replaces them


def _off_segment(address: object, segments: list, iface: str) -> str:
    attached = ", ".join(map(str, segments)) or "none"
    return (f"PublicIP {address} is not on our L2 segment ({attached} on {iface}); host-gw "
            f"needs every host on one segment, use vxlan otherwise")


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> HostGwBackend:
    return HostGwBackend(config, iface)
