"""What vxlan and udp share: a TUN/TAP device, the pipeline, the IO driver, a route for the
whole network into the device (so a destination no lease covers reaches us and gets ICMP
net-unreachable from the slow path), and the peer table fed from lease events.

Datapath modes, best first (`--datapath auto` takes the best that works, a named one insists):
  offload  the compiled loop over a device opened with IFF_VNET_HDR + TSO: TCP crosses the
           device as 64 KiB super-frames, split into packets on egress, merged on ingress;
           the sockets use UDP GSO (one send per run of same-size packets to a peer) and UDP
           GRO (one receive per run of a peer's datagrams) where the kernel takes them
  fast     the compiled loop over a plain device, one device read/write per packet
  plain    the Python loop (switch/drivers/pyloop.py), for when numba cannot load the compiled one
The device mode is fixed when the device is opened (here, before the lease), so a refused
offload is known early; a compiled loop that then fails to load gets the device reopened plain.
"""

from __future__ import annotations

import logging

from weft.backends import netlink
from weft.backends.peers import PeerPrograms
from weft.control.config import NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.registry import LeaseEvents
from weft.dev.tundev import OFFLOAD, open_device
from weft.drivers.pyloop import BATCH, Datapath, Transport
from weft.observe.tracehub import TraceHub
from weft.packet.pipeline import Pipeline

log = logging.getLogger(__name__)

MODES = ("auto", "offload", "fast", "plain")
_IO = {"offload": "compiled loop on a TSO device: read + split + sendmmsg (UDP GSO), "
                  "recvmmsg (UDP GRO) + coalesce + write (no GIL)",
       "fast": "compiled loop: poll/read + sendmmsg, recvmmsg + write (no GIL)",
       "plain": "Python loop: select/readv + sendto, recvfrom + write", "": "not started"}


class OverlayBackend:
    kind = ""  # "vxlan" or "udp": which pipeline kernels
    lease_backend_type = ""  # what peers' leases must say (effective type)

    def __init__(self, config: NetworkConfig, iface: ExternalInterface, *, device_name: str,
                 tap: bool, mtu: int, port: int, vni: int = 0,
                 options: dict | None = None) -> None:
        assert config.network is not None
        self.options = options or {}
        self.wanted = str(self.options.get("datapath") or "auto")
        if self.wanted not in MODES:
            raise ValueError(f"unknown datapath {self.wanted!r} (choose from {', '.join(MODES)})")
        self.datapath_mode = ""  # "offload", "fast" or "plain" once started
        self.refused: dict[str, str] = {}  # better modes that were tried and why they failed
        self.config = config
        self.iface = iface
        self.mtu = mtu
        self.port = port
        self.vni = vni
        self.device_name = device_name
        self.reused = netlink.link_index(device_name) is not None
        self.tap = tap
        self.device, self.device_mode = open_device(
            device_name, tap, offload=self.wanted in ("auto", "offload"))
        if self.wanted in ("auto", "offload") and self.device_mode != OFFLOAD:
            if self.wanted == "offload":
                self.device.close()
                raise RuntimeError(f"--datapath offload: device {device_name} refused it: "
                                   f"{self.device_mode.reason}")
            self.refused["offload"] = self.device_mode.reason
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
        """The best loop that runs on this device; see the module docstring for the order."""
        if self.device_mode == OFFLOAD:
            try:
                return self._start_hotloop(transport, offload=True, mode="offload")
            except Exception as exc:  # noqa: BLE001 - numba/libc trouble: fall back, loudly
                if self.wanted == "offload":
                    raise
                self.refused["offload"] = f"compiled loop unavailable: {exc}"
                log.warning("offload datapath unavailable (%s); reopening %s without offloads",
                            exc, self.device_name)
                self._reopen_plain()
        if self.wanted in ("auto", "fast"):
            try:
                return self._start_hotloop(transport, offload=False, mode="fast")
            except Exception as exc:  # noqa: BLE001 - numba/libc trouble: fall back, loudly
                if self.wanted == "fast":
                    raise
                self.refused["fast"] = f"compiled loop unavailable: {exc}"
                log.warning("compiled datapath unavailable (%s); using the plain Python loop",
                            exc)
        datapath = Datapath(self.pipeline, self.device.fileno(), transport)
        datapath.start()
        self.datapath_mode = "plain"
        return datapath

    def _start_hotloop(self, transport: Transport, *, offload: bool, mode: str):
        from weft.drivers.hotloop import HotLoop

        # UDP GSO/GRO only with the offload device: that is where packets come in runs of one
        # flow (split super-frames) and where coalesce can use runs that arrive merged.
        loop = HotLoop(self.pipeline, self.device.fileno(), transport.rx.fileno(),
                       transport.tx.fileno(), self.port, offload=offload, gro=offload,
                       gso_fds=transport.gso_sockets() if offload else ())
        loop.start()
        self.datapath_mode = mode
        log.info("datapath %s: %s", mode, _IO[mode])
        return loop

    def _reopen_plain(self) -> None:
        """Swap the offload device for a plain one (the other loops read no virtio header).

        The persistent device keeps its index, MAC, address and routes across the reopen;
        open_device clears the TSO offloads so the kernel stops sending super-frames.
        """
        self.device.close()
        self.device, self.device_mode = open_device(self.device_name, self.tap, offload=False)

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
        udp = getattr(self.datapath, "offloads", dict)()  # {"gso": "on", "gro": "on"} or why not
        counters = self.pipeline.counter_summary()
        # Device reads the offload step refused never reached the fast path's counters.
        offload_drops = getattr(self.datapath, "offload_drops", dict)()
        for name, count in offload_drops.items():
            counters["drops"][name] = counters["drops"].get(name, 0) + count
        return {
            "backend": self.kind,
            "device": self.device_name,
            "peers": peers,
            "unprogrammed": {str(k): v for k, v in self.peers.failed.items()},
            "counters": counters,
            "datapath": {"mode": self.datapath_mode,
                         "batch": getattr(self.datapath, "batch", BATCH),
                         "io": _IO[self.datapath_mode], "device": str(self.device_mode),
                         **({"refused": dict(self.refused)} if self.refused else {}),
                         "udp_gso": udp.get("gso", "off"), "udp_gro": udp.get("gro", "off"),
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
