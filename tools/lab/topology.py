"""A throw-away multi-host network built from namespaces: fabric bridge, hosts, pods, etcd.

Layout (all names start with a unique prefix such as ``weft-1a2b3c-``):

    <prefix>fab        br0 192.0.2.1/24, one veth port h<i> per host; etcd runs here
    <prefix>h<i>       eth0 192.0.2.(10+i)/24, ip_forward=1, rp_filter=0
    <prefix>h<i>p<j>   a pod: eth0 in the pod subnet, default route via the cni0 bridge

Device names live inside their own namespace, so they need no prefix and stay short.
"""

from __future__ import annotations

import atexit
import http.client
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from pyroute2 import IPRoute

from weft.cni.runtime import Runtime
from weft.host.rtnl import IFA_F_NODAD
from weft.packet.encap import VXLAN
from weft.tools.lab import netns
from weft.tools.lab.etcd import etcd_binary

FABRIC_NET = IPv4Network("192.0.2.0/24")
FABRIC_IP = IPv4Address("192.0.2.1")
# A dual-stack lab's IPv6 underlay (Lab(ipv6=True)): hosts at ::10, ::11, ... as over IPv4.
FABRIC_NET6 = IPv6Network("fd00:c0:0:2::/64")
FABRIC_MTU = 1500  # the veths' default
POD_MTU = FABRIC_MTU - VXLAN.overhead  # what flannel gives a vxlan overlay on this fabric
DEFAULT_PREFIX = "weft-"
# Owner markers let cleanup_stale tell a crashed lab from one that another test run still uses.
MARKER_DIR = "/run/weft-labs"

# Strong references: a lab dropped without teardown must still be cleaned up at exit.
_live: set[Lab] = set()
_prev_handlers: dict[int, Any] = {}
_installed = False


@dataclass(frozen=True)
class Pod:
    ns: str  # the pod's namespace
    host: str  # the host namespace it hangs off
    ip: IPv4Address
    veth: str  # host-side veth name (in the host namespace)
    ip6: IPv6Address | None = None  # a dual-stack pod's IPv6 address


def _mark(lab_prefix: str) -> None:
    os.makedirs(MARKER_DIR, exist_ok=True)
    with open(os.path.join(MARKER_DIR, lab_prefix), "w") as f:
        f.write(str(os.getpid()))


def _owner(lab_prefix: str) -> int | None:
    """Pid recorded for a lab prefix, None when there is no (readable) marker."""
    try:
        with open(os.path.join(MARKER_DIR, lab_prefix)) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_stale(lab_prefix: str | None, include_unmarked: bool) -> bool:
    pid = None if lab_prefix is None else _owner(lab_prefix)
    if pid is None:
        # No marker: not made by a Lab, or by one whose marker is gone; only on request.
        return include_unmarked
    return not _pid_alive(pid)


def _markers() -> list[str]:
    return os.listdir(MARKER_DIR) if os.path.isdir(MARKER_DIR) else []


def _lab_prefix_of(ns: str, markers: list[str]) -> str | None:
    """The lab prefix (marker name) that namespace `ns` belongs to, if any."""
    owners = [m for m in markers if ns.startswith(m)]
    return max(owners, key=len) if owners else None


