"""vxlan's IPv6 half: a TAP `weft-v6.<VNI>` that looks to the kernel like flannel's
`flannel-v6.<VNI>` (EnableIPv6).

Its own VtepMAC (published as BackendV6Data), the MTU of a VXLAN device over an IPv6 underlay
(weft.packet.encap.VXLAN6: 70 bytes under the interface's), our IPv6 subnet's network address
/128 on it and a route for the whole IPv6Network into it; per peer with an IPv6 half a
permanent neighbour (its v6 subnet's network address -> its v6 VtepMAC) and the route
`<v6 subnet> via <its network address> dev weft-v6.<VNI> onlink`, as flanneld. Where flanneld
adds an FDB entry (VtepMAC -> PublicIPv6), the peer table of Pipeline6 gets the PublicIPv6.

The device runs in plain mode (the Python loop): the compiled loops speak IPv4 sockaddrs.
"""

from __future__ import annotations

import logging

from weft.backends.vtep import random_mac
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, parse_vtep_mac
from weft.drivers import modes
from weft.drivers.mode_fallback import DeviceDatapath
from weft.host import netlink
from weft.host.netlink_batch import NetlinkBatch
from weft.packet.encap import VXLAN6
from weft.packet.pipeline6 import Pipeline6
from weft.packet.table import parse_mac

log = logging.getLogger(__name__)


class VxlanV6Half:
    encap = VXLAN6

    def __init__(self, config: NetworkConfig, iface: ExternalInterface, *, vni: int,
                 port: int, txqlen: int) -> None:
        assert config.ipv6_network is not None
        if iface.public_ipv6 is None:
            raise ValueError("EnableIPv6: no PublicIPv6 (give --public-ipv6, or an IPv6 "
                             "address on the external interface)")
        settings = self.encap.settings(config, iface.mtu)
        self.mtu = settings.mtu
        self.vni = vni
        self.port = port
        self.txqlen = txqlen
        self.iface = iface
        self.network = config.ipv6_network
        self.device_name = self.encap.device_name(vni)
        # Built first: a layout weft cannot number refuses before any device exists.
        self.pipeline = Pipeline6(config.ipv6_network, config.ipv6_subnet_len, vni=vni,
                                  port=port, mtu=self.mtu)
        reused = netlink.link_index(self.device_name) is not None
        self.datapath = DeviceDatapath(self.device_name, tap=True, wanted=modes.PLAIN)
        index = netlink.link_index(self.device_name)
        assert index is not None
        self.index = index
        # keep the VtepMAC peers already know (flannel #1795: a new one strands their entries)
        self.mac = netlink.link_mac(index) if reused else random_mac()
        netlink.configure_link(index, mtu=self.mtu, mac=self.mac)
        log.info("%s device %s (index %d), MTU %d", "reusing" if reused else "created",
                 self.device_name, index, self.mtu)

    def backend_data(self) -> dict:
        return {"VNI": self.vni, "VtepMAC": self.mac}

    def start(self, lease: Lease) -> None:
        assert lease.ipv6_subnet is not None, "an EnableIPv6 lease has an IPv6 half"
        netlink.configure_link(self.index, mtu=self.mtu,
                               address=lease.ipv6_subnet.network_address, mac=self.mac,
                               txqlen=self.txqlen)
        netlink.route_replace(self.network, oif=self.index)
        self.pipeline.set_local(lease.ipv6_subnet, parse_mac(self.mac))
        self.datapath.start(self.pipeline, self.port)

    def check(self, lease: Lease) -> bytes | None:
        """The peer's v6 VtepMAC when its lease has an IPv6 half we can program, None when it
        has none (a v4-only peer: reached over IPv4 only); ValueError says why not."""
        data = lease.attrs.backend_v6_data
        if lease.ipv6_subnet is None or lease.attrs.public_ipv6 is None or data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("VtepMAC"), str):
            raise ValueError("vxlan lease's BackendV6Data has no VtepMAC")
        if data.get("VNI") not in (None, self.vni):
            raise ValueError(f"peer IPv6 VNI {data.get('VNI')} differs from ours ({self.vni})")
        mac = parse_vtep_mac(data["VtepMAC"])
        self.pipeline.table.check_peer(lease.ipv6_subnet, lease.attrs.public_ipv6, mac)
        return mac

    def program(self, batch: NetlinkBatch, lease: Lease, mac: bytes) -> None:
        """Neighbour then onlink route, under the peer's key (all or nothing with its IPv4)."""
        assert lease.ipv6_subnet is not None
        gateway = lease.ipv6_subnet.network_address
        batch.neigh_replace(lease.subnet, gateway, mac, ifindex=self.index)
        batch.route_replace(lease.subnet, lease.ipv6_subnet, oif=self.index, gateway=gateway,
                            onlink=True)

    def fill(self, lease: Lease, mac: bytes) -> None:
        assert lease.ipv6_subnet is not None and lease.attrs.public_ipv6 is not None
        self.pipeline.table.set_peer(lease.ipv6_subnet, lease.attrs.public_ipv6, mac)

    def unprogram(self, batch: NetlinkBatch, lease: Lease) -> None:
        if lease.ipv6_subnet is None:
            return
        try:
            self.pipeline.table.remove_peer(lease.ipv6_subnet)  # first: no packet half-done
        except ValueError:  # a subnet the table never took: nothing of it is in the kernel
            return
        batch.route_delete(lease.subnet, lease.ipv6_subnet, oif=self.index)
        batch.neigh_delete(lease.subnet, lease.ipv6_subnet.network_address, ifindex=self.index)

    def status(self) -> dict:
        return {"device": self.device_name, "peers": len(self.pipeline.table),
                "counters": self.pipeline.counter_summary(), "datapath": self.datapath.status()}

    def close(self) -> None:
        self.datapath.close()
