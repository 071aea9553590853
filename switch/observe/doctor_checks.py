"""`weft doctor`'s judges: pure functions from facts about a host to findings.

Each judge takes what a reader gathered (a sysctl value, an MTU, a probe result) and returns
`Finding`s that say what was found and, when something is wrong, the command that fixes it.
Nothing here reads the kernel or the network, so tests feed fake facts and check the verdicts;
`host_facts`, `peer_probe` and `doctor` do the gathering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from weft.control.lease import Lease
from weft.status import Refusal

OK, WARN, FAIL = "ok", "warn", "FAIL"
STATUSES = (OK, WARN, FAIL)


@dataclass(frozen=True)
class Finding:
    check: str  # a stable name: ip_forward, rp_filter, mtu, peer 10.1.7.0/24, ...
    status: str  # ok | warn | FAIL
    found: str  # what was seen, in words
    fix: str = ""  # the command or action that fixes it; empty when nothing needs fixing

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "status": self.status, "found": self.found, "fix": self.fix}


def ip_forward(value: int | None) -> Finding:
    """Pods on other hosts are reached by forwarding; with ip_forward=0 the kernel drops it."""
    if value is None:
        return Finding("ip_forward", WARN, "cannot read /proc/sys/net/ipv4/ip_forward")
    if value == 1:
        return Finding("ip_forward", OK, "net.ipv4.ip_forward=1")
    return Finding("ip_forward", FAIL,
                   f"net.ipv4.ip_forward={value}: the kernel forwards no pod traffic",
                   "sysctl -w net.ipv4.ip_forward=1 (and net.ipv4.ip_forward=1 in "
                   "/etc/sysctl.d/ to keep it)")


def ipv6_forward(value: int | None) -> Finding:
    """Dual-stack (EnableIPv6): pods' IPv6 traffic to other hosts is forwarded as IPv4 is;
    net.ipv4.ip_forward says nothing about it."""
    if value is None:
        return Finding("ipv6_forward", WARN,
                       "cannot read /proc/sys/net/ipv6/conf/all/forwarding (IPv6 disabled?)")
    if value == 1:
        return Finding("ipv6_forward", OK, "net.ipv6.conf.all.forwarding=1")
    return Finding("ipv6_forward", FAIL,
                   f"net.ipv6.conf.all.forwarding={value}: the kernel forwards no pod IPv6 "
                   "traffic (EnableIPv6)",
                   "sysctl -w net.ipv6.conf.all.forwarding=1 (and in /etc/sysctl.d/ to keep it)")


def accept_ra(iface: str | None, forwarding: int | None, value: int | None,
              ra_default: bool | None) -> Finding:
    """With IPv6 forwarding on, the kernel ignores router advertisements on an interface
    unless its accept_ra is 2. A host whose IPv6 default route came from an RA (SLAAC) then
    keeps it only until the router lifetime runs out: after that it has no IPv6 default route
    and reaches nothing beyond its own segment (pods' IPv6 between hosts of one segment still
    works). `ra_default`: the main table's IPv6 default route was learnt from an RA."""
    if iface is None:
        return Finding("accept_ra", WARN, "external interface unknown: accept_ra not checked",
                       "give --iface as for weft run")
    if value is None:
        return Finding("accept_ra", WARN, f"cannot read net.ipv6.conf.{iface}.accept_ra")
    fix = f"sysctl -w net.ipv6.conf.{iface}.accept_ra=2 (and in /etc/sysctl.d/ to keep it)"
    if value == 2:
        return Finding("accept_ra", OK, f"accept_ra=2 on {iface}: router advertisements are "
                       "accepted with forwarding on")
    if value == 0:
        return Finding("accept_ra", OK, f"accept_ra=0 on {iface}: router advertisements "
                       "ignored by choice (a static IPv6 default route, or none)")
    if forwarding != 1:
        if ra_default:
            return Finding("accept_ra", WARN,
                           f"accept_ra={value} on {iface} and the IPv6 default route comes "
                           "from router advertisements: once forwarding is on (dual-stack "
                           "needs it) they are ignored and the default route expires", fix)
        return Finding("accept_ra", OK, f"accept_ra={value} on {iface}, forwarding off")
    said = (f"accept_ra={value} on {iface} with forwarding=1: the kernel ignores router "
            "advertisements there")
    if ra_default:
        return Finding("accept_ra", WARN,
                       said + "; the IPv6 default route came from one and is not renewed: "
                       "when its lifetime ends the host has no IPv6 default route", fix)
    return Finding("accept_ra", OK, said + " (the IPv6 default route, if any, is static; "
                   f"set accept_ra=2 if {iface} should learn one by SLAAC)")


