"""vxlan: a TAP `weft.<VNI>` that looks to the kernel exactly like flannel's `flannel.<VNI>`.

The TAP's MAC is our VtepMAC; each peer gets a permanent neighbour entry (its subnet's network
address -> its VtepMAC) and an onlink route via that address, as flanneld programs. Where
flanneld adds an FDB entry (VtepMAC -> PublicIP), weft fills the peer table the fast path reads.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from weft.backends.overlay import DEVICE_QUEUE, OverlayBackend
from weft.backends.peers import PeerPrograms
from weft.backends.vtep import random_mac
from weft.backends.vxlan_v6 import VxlanV6Half
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.host import netlink
from weft.host.netlink_batch import NetlinkBatch
from weft.host.reconcile import Neighbour, Route
from weft.packet.encap import VXLAN
from weft.packet.table import PeerTable, parse_mac


class VxlanBackend(OverlayBackend):
    encap = VXLAN
    v6: VxlanV6Half | None = None  # the IPv6 half (EnableIPv6)

    def __init__(self, config: NetworkConfig, iface: ExternalInterface,
                 options: dict | None = None) -> None:
        super().__init__(config, iface, options)
        if self.reused:
            self.mac = netlink.link_mac(self.index)  # keep the VtepMAC peers already know
        else:
            self.mac = random_mac()
            netlink.configure_link(self.index, mtu=self.mtu, mac=self.mac)
        # EnableIPv6: flannel-v6.<VNI>'s counterpart beside our device
        self.v6 = (VxlanV6Half(config, iface, vni=self.vni, port=self.port, txqlen=DEVICE_QUEUE)
                   if config.enable_ipv6 else None)
        # Whole rounds of peers in a few netlink calls: 4,096 peers in well under a second.
        self.peers = PeerPrograms(self.lease_backend_type, self._program_many,
                                  self._unprogram_many)

    def lease_attrs(self) -> LeaseAttrs:
        if self.v6 is None:
            return LeaseAttrs(self.iface.public_ip, backend_type=VXLAN.backend,
                              backend_data={"VNI": self.vni, "VtepMAC": self.mac})
        return LeaseAttrs(self.iface.public_ip, self.iface.public_ipv6,
                          backend_type=VXLAN.backend,
                          backend_data={"VNI": self.vni, "VtepMAC": self.mac},
                          backend_v6_data=self.v6.backend_data())

    def start(self, lease: Lease) -> None:
        super().start(lease)
        if self.v6 is not None:
            self.v6.start(lease)

    def close(self) -> None:
        if self.v6 is not None:
            self.v6.close()
        super().close()

    def detach(self) -> dict[str, int]:
        if self.v6 is not None:  # not handed over: the successor opens it anew
            self.v6.close()
        return super().detach()

    def local_mac(self) -> bytes:
        return parse_mac(self.mac)

    def device_mac(self) -> str:
        return self.mac

    def peer_kernel_state(self, lease: Lease) -> tuple[list[Route], list[Neighbour]]:
        """What the kernel holds for one peer: programmed here, checked by the reconciler."""
        gateway = lease.subnet.network_address
        mac = lease.attrs.vtep_mac or ""
        return ([Route(lease.subnet, self.index, gateway, onlink=True)],
                [Neighbour(gateway, mac, self.index)])

    def _program_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        """Neighbour then onlink route per peer, as flanneld; the peer table for those that took.

        All or nothing per peer: a lease the peer table would refuse never reaches the kernel,
        and a peer one of whose kernel requests fails has the others undone (netlink_batch).
        """
        failures: dict[IPv4Network, str] = {}
        batch = NetlinkBatch()
        sent = []
        for lease in leases:
            try:
                mac = peer_vtep_mac(lease, self.vni, self.pipeline.table)
                mac6 = self.v6.check(lease) if self.v6 is not None else None
            except ValueError as exc:
                failures[lease.subnet] = str(exc)
                continue
            [route], [neighbour] = self.peer_kernel_state(lease)
            batch.neigh_replace(lease.subnet, neighbour.ip, mac, ifindex=neighbour.ifindex)
            batch.route_replace(lease.subnet, route.dst, oif=route.oif, gateway=route.gateway,
                                onlink=True)
            if self.v6 is not None and mac6 is not None:
                self.v6.program(batch, lease, mac6)
            sent.append((lease, mac, mac6))
        failures.update(batch.commit())
        took = [entry for entry in sent if entry[0].subnet not in failures]
        self._fill_table([(lease, mac) for lease, mac, _ in took], failures)
        if self.v6 is not None:
            for lease, _, mac6 in took:
                if mac6 is not None and lease.subnet not in failures:
                    self.v6.fill(lease, mac6)
        return failures

    def _fill_table(self, programmed: list[tuple[Lease, bytes]],
                    failures: dict[IPv4Network, str]) -> None:
        """The peer table for peers the kernel took; one it refuses leaves the kernel again."""
        undo = NetlinkBatch()
        for lease, mac in programmed:
            try:
                self.pipeline.table.set_peer(lease.subnet, lease.attrs.public_ip, mac)
            except ValueError as exc:  # checked before the kernel: only a bug lands here
                failures[lease.subnet] = str(exc)
                self._delete_kernel_state(undo, lease)
        for subnet, why in undo.commit().items():
            failures[subnet] += f"; undoing its kernel state failed too: {why}"

    def _unprogram_many(self, leases: list[Lease]) -> dict[IPv4Network, str]:
        batch = NetlinkBatch()
        for lease in leases:
            self._unprogram(lease)  # the peer table first: no packet goes out half-done
            self._delete_kernel_state(batch, lease)
            if self.v6 is not None:
                self.v6.unprogram(batch, lease)
        return batch.commit()

    def _delete_kernel_state(self, batch: NetlinkBatch, lease: Lease) -> None:
        batch.route_delete(lease.subnet, lease.subnet, oif=self.index)
        batch.neigh_delete(lease.subnet, lease.subnet.network_address, ifindex=self.index)


def peer_vtep_mac(lease: Lease, vni: int, table: PeerTable) -> bytes:
    """The VtepMAC a peer's lease puts in the peer table, once nothing short of the kernel
    would refuse the lease; ValueError says why it cannot be programmed (the peer table's
    checks included). No kernel here: the root-free two-host test programs its hosts with it.
    """
    mac = lease.attrs.vtep_mac
    if not mac:
        raise ValueError("vxlan lease has no VtepMAC")
    if lease.attrs.vni not in (None, vni):  # flannel <= 0.13 leases carry no VNI
        raise ValueError(f"peer VNI {lease.attrs.vni} differs from ours ({vni})")
    raw = parse_mac(mac)
    table.check_peer(lease.subnet, lease.attrs.public_ip, raw)
    return raw


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> VxlanBackend:
    return VxlanBackend(config, iface, options)
