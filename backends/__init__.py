"""Backends, registered by name and looked up in lower case as flanneld does.

A backend sets up its device, tells what to publish in our lease, programs each peer on the
changes PeerSync hands it and undoes it on close. `Backend` is everything the daemon and observe
use of one; nothing else is reached for. Modules load lazily so `alloc` needs no datapath
imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

from weft.control.config import ConfigError, NetworkConfig
from weft.control.iface import ExternalInterface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.peer_sync import PeerChanges
from weft.status import BackendStatus

if TYPE_CHECKING:  # the hub pulls in the data path; only backends that have one import it
    from weft.observe.tracehub import TraceHub

# name -> module holding `create(config, iface, options) -> Backend`
REGISTRY = {
    "alloc": "weft.backends.alloc",
    "vxlan": "weft.backends.vxlan",
    "udp": "weft.backends.udp",
    "host-gw": "weft.backends.hostgw",
}
# Types flannel knows that weft does not carry: a clear message rather than "unknown".
FLANNEL_ONLY = {"ipip", "ipsec", "wireguard", "gce", "aws-vpc", "ali-vpc", "tencent-vpc",
                "extension"}


class BackendError(RuntimeError):
    pass


class Backend(Protocol):
    mtu: int  # the overlay MTU written to subnet.env
    # devices whose incoming packets the host must forward (the forward rules accept them)
    forward_devices: tuple[str, ...]

    @property
    def tracehub(self) -> TraceHub | None:
        """The live trace of our userspace data path (`weft trace --live`); None for host-gw
        and alloc, which have none."""
        ...

    def lease_attrs(self) -> LeaseAttrs:
        """What to publish for this host (after any device whose MAC goes in it exists)."""
        ...

    def start(self, lease: Lease) -> None:
        """Set up the local side once our subnet is known."""
        ...

    def handle(self, changes: PeerChanges) -> None:
        """Program added/changed peers and remove removed ones; one bad peer never stops it."""
        ...

    def peers_synced(self) -> None:
        """The first listing of peers is programmed. A backend that adopted its device from
        the previous `weft run` (weft.dev.handover) starts its data path only now, so no
        packet meets an empty peer table."""
        ...

    def carried_fds(self) -> dict[str, int]:
        """Descriptors a successor `weft run` adopts (name -> fd), for systemd's fd store;
        {} for a backend whose state is all in the kernel."""
        ...

    def detach(self) -> dict[str, int]:
        """Stop every thread but keep the devices and sockets open, for exec(); returns
        carried_fds(). Nothing else may be called after it."""
        ...

    def changed_lease_attrs(self) -> LeaseAttrs | None:
        """Our new lease attrs if they changed since the last call (the repair pass saw the
        external interface's address move), else None. The daemon calls it on each turn of its
        loop and republishes the lease with them (retrying on its own if etcd is away)."""
        ...

    def status(self) -> BackendStatus:
        """Peers, counters and state for `weft status` and /metrics."""
        ...

    def close(self) -> None: ...


def check_type(backend_type: str) -> None:
    """Raise BackendError unless weft carries this backend type."""
    if backend_type in REGISTRY:
        return
    if backend_type in FLANNEL_ONLY:
        raise BackendError(f"backend type {backend_type!r} is a flannel backend weft does not "
                           f"implement; use one of: {', '.join(sorted(REGISTRY))}")
    raise BackendError(f"unknown backend type: {backend_type}")


# Backends that carry an IPv6 half (EnableIPv6), as flannel's: vxlan, host-gw (and wireguard).
# flannel's udp backend is IPv4 only.
IPV6_BACKENDS = frozenset({"vxlan", "host-gw", "alloc"})


def check_families(config: NetworkConfig) -> None:
    """ConfigError unless this backend carries the address families the config enables."""
    if not config.enable_ipv4:
        raise ConfigError("EnableIPv4 false (an IPv6-only network) is not supported by weft "
                          "yet; enable IPv4 (dual-stack) or use flanneld")
    if config.enable_ipv6 and config.backend_type not in IPV6_BACKENDS:
        raise ConfigError(
            f"EnableIPv6: backend {config.backend_type!r} carries IPv4 only in weft (flannel's "
            f"udp is IPv4 only); use vxlan or host-gw for dual-stack, or set EnableIPv6 false")


def create(config: NetworkConfig, iface: ExternalInterface, options: dict) -> Backend:
    check_type(config.backend_type)
    try:
        module = importlib.import_module(REGISTRY[config.backend_type])
    except ModuleNotFoundError as exc:
        if exc.name != REGISTRY[config.backend_type]:
            raise
        raise BackendError(
            f"backend type {config.backend_type!r} is not implemented yet in this weft"
        ) from None
    return module.create(config, iface, options)
