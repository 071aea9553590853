"""What vxlan and udp share: a TUN/TAP device with its datapath, the pipeline, a route for the
whole network into the device (so a destination no lease covers reaches us and gets ICMP
net-unreachable from the slow path), and the peer table fed from lease events.

The backend programs the kernel and feeds the peer table; the device and the choice of driver
(`--datapath`, passed through as options["datapath"]) belong to weft.drivers.mode_fallback. A
reconciler (weft.host.reconcile) puts back what others remove: routes, neighbours, the
device's address and state, the device itself.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

from weft.backends.peers import PeerPrograms
from weft.backends.repaired import RepairedBackend
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.dev.tundev import tunnel_tx_name
from weft.drivers import modes
from weft.drivers.mode_fallback import DeviceDatapath
from weft.host import netlink
from weft.host.reconcile import Device, Neighbour, Route, Wanted
from weft.observe.tracehub import TraceHub
from weft.packet.encap import Encap
from weft.packet.pipeline import Pipeline
from weft.status import BackendStatus, DatapathStatus, TrafficCounters

log = logging.getLogger(__name__)

# Packets the device queues for us while no process reads it: a restart hands the open device
# to the next `weft run` (weft.dev.handover), 2-4 s in which pods keep sending; at a ping every
# 5 ms that is up to 800 packets, and TUN's default of 500 would drop the rest. A reader that
# keeps up never has more than a batch queued, so the length costs nothing in steady state.
DEVICE_QUEUE = 2000


class OverlayBackend(RepairedBackend):
    # The backend's row of weft.packet.encap: its defaults, device, pipeline kernels. Its
    # backend type is also what peers' leases must say (their effective type).
    encap: Encap

    @property
    def kind(self) -> str:
        return self.encap.backend

    @property
    def lease_backend_type(self) -> str:
        return self.encap.backend

    def __init__(self, config: NetworkConfig, iface: ExternalInterface,
                 options: dict | None = None) -> None:
        assert config.network is not None
        self.options = options or {}
        self.config = config
        self.iface = iface
        settings = self.encap.settings(config, iface.mtu)
        self.mtu = mtu = settings.mtu
        self.port = port = settings.port
        self.vni = vni = settings.vni
        self.device_name = device_name = settings.device
        # The TX TAP of tunnel GSO, whether or not this kernel takes it: a rule for an absent
        # device matches nothing, and one rule set fits every datapath mode.
        self.forward_devices = (tunnel_tx_name(device_name),)
        self.reused = netlink.link_index(device_name) is not None
        self.datapath = DeviceDatapath(device_name, self.encap.tap,
                                       str(self.options.get("datapath") or modes.AUTO),
                                       inherited=self.options.get("inherited"))
        index = netlink.link_index(device_name)
        assert index is not None
        self.index = index
        self.pipeline = Pipeline(self.encap, config.network, config.subnet_len, vni=vni,
                                 port=port, mtu=mtu)
        self.peers = PeerPrograms.one_at_a_time(self.lease_backend_type, self._program,
                                                  self._unprogram)
        self.lease: Lease | None = None
        self.tracehub = TraceHub(self.encap)  # live trace; attached to the driver in start()
        # Peer programming (daemon thread) and repair passes (reconciler thread) take turns.
        self._init_repair()
        log.info("%s device %s (index %d), MTU %d, port %d", "reusing" if self.reused else
                 "created", device_name, self.index, mtu, port)

    def lease_attrs(self) -> LeaseAttrs:
        raise NotImplementedError

    def local_mac(self) -> bytes | None:
        return None

    def start(self, lease: Lease) -> None:
        assert self.config.network is not None
        self.lease = lease
        self.setup_device()
        netlink.route_replace(self.config.network, oif=self.index)
        self.pipeline.set_local(lease.subnet, self.iface.public_ip, self.local_mac())
        if not self.datapath.adopted:
            self._start_datapath()
        # else peers_synced() starts it: the adopted device's queue waits for the peer table

    def peers_synced(self) -> None:
        if self.datapath.driver is None:
            self._start_datapath()

    def _start_datapath(self) -> None:
        assert self.lease is not None
        # A cold start swaps the Python loop for the compiled one later: the trace follows.
        self.datapath.on_new_driver = self.tracehub.bind
        driver = self.datapath.start(self.pipeline, self.port)
        self.tracehub.bind(driver, {
            "device": self.device_name, "subnet": str(self.lease.subnet),
            "public_ip": str(self.iface.public_ip), "port": self.port, "vni": self.vni})
        self.reconciler.start()

    def carried_fds(self) -> dict[str, int]:
        return self.datapath.carried_fds()

    def detach(self) -> dict[str, int]:
        self.reconciler.stop()
        return self.datapath.detach()

    # -- what the reconciler keeps in place (weft.host.reconcile.Repairable) ---------------
    def setup_device(self) -> None:
        assert self.lease is not None
        netlink.configure_link(self.index, mtu=self.mtu, address=self.lease.subnet.network_address,
                               mac=self.device_mac(), txqlen=DEVICE_QUEUE)
        # The slow path writes ICMP errors from our tunnel address into the device; without
        # accept_local the kernel drops them as martians (a local source arriving from outside).
        netlink.set_ipv4_conf(self.device_name, "accept_local", 1)

    def recreate_device(self) -> None:
        driver = self.datapath.reopen()
        index = netlink.link_index(self.device_name)
        assert index is not None
        self.index = index
        self.setup_device()
        self.tracehub.bind(driver)

    def wanted(self) -> Wanted:
        assert self.config.network is not None and self.lease is not None
        routes = [Route(self.config.network, self.index)]
        neighbours: list[Neighbour] = []
        for lease in self.peers.programmed.values():
            peer_routes, peer_neighbours = self.peer_kernel_state(lease)
            routes += peer_routes
            neighbours += peer_neighbours
        device = Device(self.device_name, self.index, self.lease.subnet.network_address,
                        self.mtu, self.device_mac())
        return Wanted(self.iface, tuple(routes), tuple(neighbours), device)

    def public_ip_changed(self, address: IPv4Address) -> None:
        assert self.lease is not None
        # Outer headers leave with the new source address from the next batch on.
        self.pipeline.set_local(self.lease.subnet, address, self.local_mac())
        self.tracehub.info["public_ip"] = str(address)
        self._note_public_ip(address)

    def device_mac(self) -> str | None:
        """The MAC the device must keep (vxlan's VtepMAC); None for a TUN."""
        return None

    def peer_kernel_state(self, lease: Lease) -> tuple[list[Route], list[Neighbour]]:
        """The routes and neighbour entries _program puts in the kernel for one peer."""
        return [], []

    def _program(self, lease: Lease) -> None:
        raise NotImplementedError

    def _unprogram(self, lease: Lease) -> None:
        self.pipeline.table.remove_peer(lease.subnet)

    def status(self) -> BackendStatus:
        summary = self.pipeline.counter_summary()
        # Packets the driver dropped before the pipeline saw them (refused device reads).
        for name, count in self.datapath.drops().items():
            summary["drops"][name] = summary["drops"].get(name, 0) + count
        return BackendStatus(
            kind=self.kind,
            device=self.device_name,
            peers=self.peers.peers(),
            unprogrammed=self.peers.unprogrammed(),
            # The pipeline and the driver report plain dicts; read strictly, so that a key
            # renamed there fails here (and in the tests), not as a metric gone missing.
            counters=TrafficCounters.from_json(summary),
            datapath=DatapathStatus.from_json(self.datapath.status()),
            trace=self.tracehub.stats(),
            repair=self.reconciler.status(),
        )

    def close(self) -> None:
        self.reconciler.stop()
        self.datapath.close()
