"""`weft doctor`: check this host for what breaks pod networking, and name the fix.

Gathers facts (host_facts, peer_probe, one bounded etcd conversation), hands them to the judges
(doctor_checks, firewall_view) and prints one line per finding, or a JSON list with `--json`.
Exit 0 when nothing FAILed (warnings do not fail), 1 otherwise; usage errors are argparse's 2.
Every wait is bounded: etcd gets a few seconds and is asked once, never retried in a loop; the
peer probes run in parallel with a 1 s timeout each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from weft.control.config import ConfigError, NetworkConfig
from weft.control.etcd_registry import EtcdOptions
from weft.control.iface import ExternalInterface, InterfaceError, find_external_interface
from weft.control.lease import Lease
from weft.control.lease_policy import LeasePolicy
from weft.control.registry import ConfigNotFound, RegistryError
from weft.dev.tundev import tunnel_tx_name
from weft.observe import doctor_checks as checks
from weft.observe import firewall_view, host_facts, peer_probe
from weft.observe.doctor_checks import FAIL, OK, WARN, Finding
from weft.packet.encap import DEFAULT_VNI, ENCAPS, UDP, VXLAN
from weft.status import Refusal

ETCD_TIMEOUT = 3.0  # seconds for each etcd request; doctor asks each question once
EXIT_FAIL = 1


@dataclass
class DoctorOptions:
    etcd: EtcdOptions
    subnet_file: str
    renew_margin: float  # seconds
    iface: Sequence[str] = ()
    iface_regex: Sequence[str] = ()
    iface_can_reach: IPv4Address | None = None
    public_ip: IPv4Address | None = None
    probe_timeout: float = peer_probe.TIMEOUT


@dataclass
class EtcdFacts:
    """What one conversation with etcd told: reachability, the config, the leases."""

    error: str | None = None  # etcd could not be asked (unreachable, TLS, auth ...)
    revision: int | None = None
    config_missing: bool = False
    config_error: str | None = None
    config: NetworkConfig | None = None
    leases: list[Lease] = field(default_factory=list)  # ours and the peers the policy admits
    ours: Lease | None = None
    refused: dict[str, Refusal] = field(default_factory=dict)  # key -> why it is refused
    ttl_left: float | None = None


def options_from_args(args) -> DoctorOptions:
    return DoctorOptions(
        etcd=EtcdOptions(endpoints=args.etcd_endpoints, prefix=args.etcd_prefix,
                         cafile=args.etcd_cafile, certfile=args.etcd_certfile,
                         keyfile=args.etcd_keyfile, username=args.etcd_username,
                         password=args.etcd_password, timeout=ETCD_TIMEOUT),
        subnet_file=args.subnet_file, renew_margin=args.subnet_lease_renew_margin * 60.0,
        iface=args.iface or (), iface_regex=args.iface_regex or (),
        iface_can_reach=args.iface_can_reach, public_ip=args.public_ip)


def main(args) -> int:
    findings = diagnose(options_from_args(args))
    print(render_json(findings) if args.json else render_text(findings))
    return exit_code(findings)


def exit_code(findings: Sequence[Finding]) -> int:
    return EXIT_FAIL if any(f.status == FAIL for f in findings) else 0


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps([f.to_json() for f in findings], indent=2)


def render_text(findings: Sequence[Finding]) -> str:
    """One line per check: status, check, what was found, and the fix when there is one."""
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        fix = f" -- fix: {f.fix}" if f.fix and f.status != OK else ""
        lines.append(f"{f.status:<4}  {f.check:<{width}}  {f.found}{fix}")
    counts = {s: sum(f.status == s for f in findings) for s in (OK, WARN, FAIL)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[FAIL]} FAIL")
    return "\n".join(lines)


def diagnose(options: DoctorOptions) -> list[Finding]:
    findings: list[Finding] = []
    env = read_subnet_file(options.subnet_file)
    findings.append(checks.subnet_file(options.subnet_file, env))
    file_subnet = _env_network(env, "FLANNEL_SUBNET")
    iface, iface_error = _external_interface(options)
    if iface_error is not None:
        findings.append(Finding("iface", FAIL, iface_error,
                                "give --iface (name or address) as for weft run"))
    public_ip = options.public_ip or (iface.public_ip if iface else None)

    facts = ask_etcd(options.etcd, file_subnet, public_ip)
    reachable = facts.error is None
    findings.append(checks.etcd(options.etcd.endpoints, facts.error, facts.revision))
    findings.append(checks.config(options.etcd.prefix, reachable, facts.config_missing,
                                  facts.config_error, _summary(facts.config)))
    findings.append(checks.lease(reachable, facts.ours, file_subnet, public_ip, facts.ttl_left,
                                 options.renew_margin))
    if reachable and facts.config is not None:
        findings.append(checks.refused_leases(options.etcd.prefix, facts.refused))

    links = host_facts.links()
    backend, vni, port = _backend(facts.config, links)
    encap = ENCAPS.get(backend)
    device = encap.device_name(vni) if encap is not None else None
    network = (facts.config.network if facts.config is not None
               else _env_network(env, "FLANNEL_NETWORK"))
    findings.extend(_kernel_findings(backend, device, links, iface, env))
    network6 = _ipv6_network(facts.config, env)
    if network6 is not None:  # dual-stack (EnableIPv6, or FLANNEL_IPV6_NETWORK in the file)
        findings.extend(_ipv6_findings(iface))
    tx = tunnel_tx_name(device) if device is not None else None
    findings.extend(_firewall_findings(network, port, tx if tx in links else None, network6))
    findings.extend(_peer_findings(facts, backend, port, options.probe_timeout,
                                   ipv6=network6 is not None))
    return findings


def _ipv6_network(config: NetworkConfig | None, env: dict[str, str] | None
                  ) -> IPv6Network | None:
    """The IPv6 network of a dual-stack config (or of the subnet file when etcd is away)."""
    if config is not None:
        return config.ipv6_network if config.enable_ipv6 else None
    try:
        return IPv6Interface((env or {})["FLANNEL_IPV6_NETWORK"]).network
    except (KeyError, ValueError):
        return None


def _ipv6_findings(iface: ExternalInterface | None) -> list[Finding]:
    forwarding = host_facts.sysctl("net.ipv6.conf.all.forwarding")
    name = iface.name if iface is not None else None
    accept_ra = (host_facts.sysctl(host_facts.conf_key(name, "accept_ra", "ipv6"))
                 if name is not None else None)
    return [checks.ipv6_forward(forwarding),
            checks.accept_ra(name, forwarding, accept_ra, host_facts.ipv6_default_from_ra())]


def _kernel_findings(backend: str, device: str | None, links: dict[str, host_facts.Link],
                     iface: ExternalInterface | None, env: dict[str, str] | None
                     ) -> list[Finding]:
    out = [checks.ip_forward(host_facts.sysctl("net.ipv4.ip_forward")),
           checks.br_netfilter(host_facts.br_netfilter_present(),
                               host_facts.sysctl("net.bridge.bridge-nf-call-iptables"))]
    if device is not None:
        exists = device in links
        conf = device if exists else "default"
        out.append(checks.rp_filter(host_facts.sysctl("net.ipv4.conf.all.rp_filter"),
                                    host_facts.sysctl(host_facts.conf_key(conf, "rp_filter")),
                                    device, exists))
    if backend != "alloc":
        pod_mtu = _int((env or {}).get("FLANNEL_MTU"))
        dev_link = links.get(device) if device else None
        overhead = ENCAPS[backend].overhead if backend in ENCAPS else 0
        out.append(checks.mtu(backend, overhead, pod_mtu, device or "device",
                              dev_link.mtu if dev_link else None,
                              iface.name if iface else None, iface.mtu if iface else None))
    vxlans = sorted(name for name, link in links.items() if link.kind == "vxlan")
    out.append(checks.vxlan_offload([(name, host_facts.feature(name)) for name in vxlans]))
    return out


def _firewall_findings(network: IPv4Network | None, port: int | None,
                       tx_device: str | None, network6: IPv6Network | None = None
                       ) -> list[Finding]:
    text, error = host_facts.filter_table()
    if text is None:
        out = [Finding("firewall", WARN, f"cannot read the filter table: {error}",
                       "install iptables (iptables-save)")]
    else:
        out = [firewall_view.forward_check(text, network, tx_device)]
        if port is not None:
            out.append(firewall_view.port_check(text, port))
    if network6 is not None:  # the IPv6 half is forwarded by ip6tables' FORWARD chain
        text6, error6 = host_facts.filter_table(6)
        out.append(firewall_view.forward_check(text6, network6, ipv6=True) if text6 is not None
                   else Finding("forward_ipv6", WARN, f"cannot read ip6tables' filter table: "
                                f"{error6}", "install ip6tables (ip6tables-save)"))
    return out


def _peer_findings(facts: EtcdFacts, backend: str, port: int | None,
                   timeout: float, ipv6: bool = False) -> list[Finding]:
    """Each peer's PublicIP, and in a dual-stack config the PublicIPv6 of each peer whose
    lease has an IPv6 half (the address its IPv6 half is reached by)."""
    if facts.error is not None or backend == "alloc":
        return []  # no leases to probe (or no data path to probe for)
    others = sorted((lease for lease in facts.leases
                     if facts.ours is None or lease.subnet != facts.ours.subnet),
                    key=lambda lease: lease.subnet)
    targets: list = []
    keys = {}
    for lease in others:
        targets.append((lease.subnet, lease.attrs.public_ip))
        keys[lease.subnet] = lease.key
        if ipv6 and lease.ipv6_subnet is not None and lease.attrs.public_ipv6 is not None:
            targets.append((lease.ipv6_subnet, lease.attrs.public_ipv6))
            keys[lease.ipv6_subnet] = lease.key
    if not targets:
        return [Finding("peers", OK, "no other host holds a lease: nothing to probe")]
    findings = [checks.peer(p, backend, keys.get(p.subnet))
                for p in peer_probe.probe_all(targets, port, timeout)]
    if len(targets) > peer_probe.MAX_PEERS:
        findings.append(Finding("peers", WARN, f"probed {peer_probe.MAX_PEERS} of "
                                f"{len(targets)} peers (the first by subnet); the rest not probed"))
    return findings


def ask_etcd(options: EtcdOptions, subnet: IPv4Network | None,
             public_ip: IPv4Address | None) -> EtcdFacts:
    """One bounded conversation: config, lease list, our lease's TTL. A hung client library
    cannot hold doctor up: the conversation runs in a thread that is given up on."""
    facts = EtcdFacts()
    worker = threading.Thread(target=_converse, args=(options, subnet, public_ip, facts),
                              name="doctor-etcd", daemon=True)
    worker.start()
    budget = 4 * options.timeout + 1  # config, list, TTL and a connect, each bounded
    worker.join(budget)
    if worker.is_alive():
        return EtcdFacts(error=f"etcd at {options.endpoints} did not answer within {budget:g} s")
    return facts


def _converse(options: EtcdOptions, subnet: IPv4Network | None,
              public_ip: IPv4Address | None, facts: EtcdFacts) -> None:
    from weft.control.etcd_registry import EtcdRegistry

    try:
        registry = EtcdRegistry(options)
    except RegistryError as exc:
        facts.error = str(exc)
        return
    try:
        try:
            facts.config = registry.get_network_config()
        except ConfigNotFound:
            facts.config_missing = True
        except ConfigError as exc:
            facts.config_error = str(exc)
        leases, facts.revision = registry.list_leases()
        ours = checks.find_our_lease(leases, subnet, public_ip)
        facts.leases = _admitted(registry, facts.config, leases, ours, public_ip)
        facts.refused = registry.rejections.snapshot().current
        if ours is not None:
            ours = registry.with_expirations([ours])[0]
            if ours.expiration is not None:
                facts.ttl_left = ours.expiration - time.time()
        facts.ours = ours
    except RegistryError as exc:
        facts.error = str(exc)
    finally:
        registry.client.close()


def _admitted(registry, config: NetworkConfig | None, leases: list[Lease], ours: Lease | None,
              public_ip: IPv4Address | None) -> list[Lease]:
    """Ours and the peers `weft run` would accept, judged as it judges them (the refused are
    reported, and never probed)."""
    if config is None:
        return leases  # nothing to judge by; the config finding says why
    policy = LeasePolicy(config, registry.rejections, ours.subnet if ours else None, public_ip)
    return [lease for lease in leases if lease is ours or policy.admit(lease, as_peer=True)]


def read_subnet_file(path: str) -> dict[str, str] | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return {k.strip(): v.strip() for k, _, v in
            (line.partition("=") for line in text.splitlines()) if _}


def _env_network(env: dict[str, str] | None, key: str) -> IPv4Network | None:
    try:
        return IPv4Interface((env or {})[key]).network
    except (KeyError, ValueError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _external_interface(options: DoctorOptions
                        ) -> tuple[ExternalInterface | None, str | None]:
    try:
        return find_external_interface(options.iface, options.public_ip, options.iface_regex,
                                       options.iface_can_reach), None
    except InterfaceError as exc:
        return None, str(exc)


def _backend(config: NetworkConfig | None, links: dict[str, host_facts.Link]
             ) -> tuple[str, int, int | None]:
    """(backend, VNI, UDP port or None) from the config; without one, guessed from weft's
    device (weft.<VNI> is vxlan, weft0 udp), else flannel's common case, vxlan."""
    if config is not None:
        kind = config.backend_type
        vni = int(config.backend_option("VNI") or DEFAULT_VNI)
        port = config.backend_option("Port") or _default_port(kind)
        return kind, vni, int(port) if kind in ENCAPS and port else None
    if UDP.device_name() in links:
        return UDP.backend, 0, UDP.default_port
    vnis = [vni for name in links if (vni := VXLAN.vni_of_device(name)) is not None]
    return VXLAN.backend, (vnis[0] if vnis else DEFAULT_VNI), VXLAN.default_port


def _default_port(backend: str) -> int | None:
    return ENCAPS[backend].default_port if backend in ENCAPS else None


def _summary(config: NetworkConfig | None) -> str | None:
    if config is None:
        return None
    port = config.backend_option("Port") or _default_port(config.backend_type)
    return (f"network {config.network}, backend {config.backend_type}"
            + (f" (udp/{port})" if port else ""))
