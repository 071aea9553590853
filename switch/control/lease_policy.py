"""Whether a lease read from the store may exist: the one judge of other hosts' leases.

Anyone who can write the subnets prefix (another host, a script, a typo) decides what the key
and value say, and every host turns them into routes. flannel takes any key its pattern matches
and any value that decodes; weft refuses, before anything reaches the kernel or the allocator:

- keys that are not exactly flannel's spelling of a subnet (`lease.parse_subnet_key`), so no
  second key can alias a subnet;
- a subnet whose size is not the config's SubnetLen, or that lies outside Network (a
  `0.0.0.0-0` key would give every host a default route; `10.0.0.0-8` would overlap every
  candidate, so no host could join); the same for the IPv6 half when the config has IPv6Network;
- (peers only) a subnet that overlaps ours, or a PublicIP that is ours;
- a PublicIP that is not a unicast address a host can have (unspecified, loopback,
  multicast, broadcast, reserved) or that lies inside the pod network;
- a vxlan lease whose VtepMAC is missing, unparsable, multicast/broadcast or all zeros.

A refusal is logged once per key and reason, counted by reason and listed in the status
(`LeaseRejections`); the registry reports keys and values that do not parse into the same tally.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from weft.control.config import NetworkConfig
from weft.control.lease import Lease, parse_vtep_mac
from weft.status import Refusal, RejectionsStatus

log = logging.getLogger(__name__)

# Reasons of the policy (the registry adds lease.MALFORMED_KEY, KEY_NOT_CANONICAL and
# MALFORMED_VALUE): the `reason` label of weft_leases_rejected_total.
SUBNET_SIZE = "subnet_size"
OUTSIDE_NETWORK = "outside_network"
IPV6_SUBNET = "ipv6_subnet"
OVERLAPS_OWN = "overlaps_own"
PUBLIC_IP = "public_ip"
OWN_PUBLIC_IP = "own_public_ip"
VTEP_MAC = "vtep_mac"


class LeaseRejections:
    """The tally of refused leases: totals by reason, and the keys refused right now.

    Shared by the registry (keys and values that do not parse) and the policy (leases that
    parse but may not exist). Thread-safe: the watch thread and the daemon loop both report.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self.current: dict[str, Refusal] = {}  # key below subnets/ -> why it is refused now

    def refuse(self, key: str, reason: str, detail: str) -> None:
        """Record a refusal; counted and logged once while the key stays refused for it."""
        refusal = Refusal(reason, detail)
        with self._lock:
            if self.current.get(key) == refusal:
                return
            self.current[key] = refusal
            self.totals[reason] += 1
        log.warning("refusing lease %r (%s): %s", key, reason, detail)

    def clear(self, key: str) -> None:
        """The key was deleted, or its lease is acceptable now."""
        with self._lock:
            self.current.pop(key, None)

    def relisted(self) -> None:
        """A full listing follows: what is refused now is judged again from it."""
        with self._lock:
            self.current.clear()

    def snapshot(self) -> RejectionsStatus:
        with self._lock:
            return RejectionsStatus(total=dict(self.totals),
                                    current=dict(sorted(self.current.items())))


class LeasePolicy:
    """Judges leases against the network config, and as peers against our own lease."""

    def __init__(self, config: NetworkConfig, rejections: LeaseRejections,
                 own_subnet: IPv4Network | None = None,
                 own_public_ip: IPv4Address | None = None) -> None:
        self.config = config
        self.rejections = rejections
        self.own_subnet = own_subnet
        self.own_public_ip = own_public_ip

    def refusal(self, lease: Lease, as_peer: bool = False) -> Refusal | None:
        """Why `lease` may not exist (or, `as_peer`, may not be routed to); None if it may."""
        return (self._subnet_refusal(lease)
                or (self._own_refusal(lease) if as_peer else None)
                or self._value_refusal(lease))

    def admit(self, lease: Lease, as_peer: bool = False) -> bool:
        """Judge and record: True if the lease may be used."""
        refusal = self.refusal(lease, as_peer)
        if refusal is None:
            self.rejections.clear(lease.key)
            return True
        self.rejections.refuse(lease.key, refusal.reason, refusal.detail)
        return False

    def admitted(self, leases: Iterable[Lease], as_peer: bool = False) -> list[Lease]:
        return [lease for lease in leases if self.admit(lease, as_peer)]

    def _subnet_refusal(self, lease: Lease) -> Refusal | None:
        config, subnet = self.config, lease.subnet
        network = config.network
        if network is None:
            return Refusal(OUTSIDE_NETWORK, "the config has no Network")
        if subnet.prefixlen != config.subnet_len:
            return Refusal(SUBNET_SIZE, f"{subnet} is not a /{config.subnet_len} "
                                        f"(the config's SubnetLen)")
        if not subnet.subnet_of(network):
            return Refusal(OUTSIDE_NETWORK, f"{subnet} is outside the Network {network}")
        v6, v6_network = lease.ipv6_subnet, config.ipv6_network
        if v6 is not None and v6_network is not None and (
                v6.prefixlen != config.ipv6_subnet_len or not v6.subnet_of(v6_network)):
            return Refusal(IPV6_SUBNET, f"{v6} is not a /{config.ipv6_subnet_len} inside "
                                        f"the IPv6Network {v6_network}")
        return None

    def _own_refusal(self, lease: Lease) -> Refusal | None:
        own = self.own_subnet
        if own is not None and lease.subnet.overlaps(own):
            return Refusal(OVERLAPS_OWN, f"{lease.subnet} overlaps our subnet {own}")
        if self.own_public_ip is not None and lease.attrs.public_ip == self.own_public_ip:
            return Refusal(OWN_PUBLIC_IP, f"PublicIP {lease.attrs.public_ip} is ours, on "
                                          f"another subnet than our lease")
        return None

    def _value_refusal(self, lease: Lease) -> Refusal | None:
        ip = lease.attrs.public_ip
        kind = _not_unicast(ip)
        if kind is not None:
            return Refusal(PUBLIC_IP, f"PublicIP {ip} is {kind}, not a host's address")
        network = self.config.network
        if network is not None and ip in network:
            return Refusal(PUBLIC_IP, f"PublicIP {ip} is inside the pod network {network}")
        if lease.attrs.effective_backend == "vxlan":
            return _vtep_mac_refusal(lease.attrs.backend_data)
        return None


def _not_unicast(ip: IPv4Address) -> str | None:
    """What kind of address `ip` is, when it is not one a host can be reached at."""
    for kind, test in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("multicast", ip.is_multicast), ("broadcast or reserved", ip.is_reserved)):
        if test:
            return kind
    return None


def _vtep_mac_refusal(backend_data: Any) -> Refusal | None:
    text = backend_data.get("VtepMAC") if isinstance(backend_data, dict) else None
    if text is None:
        return Refusal(VTEP_MAC, "vxlan lease without a VtepMAC")
    try:
        mac = parse_vtep_mac(text)
    except ValueError as exc:
        return Refusal(VTEP_MAC, str(exc))
    if mac[0] & 1:
        return Refusal(VTEP_MAC, f"VtepMAC {text} is a multicast/broadcast address")
    if not any(mac):
        return Refusal(VTEP_MAC, "VtepMAC is all zeros")
    return None
