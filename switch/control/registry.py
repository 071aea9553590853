"""The lease registry interface (flannel's subnet.Manager, trimmed) and lease snapshots.

The core speaks only to `LeaseRegistry`; `weft.control.etcd_registry` implements it on etcd.
Offline tools (replay, trace) read a `weft leases --json` file with `load_snapshot` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Protocol

from weft.control.config import NetworkConfig, parse_config
from weft.control.lease import Lease, LeaseAttrs, LeaseFormatError, parse_subnet_cidr
from weft.control.lease_policy import LeasePolicy, LeaseRejections
from weft.control.store_health import StoreHealth

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"


class RegistryError(RuntimeError):
    """The registry refused an operation, or cannot be reached (see RegistryUnavailable)."""


class RegistryUnavailable(RegistryError):
    """The store is unreachable or timed out: connection trouble that a retry may cure.

    Every other RegistryError (permission denied, a rejected request) is not retried.
    """


CONFIG_MISSING = (
    "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
)


class ConfigNotFound(RegistryError):
    """No network config yet; flanneld's wording, because operators search for it."""

    def __init__(self) -> None:
        super().__init__(CONFIG_MISSING)


class LeaseTaken(RegistryError):
    """Another host now holds the subnet we renew: we lost it and must not overwrite it."""

    def __init__(self, subnet: IPv4Network, holder: LeaseAttrs | None) -> None:
        who = f"PublicIP {holder.public_ip}" if holder is not None else "a malformed value"
        super().__init__(f"lease {subnet} is now held by {who}")
        self.subnet = subnet
        self.holder = holder


def is_ours(current: Lease, attrs: LeaseAttrs, our_etcd_lease: int) -> bool:
    """Whether the stored lease is still ours to renew.

    Ours means attached to the etcd lease we hold, or carrying our PublicIP (the identity flannel
    reuses a lease by; it also covers a renewal whose reply was lost, which attached the key to
    an etcd lease id we never learnt).
    """
    if our_etcd_lease and current.etcd_lease_id == our_etcd_lease:
        return True
    return current.attrs.public_ip == attrs.public_ip


@dataclass(frozen=True)
class LeaseEvents:
    """A batch of lease changes, as flannel's watcher delivers them.

    `reset` is set when the watch had to re-list (after a compaction or reconnect): then `added`
    holds every current lease and consumers drop peers not in it.
    """

    added: tuple[Lease, ...] = ()
    removed: tuple[Lease, ...] = ()
    reset: bool = False
    revision: int = 0


@dataclass
class Snapshot:
    config: NetworkConfig
    revision: int
    leases: list[Lease] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "revision": self.revision,
            "leases": {str(lease.subnet): lease.snapshot_json() for lease in self.leases},
        }

    def lease_for(self, subnet: IPv4Network) -> Lease | None:
        return next((lease for lease in self.leases if lease.subnet == subnet), None)


class LeaseRegistry(Protocol):
    health: StoreHealth  # every call and the watch report reachability here
    rejections: LeaseRejections  # keys and values that are not leases, and leases refused

    def get_network_config(self) -> NetworkConfig: ...

    def list_leases(self) -> tuple[list[Lease], int]:
        """Current leases and the store revision they were read at."""
        ...

    # A dual-stack lease's key names both subnets (10.1.54.0-24&fd10:0:0:3f::-64): the calls
    # that address one lease take its IPv6 half as well, None for an IPv4-only lease.
    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        """Create atomically; None when somebody else holds the subnet."""
        ...

    def get_lease(self, subnet: IPv4Network,
                  ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        """The lease stored for `subnet` now, or None."""
        ...

    def update_lease(
        self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int, old_lease_id: int = 0,
        ipv6_subnet: IPv6Network | None = None,
    ) -> Lease:
        """Renew a lease we own with a fresh TTL, atomically and only while it is ours.

        The put happens in a transaction that checks the key did not change since we read it:
        absent (it expired: we put it back) or ours (`is_ours`). A key another host holds is
        left alone and LeaseTaken is raised.
        """
        ...

    def delete_lease(self, subnet: IPv4Network,
                     ipv6_subnet: IPv6Network | None = None) -> None: ...

    def watch_leases(
        self,
        revision: int,
        deliver: Callable[[LeaseEvents], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Callable[[], None]:
        """Deliver batches from `revision`+1 on, possibly from another thread; returns `stop`.

        Connection trouble is retried inside the watch. Any other error ends the watch: it is
        logged with its traceback and passed to `on_error` once, so the owner can stop too.
        """
        ...


def load_snapshot(path: str | Path) -> Snapshot:
    """Read a `weft leases --json` file; malformed and refused entries are skipped with a
    warning (the offline tools see the leases a daemon would accept, nothing else)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read lease snapshot {path}: {exc}") from None
    if not isinstance(raw, dict) or "config" not in raw:
        raise RegistryError(f"{path} is not a `weft leases --json` snapshot (no \"config\")")
    config = parse_config(json.dumps(raw["config"]))
    leases = []
    for key, value in (raw.get("leases") or {}).items():
        try:
            subnet = parse_subnet_cidr(key)
            half = value.get("IPv6Subnet") if isinstance(value, dict) else None
            leases.append(Lease(subnet, LeaseAttrs.from_json(json.dumps(value)),
                                ipv6_subnet=IPv6Network(half) if half else None))
        except (LeaseFormatError, ValueError, TypeError) as exc:
            log.warning("snapshot %s: skipping lease %r: %s", path, key, exc)
    leases = LeasePolicy(config, LeaseRejections()).admitted(leases)
    return Snapshot(config, int(raw.get("revision", 0)), leases)