def br_netfilter(present: bool, call_iptables: int | None) -> Finding:
    """weft itself does not need br_netfilter; kube-proxy does: without it, traffic between
    two pods on the same cni0 bridge is switched, not routed, and never meets the Service
    (DNAT) rules in iptables. So this is a warning, never a failure."""
    if not present:
        return Finding("br_netfilter", WARN,
                       "br_netfilter not loaded: bridged pod traffic skips iptables (weft does "
                       "not need it; kube-proxy's Service rules do)",
                       "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1")
    if call_iptables == 1:
        return Finding("br_netfilter", OK, "net.bridge.bridge-nf-call-iptables=1")
    return Finding("br_netfilter", WARN,
                   f"net.bridge.bridge-nf-call-iptables={call_iptables}: bridged pod traffic "
                   "skips iptables (weft does not need it; kube-proxy's Service rules do)",
                   "sysctl -w net.bridge.bridge-nf-call-iptables=1")


def rp_filter(all_value: int | None, dev_value: int | None, device: str,
              device_exists: bool) -> Finding:
    """The kernel uses max(conf.all, conf.<dev>). Strict (1) drops a packet that arrives on
    weft's device when the route back to its source leaves by another interface (asymmetric
    routes, a second route to the pod network); loose (2) and off (0) do not. Before weft's
    device exists it will inherit conf.default, which is what we then read."""
    where = device if device_exists else f"default ({device} does not exist yet)"
    if all_value is None or dev_value is None:
        return Finding("rp_filter", WARN, f"cannot read rp_filter for all/{where}")
    effective = max(all_value, dev_value)
    found = f"effective rp_filter {effective} on {where} (all={all_value}, dev={dev_value})"
    if effective != 1:
        return Finding("rp_filter", OK, found)
    conf = device if device_exists else "default"
    fix = f"sysctl -w net.ipv4.conf.{conf}.rp_filter=2"
    if all_value == 1:
        fix += " && sysctl -w net.ipv4.conf.all.rp_filter=2"
    return Finding("rp_filter", WARN,
                   found + ": strict reverse-path filtering drops decapsulated packets whose "
                   "source routes out another interface", fix + " (loose)")


def mtu(backend: str | None, overhead: int, pod_mtu: int | None, device: str,
        device_mtu: int | None, iface: str | None, iface_mtu: int | None) -> Finding:
    """A pod packet of the pod MTU, plus the encapsulation, must fit the underlay MTU; when it
    does not, the outer packet is fragmented or dropped and large transfers stall (flannel
    #1011). The pod MTU is FLANNEL_MTU (what the CNI plugin gives pods) and weft's device."""
    if iface is None or iface_mtu is None:
        return Finding("mtu", WARN, "external interface unknown: MTU not checked",
                       "give --iface as for weft run")
    limit = iface_mtu - overhead
    parts = []
    if pod_mtu is not None:
        parts.append(f"FLANNEL_MTU {pod_mtu}")
    if device_mtu is not None:
        parts.append(f"{device} MTU {device_mtu}")
    if not parts:
        return Finding("mtu", WARN, f"no subnet file and no {device}: pod MTU unknown "
                       f"({iface} MTU {iface_mtu}, limit {limit})")
    found = (f"{', '.join(parts)}; {iface} MTU {iface_mtu} - {overhead} "
             f"({backend or 'unknown backend'} overhead) = {limit}")
    worst = max(m for m in (pod_mtu, device_mtu) if m is not None)
    if worst <= limit:
        return Finding("mtu", OK, found)
    return Finding("mtu", FAIL, found + f": pod packets of {worst} bytes do not fit",
                   f"raise {iface}'s MTU to {worst + overhead}, or set Backend.MTU to {limit} "
                   "in the network config (weft config put) and restart weft run and the pods")


