"""weft running on lab hosts: the building block of `weft demo`, the multi-host tests and bench.

`Cluster` starts etcd in the lab fabric, writes the network config, runs `weft run` in each host
namespace (logs, subnet file and control socket under the lab's temp dir), waits until every
daemon holds a lease and has synced its peers, then gives each host its pods, as flannel's CNI
plugin would from subnet.env. A host can instead be a flannel host: the kernel's VXLAN device
programmed exactly as flanneld programs it, with a flannel-format lease written into etcd.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from weft.control.lease import LeaseAttrs, subnet_key
from weft.observe.control_socket import ControlError, control_request
from weft.packet.encap import DEFAULT_VNI, VXLAN
from weft.tools.lab import kernel_vxlan
from weft.tools.lab.topology import POD_MTU, Lab, Pod

WEFT = [sys.executable, "-m", "weft.cli"]
PREFIX = "/coreos.com/network"


@dataclass
class Host:
    index: int
    ns: str
    public_ip: str
    kind: str  # "weft" or "flannel" (the kernel's VXLAN as flanneld programs it)
    subnet: IPv4Network | None = None
    subnet6: IPv6Network | None = None  # the lease's IPv6 half (EnableIPv6)
    mtu: int = POD_MTU
    vtep_mac: str | None = None
    pods: list[Pod] = field(default_factory=list)
    proc: object = None


class Cluster:
    def __init__(self, lab: Lab, backend: str = "vxlan", network: str = "10.1.0.0/16",
                 extra_config: dict | None = None, log=print, datapath: str = "auto",
                 ipv6_network: str | None = None) -> None:
        self.lab = lab
        self.backend = backend
        self.network = IPv4Network(network)
        self.config: dict = {"Network": network}
        if ipv6_network is not None:  # dual-stack, as flannel's EnableIPv6 (IPv6SubnetLen 64)
            self.config.update(EnableIPv6=True, IPv6Network=ipv6_network, IPv6SubnetLen=64)
        self.config["Backend"] = {"Type": backend, **(extra_config or {})}
        self.log = log
        self.dir = Path(lab.tmpdir)
        self.hosts = [Host(i, ns, str(lab.host_ips[i]), "weft") for i, ns in enumerate(lab.hosts)]
        self.env: dict[str, str] = {}
        self.datapath = datapath  # weft run --datapath for every host

    # -- set-up -------------------------------------------------------------------------------
    def start_etcd(self) -> None:
        endpoint = self.lab.start_etcd()
        self.env = {"WEFT_ETCD_ENDPOINTS": endpoint, "WEFT_ETCD_PREFIX": PREFIX}
        result = self.weft_cli(0, "config", "put", json.dumps(self.config))
        if result.returncode != 0:
            raise RuntimeError(f"weft config put failed: {result.stderr}")

    def weft_cli(self, host: int, *args: str):
        return self.lab.call(self.host(host).ns, [*WEFT, *args], env=self.env, timeout=60)

    def socket_path(self, host: int) -> str:
        return str(self.dir / f"h{host}.sock")

    def subnet_file(self, host: int) -> Path:
        return self.dir / f"h{host}.env"

    def start_weft(self, host: int, *extra: str) -> None:
        h = self.host(host)
        h.kind = "weft"
        log = open(self.dir / f"h{host}.log", "ab")
        h.proc = self.lab.run(h.ns, [*WEFT, "run", "--iface", "eth0", "--subnet-file",
                                     str(self.subnet_file(host)), "--control-socket",
                                     self.socket_path(host), "--datapath", self.datapath,
                                     *extra],
                              env=self.env, stdout=log, stderr=log)

    def stop_weft(self, host: int, timeout: float = 10) -> int:
        proc = self.host(host).proc
        proc.terminate()
        return proc.wait(timeout=timeout)

    def host_log(self, host: int) -> str:
        path = self.dir / f"h{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_leases(self, timeout: float = 60) -> None:
        """Every weft host wrote its subnet file: read the subnet and MTU, as the CNI plugin."""
        deadline = time.time() + timeout
        for h in self.hosts:
            if h.kind != "weft":
                continue
            while True:
                env = _read_env(self.subnet_file(h.index))
                if "FLANNEL_SUBNET" in env:
                    h.subnet = IPv4Interface(env["FLANNEL_SUBNET"]).network
                    if "FLANNEL_IPV6_SUBNET" in env:
                        h.subnet6 = IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network
                    h.mtu = int(env["FLANNEL_MTU"])
                    break
                if h.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"weft on {h.ns} holds no lease:\n"
                                       f"{self.host_log(h.index)[-3000:]}")
                time.sleep(0.05)

    def wait_synced(self, timeout: float = 60) -> None:
        """Every weft daemon is ready and has every other host as a programmed peer."""
        deadline = time.time() + timeout
        for h in self.hosts:
            if h.kind != "weft":
                continue
            want = {str(o.subnet) for o in self.hosts if o is not h and o.subnet is not None}
            while True:
                status = self.status(h.index)
                have = {p["subnet"] for p in (status or {}).get("peers", [])}
                if status and status.get("ready") and want <= have:
                    break
                if h.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"weft on {h.ns} not synced (has {sorted(have)}, "
                                       f"wants {sorted(want)}):\n{self.host_log(h.index)[-3000:]}")
                time.sleep(0.1)

    def status(self, host: int) -> dict | None:
        try:
            return control_request(self.socket_path(host), "status", io_timeout=5.0)
        except ControlError:
            return None

    def host(self, index: int) -> Host:
        return next(h for h in self.hosts if h.index == index)

    def add_pods(self, pods_per_host: int) -> None:
        for h in self.hosts:
            h.pods = self.lab.add_pods(h.index, h.subnet, count=pods_per_host, mtu=h.mtu,
                                       subnet6=h.subnet6)

    def start(self, pods_per_host: int = 2, flannel_hosts: tuple[int, ...] = (),
              idle_hosts: tuple[int, ...] = ()) -> None:
        """etcd, config, flannel hosts, weft on the rest, pods; returns when all is synced.

        Idle hosts run nothing and hold no lease (a bystander or a rogue on the fabric).
        """
        self.start_etcd()
        for index in idle_hosts:
            self.hosts[index].kind = "idle"
        self.hosts = [h for h in self.hosts if h.kind != "idle"]
        for index in flannel_hosts:
            self.start_flannel_host(index, IPv4Network(f"10.1.{200 + index}.0/24"))
        for h in self.hosts:
            if h.index not in flannel_hosts:
                self.start_weft(h.index)
        self.wait_leases()
        self.wait_synced()
        for index in flannel_hosts:
            self.program_flannel_peers(index)
        self.add_pods(pods_per_host)

    # -- a flannel host: the kernel's VXLAN device, programmed as flanneld does ---------------
    def start_flannel_host(self, host: int, subnet: IPv4Network, vni: int = DEFAULT_VNI,
                           port: int = VXLAN.default_port) -> None:
        h = self.host(host)
        h.kind, h.subnet, h.mtu = "flannel", subnet, POD_MTU
        h.vtep_mac = kernel_vxlan.random_mac()
        kernel_vxlan.setup_device(h.ns, vni, port, h.public_ip, subnet, h.mtu, h.vtep_mac)
        attrs = LeaseAttrs(IPv4Address(h.public_ip), backend_type="vxlan",
                           backend_data={"VNI": vni, "VtepMAC": h.vtep_mac})
        key = f"{PREFIX}/subnets/{subnet_key(subnet)}"
        self.lab.etcdctl("put", key, attrs.to_json())

    def program_flannel_peers(self, host: int, vni: int = DEFAULT_VNI) -> None:
        """What flanneld would do on the lease events for every other host."""
        h = self.host(host)
        for other in self.hosts:
            if other is h:
                continue
            mac = other.vtep_mac or self._vtep_mac_of(other)
            kernel_vxlan.add_peer(h.ns, vni, other.subnet, mac, other.public_ip)

    def _vtep_mac_of(self, h: Host) -> str:
        out = self.lab.etcdctl("get", f"{PREFIX}/subnets/{subnet_key(h.subnet)}",
                               "--print-value-only")
        h.vtep_mac = LeaseAttrs.from_json(out.strip()).vtep_mac
        return h.vtep_mac

    # -- probes -------------------------------------------------------------------------------
    def pods(self) -> list[Pod]:
        return [pod for h in self.hosts for pod in h.pods]


def _read_env(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
