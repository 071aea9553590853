"""The daemon's pipeline, built from a lease snapshot instead of etcd and devices.

`weft replay` and `weft trace` take `--leases SNAPSHOT --as SUBNET`: the pipeline is configured
exactly as the daemon holding SUBNET would configure it (backend, VNI, port, MTU, its own
VtepMAC, every peer lease of its backend type in the table).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network

from weft.control.lease import Lease
from weft.control.registry import Snapshot
from weft.packet.encap import ENCAPS, Encap
from weft.packet.pipeline import Pipeline
from weft.packet.table import parse_mac

DEFAULT_IFACE_MTU = 1500  # offline there is no interface; flannel's MTU rules from a 1500 link


class OfflineError(ValueError):
    pass


@dataclass
class OfflineHost:
    pipeline: Pipeline
    lease: Lease
    snapshot: Snapshot

    @property
    def kind(self) -> str:
        return self.pipeline.kind

    @property
    def encap(self) -> Encap:
        return self.pipeline.encap


def host_from_snapshot(snapshot: Snapshot, as_subnet: IPv4Network) -> OfflineHost:
    """The pipeline of the host that holds `as_subnet` in `snapshot`."""
    config = snapshot.config
    kind = config.backend_type
    encap = ENCAPS.get(kind)
    if encap is None:
        raise OfflineError(f"backend {kind!r} has no userspace pipeline to replay or trace "
                           f"(only {' and '.join(ENCAPS)} do; host-gw is kernel routing)")
    lease = snapshot.lease_for(as_subnet)
    if lease is None:
        held = ", ".join(str(item.subnet) for item in snapshot.leases) or "none"
        raise OfflineError(f"no lease for {as_subnet} in the snapshot (leases: {held})")
    assert config.network is not None
    settings = encap.settings(config, DEFAULT_IFACE_MTU)
    pipeline = Pipeline(encap, config.network, config.subnet_len, vni=settings.vni,
                        port=settings.port, mtu=settings.mtu)
    mac = lease.attrs.vtep_mac
    pipeline.set_local(lease.subnet, lease.attrs.public_ip, parse_mac(mac) if mac else None)
    for peer in snapshot.leases:
        if peer.subnet == lease.subnet or peer.attrs.effective_backend != encap.backend:
            continue
        peer_mac = peer.attrs.vtep_mac
        pipeline.table.set_peer(peer.subnet, peer.attrs.public_ip,
                                parse_mac(peer_mac) if peer_mac else None)
    return OfflineHost(pipeline, lease, snapshot)