def vxlan_offload(devices: Sequence[tuple[str, bool | None]]) -> Finding:
    """flannel #1279: on some kernels and NICs the kernel's VXLAN device with TX checksum
    offload sends packets with bad inner checksums (seen as TCP stalls while ping works);
    the fix flannel users apply is to turn it off. weft's own device is a TAP, not affected."""
    if not devices:
        return Finding("vxlan_offload", OK, "no kernel VXLAN device")
    on = [name for name, value in devices if value]
    unknown = [name for name, value in devices if value is None]
    if on:
        fixes = "; ".join(f"ethtool -K {name} tx-checksum-ip-generic off" for name in on)
        return Finding("vxlan_offload", WARN,
                       f"kernel VXLAN device(s) {', '.join(on)} with tx-checksum-ip-generic on: "
                       "bad inner checksums on some kernels/NICs (flannel #1279)", fixes)
    if unknown:
        return Finding("vxlan_offload", WARN,
                       f"cannot read the offloads of {', '.join(unknown)}")
    names = ", ".join(name for name, _ in devices)
    return Finding("vxlan_offload", OK, f"{names}: tx-checksum-ip-generic off")


def subnet_file(path: str, values: dict[str, str] | None) -> Finding:
    if values is None:
        return Finding("subnet_file", FAIL,
                       f"{path} does not exist: no lease taken on this host, and the CNI "
                       "plugin cannot network pods", "start weft run (--subnet-file as here)")
    missing = [k for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU") if k not in values]
    if missing:
        return Finding("subnet_file", FAIL, f"{path} lacks {', '.join(missing)}",
                       "restart weft run; it rewrites the file")
    return Finding("subnet_file", OK, f"{path}: FLANNEL_SUBNET={values['FLANNEL_SUBNET']}, "
                   f"FLANNEL_MTU={values['FLANNEL_MTU']}")


def etcd(endpoints: str, error: str | None, revision: int | None) -> Finding:
    if error is None:
        return Finding("etcd", OK, f"{endpoints} answered (revision {revision})")
    return Finding("etcd", FAIL, error,
                   "check that etcd runs and that this host reaches --etcd-endpoints "
                   "(and the TLS/auth flags)")


def config(prefix: str, reachable: bool, missing: bool, error: str | None,
           summary: str | None) -> Finding:
    key = f"{prefix.rstrip('/')}/config"
    if not reachable:
        return Finding("config", WARN, f"{key} not checked: etcd unreachable")
    if missing:
        return Finding("config", FAIL, f"{key} missing",
                       "weft config put '{\"Network\":\"10.1.0.0/16\",\"Backend\":"
                       "{\"Type\":\"vxlan\"}}' (with your network)")
    if error is not None:
        return Finding("config", FAIL, f"{key} invalid: {error}",
                       "weft config put with a corrected config (it validates first)")
    return Finding("config", OK, f"{key}: {summary}")


def refused_leases(prefix: str, refused: dict[str, Refusal]) -> Finding:
    """Keys under the subnets prefix that weft refuses (lease_policy): no host routes to them."""
    if not refused:
        return Finding("leases", OK, "every lease in etcd is valid for the network config")
    listed = "; ".join(f"{key!r} ({why.reason}: {why.detail})"
                       for key, why in list(refused.items())[:5])
    more = f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
    return Finding("leases", WARN, f"{len(refused)} lease key(s) refused, never programmed: "
                                   f"{listed}{more}",
                   f"find who wrote them, then etcdctl del '{prefix.rstrip('/')}/subnets/<key>'")


def find_our_lease(leases: Sequence[Lease], subnet: IPv4Network | None,
                   public_ip: IPv4Address | None) -> Lease | None:
    """Ours is the lease of the subnet file's FLANNEL_SUBNET, else the one carrying our
    PublicIP (flannel reuses a lease by PublicIP)."""
    if subnet is not None:
        for lease in leases:
            if lease.subnet == subnet:
                return lease
    if public_ip is not None:
        for lease in leases:
            if lease.attrs.public_ip == public_ip:
                return lease
    return None


def lease(reachable: bool, ours: Lease | None, subnet: IPv4Network | None,
          public_ip: IPv4Address | None, ttl_left: float | None,
          renew_margin: float) -> Finding:
    """Our lease must exist and carry our PublicIP; inside the renew margin weft should have
    renewed it already, so little time left means renewals are failing (or no weft runs)."""
    if not reachable:
        return Finding("lease", WARN, "not checked: etcd unreachable")
    wanted = " or ".join(part for part in (subnet and f"subnet {subnet}",
                                           public_ip and f"PublicIP {public_ip}") if part)
    if ours is None:
        return Finding("lease", FAIL, f"no lease for {wanted or 'this host'}",
                       "start weft run (it takes and renews the lease); see its log")
    where = f"{ours.subnet} (PublicIP {ours.attrs.public_ip})"
    if public_ip is not None and ours.attrs.public_ip != public_ip:
        return Finding("lease", FAIL,
                       f"{ours.subnet} from the subnet file is held by PublicIP "
                       f"{ours.attrs.public_ip}, not by this host ({public_ip})",
                       "restart weft run: it takes a free subnet and rewrites the subnet file")
    if ttl_left is None:
        return Finding("lease", OK, f"{where}, no expiry known")
    left = _duration(ttl_left)
    if ttl_left < renew_margin:
        return Finding("lease", WARN,
                       f"{where} expires in {left}, inside the renew margin "
                       f"({_duration(renew_margin)}): renewals are not happening",
                       "check that weft run is running and reaches etcd (weft status, its log)")
    return Finding("lease", OK, f"{where} expires in {left}")


@dataclass(frozen=True)
class PeerProbe:
    """What was learnt about one peer's PublicIP (see peer_probe.probe)."""

    subnet: IPv4Network | IPv6Network  # the lease's IPv6 half when probing its PublicIPv6
    public_ip: IPv4Address | IPv6Address
    route: str | None  # "eth0" or "eth0 via 192.0.2.1"; None when there is no route
    route_error: str | None = None
    echo_ms: float | None = None  # ICMP echo round trip; None when no reply came
    neighbour_failed: bool = False  # ARP (IPv6: neighbour discovery) for the next hop unanswered
    port: int | None = None  # the UDP port probed (vxlan, udp), else None
    port_refused: bool = False  # an ICMP port unreachable came back: nothing listens
    timeout: float = 1.0


def peer(probe: PeerProbe, backend: str, key: str | None = None) -> Finding:
    """`key`: the lease's key below subnets/ (both halves of a dual-stack one), for the fix."""
    name = f"peer {probe.subnet}"
    ip = probe.public_ip
    key = key or f"{probe.subnet.network_address}-{probe.subnet.prefixlen}"
    echo = "ICMPv6 echo" if ip.version == 6 else "ICMP echo"
    resolve = "neighbour discovery" if ip.version == 6 else "ARP"
    if probe.route is None:
        return Finding(name, FAIL, f"no route to PublicIP {ip}: {probe.route_error}",
                       f"add a route to {ip} (the underlay must connect the hosts)")
    said = [f"route via {probe.route}"]
    said.append(f"{echo} to {ip}: " + (f"reply in {probe.echo_ms:.2f} ms"
                                          if probe.echo_ms is not None
                                          else f"no reply in {probe.timeout:g} s"))
    if probe.port is not None:
        said.append(f"empty UDP datagram to {ip}:{probe.port}: "
                    + ("ICMP port unreachable" if probe.port_refused else
                       "no ICMP error (a listener, or filtered)"))
    found = "; ".join(said)
    if probe.port_refused:
        return Finding(name, FAIL, found + f": nothing listens on udp/{probe.port} there, "
                       "or a firewall there rejects it",
                       f"start weft run (or flanneld) on {ip}, or let udp/{probe.port} through "
                       f"its firewall; both ends must use the config's Backend.Port ({backend})")
    if probe.echo_ms is not None:
        return Finding(name, OK, found)
    if probe.neighbour_failed:
        return Finding(name, FAIL, found + f"; no {resolve} reply for the next hop: {ip} is "
                       "down or not on that segment",
                       f"check the host at {ip}; if it is gone, delete its lease "
                       f"(etcdctl del <prefix>/subnets/{key})")
    return Finding(name, WARN, found + f": {echo.split()[0]} may be filtered, or the host is "
                   "down", f"allow {echo} and udp/{probe.port} from this host to {ip}"
                   if probe.port else f"allow {echo} from this host to {ip}")


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"