class Lab:
    """Hosts on a shared fabric; use as a context manager (teardown also on atexit/signals)."""

    def __init__(self, hosts: int = 3, name_prefix: str | None = None,
                 wire_like: bool = True, ipv6: bool = False) -> None:
        # wire_like: host eth0s finish checksums and segmentation like a NIC on a real wire;
        # False keeps veth's defaults (64 KiB GSO packets cross to the peer namespace whole).
        self.wire_like = wire_like
        self.prefix = name_prefix or f"{DEFAULT_PREFIX}{os.urandom(3).hex()}-"
        self.fabric = self.prefix + "fab"
        self.hosts = [f"{self.prefix}h{i}" for i in range(hosts)]
        self.host_ips = [FABRIC_NET[10 + i] for i in range(hosts)]
        self.ipv6 = ipv6  # hosts also get FABRIC_NET6 addresses
        self.host_ips6 = [FABRIC_NET6[0x10 + i] for i in range(hosts)] if ipv6 else []
        self.pods: dict[str, list[Pod]] = {h: [] for h in self.hosts}
        self.cni_results: dict[str, dict] = {}  # pod namespace -> CNI ADD result
        self.procs: list[subprocess.Popen] = []
        self.tmpdir = tempfile.mkdtemp(prefix=self.prefix)
        self.etcd_endpoint: str | None = None
        self._etcd: subprocess.Popen | None = None
        self._owner = os.getpid()
        self._torn_down = False
        _live.add(self)
        _install_handlers()
        _mark(self.prefix)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    # -- construction -------------------------------------------------------------------

    def _build(self) -> None:
        netns.create(self.fabric)
        with IPRoute(netns=self.fabric) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            ipr.addr("add", index=br, address=str(FABRIC_IP), prefixlen=FABRIC_NET.prefixlen)
            if self.ipv6:
                ipr.addr("add", index=br, address=str(FABRIC_NET6[1]),
                         prefixlen=FABRIC_NET6.prefixlen)
            ipr.link("set", index=br, state="up")
        for i, host in enumerate(self.hosts):
            self._build_host(i, host)

    def plug_into_fabric(self, ns: str, port: str, ip: IPv4Address,
                         ip6: IPv6Address | None = None) -> None:
        """Give namespace `ns` an eth0 with `ip` (and `ip6`) on the fabric bridge (veth `port`
        on br0)."""
        with IPRoute(netns=self.fabric) as ipr:
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            idx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=str(ip), prefixlen=FABRIC_NET.prefixlen)
            if ip6 is not None:  # nodad: usable at once, not after duplicate detection
                ipr.addr("add", index=eth0, address=str(ip6), prefixlen=FABRIC_NET6.prefixlen,
                         flags=IFA_F_NODAD)
            ipr.link("set", index=eth0, state="up")

    def _build_host(self, i: int, host: str) -> None:
        netns.create(host)
        # Set before devices exist, so that eth0 inherits the defaults too.
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0)):
            netns.sysctl(host, key, value)
        if self.ipv6:
            for key in ("net.ipv6.conf.all.forwarding", "net.ipv6.conf.default.forwarding"):
                netns.sysctl(host, key, 1)
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                netns.sysctl(host, key, 0)
        self.plug_into_fabric(host, f"h{i}", self.host_ips[i],
                              self.host_ips6[i] if self.ipv6 else None)
        # eth0 stands for the host's NIC on a real wire: segments and checksums are finished
        # before they cross (the kernel's VXLAN would otherwise hand 64 KiB GSO packets with
        # partial checksums to the peer namespace, as no wire does).
        if self.wire_like:
            netns.call_in(host, netns.disable_tx_offloads, "eth0")

    def host(self, ref: int | str) -> str:
        """Host namespace name from an index or a name."""
        return self.hosts[ref] if isinstance(ref, int) else ref

    def add_pods(self, host: int | str, subnet: IPv4Network | str, count: int = 1,
                 mtu: int = POD_MTU, cni: Runtime | None = None,
                 subnet6: IPv6Network | None = None) -> list[Pod]:
        """Build cni0 (subnet .1) in `host` and `count` more pods (.2, .3, ...), like CNI bridge.
        With `subnet6` (dual-stack) cni0 and each pod get its ::1, ::2, ... as well.

        With `cni` the pods are added through that conflist's plugins instead (run in `host`
        as a container runtime runs them): address, MTU and cni0 then come from the plugins.
        """
        host = self.host(host)
        if cni is not None:
            return [self.add_cni_pod(host, cni) for _ in range(count)]
        subnet = ipaddress.ip_network(subnet)
        gw = subnet.network_address + 1
        existing = self.pods[host]
        with IPRoute(netns=host) as ipr:
            if not ipr.link_lookup(ifname="cni0"):
                ipr.link("add", ifname="cni0", kind="bridge")
                br = ipr.link_lookup(ifname="cni0")[0]
                ipr.link("set", index=br, mtu=mtu)
                ipr.addr("add", index=br, address=str(gw), prefixlen=subnet.prefixlen)
                if subnet6 is not None:
                    ipr.addr("add", index=br, address=str(subnet6[1]),
                             prefixlen=subnet6.prefixlen, flags=IFA_F_NODAD)
                ipr.link("set", index=br, state="up")
            br = ipr.link_lookup(ifname="cni0")[0]
            new = []
            for j in range(len(existing), len(existing) + count):
                pod = Pod(ns=f"{host}p{j}", host=host, ip=subnet.network_address + 2 + j,
                          veth=f"veth{j}", ip6=subnet6[2 + j] if subnet6 is not None else None)
                netns.create(pod.ns)
                ipr.link("add", ifname=pod.veth, kind="veth", mtu=mtu,
                         peer={"ifname": "eth0", "net_ns_fd": pod.ns, "mtu": mtu})
                idx = ipr.link_lookup(ifname=pod.veth)[0]
                ipr.link("set", index=idx, master=br, state="up")
                self._setup_pod(pod, subnet, gw, subnet6)
                existing.append(pod)
                new.append(pod)
        return new

    def add_cni_pod(self, host: int | str, cni: Runtime, ifname: str = "eth0") -> Pod:
        """One more pod in `host`, its network made by CNI ADD; the pod's namespace is the
        container id. The ADD result is kept in cni_results for DEL and CHECK."""
        host = self.host(host)
        pod_ns = f"{host}p{len(self.pods[host])}"
        netns.create(pod_ns)
        self.pods[host].append(Pod(ns=pod_ns, host=host, ip=IPv4Address(0), veth=""))
        try:
            result = netns.call_in(host, cni.add, pod_ns, os.path.join(netns.NETNS_DIR, pod_ns),
                                   ifname)
        except BaseException:
            self.pods[host].pop()
            netns.remove(pod_ns)
            raise
        pod = Pod(ns=pod_ns, host=host, ip=cni_pod_ip(result), veth=cni_host_veth(result))
        self.pods[host][-1] = pod
        self.cni_results[pod_ns] = result
        return pod

    @staticmethod
    def _setup_pod(pod: Pod, subnet: IPv4Network, gw: IPv4Address,
                   subnet6: IPv6Network | None = None) -> None:
        with IPRoute(netns=pod.ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=str(pod.ip), prefixlen=subnet.prefixlen)
            if subnet6 is not None and pod.ip6 is not None:
                ipr.addr("add", index=eth0, address=str(pod.ip6), prefixlen=subnet6.prefixlen,
                         flags=IFA_F_NODAD)
            ipr.link("set", index=eth0, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gw), oif=eth0)
            if subnet6 is not None:
                ipr.route("add", dst="::/0", gateway=str(subnet6[1]), oif=eth0, family=10)

    def all_pods(self) -> list[Pod]:
        return [p for h in self.hosts for p in self.pods[h]]

    # -- processes --------------------------------------------------------------------------

    def run(self, ns: int | str, argv: Sequence[str], env: Mapping[str, str] | None = None,
            **popen_kwargs: Any) -> subprocess.Popen:
        """Start argv in namespace `ns` (host index or name); killed at teardown."""
        proc = netns.popen_in(self.host(ns), argv, env=env, **popen_kwargs)
        self.procs.append(proc)
        return proc

    def call(self, ns: int | str, argv: Sequence[str], env: Mapping[str, str] | None = None,
             timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        """Run argv in `ns` to completion; stdout/stderr captured as text."""
        proc = self.run(ns, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise
        finally:
            self.procs.remove(proc)
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def start_etcd(self, port: int = 2379, timeout: float = 15.0) -> str:
        """Run etcd in the fabric namespace on 192.0.2.1:<port>; returns the client URL."""
        if self._etcd is not None:
            return self.etcd_endpoint or ""
        url = f"http://{FABRIC_IP}:{port}"
        data = os.path.join(self.tmpdir, "etcd")
        log = open(os.path.join(self.tmpdir, "etcd.log"), "wb")  # noqa: SIM115 - kept by Popen
        argv = [etcd_binary("etcd"), "--name", "lab", "--data-dir", data,
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", f"http://127.0.0.1:{port + 1}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{port + 1}",
                "--initial-cluster", f"lab=http://127.0.0.1:{port + 1}",
                "--log-level", "warn"]
        with log:
            self._etcd = self.run(self.fabric, argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not netns.call_in(self.fabric, _etcd_healthy, str(FABRIC_IP), port, timeout=5.0):
            if self._etcd.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.tmpdir, "etcd.log"), errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"etcd did not come up at {url}:\n{tail}")
            time.sleep(0.1)
        self.etcd_endpoint = url
        return url

    def signal_etcd(self, sig: int) -> None:
        """Send `sig` to the lab's etcd: SIGSTOP freezes it (connections stay open, nothing
        answers), SIGCONT thaws it. For fault tests."""
        if self._etcd is None:
            raise RuntimeError("start_etcd() first")
        os.killpg(self._etcd.pid, sig)

    def kill_etcd(self) -> None:
        """SIGKILL the lab's etcd; start_etcd() brings it back on the same data dir."""
        proc, self._etcd = self._etcd, None
        if proc is None:
            return
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def etcdctl(self, *args: str, check: bool = True) -> str:
        """Run etcdctl (v3 API) in the fabric namespace against the lab's etcd; returns stdout."""
        if self.etcd_endpoint is None:
            raise RuntimeError("start_etcd() first")
        argv = [etcd_binary("etcdctl"), "--endpoints", self.etcd_endpoint,
                *args]
        return self.call(self.fabric, argv, env={"ETCDCTL_API": "3"}, check=check).stdout

    # -- teardown ---------------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill our processes, remove our namespaces and temp files. Idempotent."""
        if self._torn_down or os.getpid() != self._owner:
            return
        self._torn_down = True
        for proc in self.procs:
            _kill_group(proc)
        self.procs.clear()
        netns.remove_by_prefix(self.prefix)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        try:
            os.unlink(os.path.join(MARKER_DIR, self.prefix))
        except FileNotFoundError:
            pass
        _live.discard(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    @staticmethod
    def cleanup_stale(prefix: str = DEFAULT_PREFIX, include_unmarked: bool = False) -> list[str]:
        """Remove namespaces of crashed labs (their owner process is gone); returns the names.

        Labs of other live processes are left alone, and so are namespaces without an owner
        marker unless include_unmarked is set.
        """
        markers = _markers()
        stale = [n for n in netns.list_prefixed(prefix)
                 if _is_stale(_lab_prefix_of(n, markers), include_unmarked)]
        if stale:
            netns.kill_pids(netns.pids_in(stale))
            for n in stale:
                netns.remove(n)
        for marker in markers:
            if marker.startswith(prefix) and _is_stale(marker, False):
                os.unlink(os.path.join(MARKER_DIR, marker))
        return stale


def cni_pod_ip(result: dict) -> IPv4Address:
    """The pod's IPv4 address from a CNI result (0.3.x, 0.4.0 and 1.0.0 alike)."""
    for ip in result.get("ips", []):
        address = ipaddress.ip_interface(ip["address"])
        if address.version == 4:
            return address.ip
    raise ValueError(f"no IPv4 address in the CNI result {result}")


def cni_host_veth(result: dict) -> str:
    """The host side of the pod's veth: the bridge plugin lists bridge, host veth, pod eth0."""
    host_side = [i["name"] for i in result.get("interfaces", []) if not i.get("sandbox")]
    return host_side[-1] if host_side else ""


def _etcd_healthy(host: str, port: int) -> bool:
    # http.client ignores proxy variables, so this stays inside the lab.
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1.0)
        conn.request("GET", "/health")
        body = conn.getresponse().read()
        conn.close()
    except OSError:
        return False
    return b'"health":"true"' in body


def _kill_group(proc: subprocess.Popen, grace: float = 2.0) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _teardown_all() -> None:
    for lab in list(_live):
        try:
            lab.teardown()
        except Exception:  # noqa: BLE001 - keep tearing down the others
            pass


def _on_signal(signum: int, frame: Any) -> None:
    _teardown_all()
    prev = _prev_handlers.get(signum)
    if callable(prev):
        prev(signum, frame)
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_teardown_all)
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            # A signal our parent told us to ignore (nohup, `cmd &`) stays ignored.
            if signal.getsignal(sig) != signal.SIG_IGN:
                _prev_handlers[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread: atexit and __exit__ still cover us
            pass
