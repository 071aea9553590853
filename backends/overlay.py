"""What vxlan and udp share: a TUN/TAP device, the pipeline, the IO driver, a route for the
whole network into the device (so a destination no lease covers reaches us and gets ICMP
net-unreachable from the slow path), and the peer table fed from lease events."""

from __future__ import annotations

import logging

from switch.config import NetworkConfig
from switch.datapath import Datapath, Transport
from switch.iface import ExternalInterface
from switch.lease import Lease, LeaseAttrs
from switch.pipeline import Pipeline
from switch.registry import LeaseEvents
from switch.tracehub import TraceHub

from . import netlink
from .peers import PeerPrograms
from .tuntap import open_device

log = logging.getLogger(__name__)


_IO = {"fast": "compiled loop: poll/read + sendmmsg, recvmmsg + write (no GIL)",
       "plain": "Python loop: select/readv + sendto, recvfrom + write", "": "not started"}


class OverlayBackend:
    kind = ""  # "vxlan" or "udp": which pipeline kernels
    lease_backend_type = ""  # what peers' leases must say (effective type)

    def __init__(self, config: NetworkConfig, iface: ExternalInterface, *, device_name: str,
                 tap: bool, mtu: int, port: int, vni: int = 0,
                 options: dict | None = None) -> None:
        assert config.network is not None
        self.options = options or {}
        self.datapath_mode = ""  # "fast" (compiled loop) or "plain" (Python loop), once started
        self.config = config
        self.iface = iface
        self.mtu = mtu
        self.port = port
        self.vni = vni
        self.device_name = device_name
        self.reused = netlink.link_index(device_name) is not None
        self.device = open_device(device_name, tap=tap)
        index = netlink.link_index(device_name)
        assert index is not None
        self.index = index
        self.pipeline = Pipeline(self.kind, config.network, config.subnet_len, vni=vni,
                                 port=port, mtu=mtu)
        self.peers = PeerPrograms(self.lease_backend_type, self._program, self._unprogram)
        self.transport: Transport | None = None
        self.datapath: Datapath | None = None
        self.lease: Lease | None = None
        self.tracehub = TraceHub(self.kind)  # live trace; attached to the Datapath in start()
        log.info("%s device %s (index %d), MTU %d, port %d", "reusing" if self.reused else
                 "created", device_name, self.index, mtu, port)

    def lease_attrs(self) -> LeaseAttrs:
        raise NotImplementedError

    def local_mac(self) -> bytes | None:
        return None

    def start(self, lease: Lease) -> None:
        assert self.config.network is not None
        self.lease = lease
        netlink.configure_link(self.index, mtu=self.mtu, address=lease.subnet.network_address)
        netlink.route_replace(self.config.network, oif=self.index)
        # The slow path writes ICMP errors from our tunnel address into the device; without
        # accept_local the kernel drops them as martians (a local source arriving from outside).
        netlink.set_ipv4_conf(self.device_name, "accept_local", 1)
        self.pipeline.set_local(lease.subnet, self.iface.public_ip, self.local_mac())
        self.transport = Transport(self.kind, self.port)
        self.datapath = self._start_datapath(self.transport)
        self.tracehub.bind(self.datapath, {
            "device": self.device_name, "subnet": str(lease.subnet),
            "public_ip": str(self.iface.public_ip), "port": self.port, "vni": self.vni})

    def _start_datapath(self, transport: Transport):
        """The compiled loop when it loads, else the Python loop (`--datapath` can force one)."""
        wanted = self.options.get("datapath") or "auto"
        if wanted in ("auto", "fast"):
            try:
                from switch.hotloop import HotLoop

                loop = HotLoop(self.pipeline, self.device.fileno(), transport.rx.fileno(),
                               transport.tx.fileno(), self.port)
                loop.start()
                self.datapath_mode = "fast"
                return loop
            except Exception as exc:  # noqa: BLE001 - numba/libc trouble: fall back, loudly
                if wanted == "fast":
                    raise
                log.warning("compiled datapath unavailable (%s); using the plain Python loop",
                            exc)
        datapath = Datapath(self.pipeline, self.device.fileno(), transport)
        datapath.start()
        self.datapath_mode = "plain"
        return datapath

    def handle(self, events: LeaseEvents) -> None:
        self.peers.handle(events)

    def _program(self, lease: Lease) -> None:
        raise NotImplementedError

    def _unprogram(self, lease: Lease) -> None:
        self.pipeline.table.remove_peer(lease.subnet)

    def status(self) -> dict:
        peers = []
        for subnet, public_ip, mac in self.pipeline.table.peers():
            peers.append({"subnet": str(subnet), "public_ip": str(public_ip),
                          "vtep_mac": mac.hex(":") if mac else None})
        errors = self.datapath.errors if self.datapath else {}
        loop = self.datapath.stats() if hasattr(self.datapath, "stats") else None
        return {
            "backend": self.kind,
            "device": self.device_name,
            "peers": peers,
            "unprogrammed": {str(k): v for k, v in self.peers.failed.items()},
            "counters": self.pipeline.counter_summary(),
            "datapath": {"mode": self.datapath_mode, "batch": 64, "io": _IO[self.datapath_mode],
                         "errors": dict(errors), **({"loop": loop} if loop else {})},
            "trace": self.tracehub.stats(),
        }

    def close(self) -> None:
        if self.datapath is not None:
            self.datapath.stop()
        if self.transport is not None:
            self.transport.close()
        # The device stays (persistent), as flannel leaves flannel.<VNI>: a restart reattaches.
        self.device.close()
