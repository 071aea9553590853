"""`weft run`: wires the lease registry, the lease lifecycle and a backend together.

The loop is flanneld's: wait for the network config, set up the backend, acquire a lease, write
subnet.env, program the current peers, then apply watch batches and renew before expiry until a
signal (keep the lease, as flanneld does), the loss of our own lease, or a lease watch that
failed on something other than connection trouble (both exit 1).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from weft import backends
from weft.control import subnet_env
from weft.control.config import NetworkConfig
from weft.control.iface import find_external_interface
from weft.control.lease import Lease
from weft.control.lease_manager import LeaseTiming, acquire_lease, renew_lease
from weft.control.registry import (
    ConfigNotFound,
    LeaseEvents,
    LeaseRegistry,
    RegistryUnavailable,
)

log = logging.getLogger(__name__)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

REVOKED = "Lease has been revoked. Shutting down daemon."
WATCH_FAILED = "lease watch failed: {}. Shutting down daemon."
CONFIG_RETRY = 1.0  # seconds between reads of a missing config, as flanneld


@dataclass
class RunOptions:
    iface: str | None = None
    public_ip: IPv4Address | None = None
    subnet_file: str = subnet_env.DEFAULT_PATH
    ip_masq: bool = False
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    backend_options: dict[str, Any] = field(default_factory=dict)
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0  # 0 = off, as flanneld
    control_socket: str | None = None


class Daemon:
    def __init__(self, registry: LeaseRegistry, options: RunOptions) -> None:
        self.registry = registry
        self.options = options
        self.stopping = threading.Event()
        # Watch batches, or the error that ended the watch (which ends the loop too).
        self.events: queue.Queue[LeaseEvents | BaseException] = queue.Queue()
        self.watch_error: BaseException | None = None
        self.config: NetworkConfig | None = None
        self.lease: Lease | None = None
        self.backend: backends.Backend | None = None
        self.ready = threading.Event()  # lease held, subnet.env written, peers synced
        self.rng = random.Random()
        self.servers: dict[str, Any] = {}  # "control"/"http" -> server, for their client stats

    def stop(self) -> None:
        self.stopping.set()

    def status(self) -> dict:
        """The snapshot /readyz, /metrics and `weft status` are made from."""
        # A dead watch means peers are no longer tracked: never ready, whatever else holds.
        ready = self.ready.is_set() and self.watch_error is None
        status: dict[str, Any] = {"ready": ready, "lease": None}
        if self.watch_error is not None:
            status["reason"] = f"lease watch failed: {describe_error(self.watch_error)}"
        if self.lease is not None:
            expires = self.lease.expiration
            status["lease"] = {
                "subnet": str(self.lease.subnet),
                "public_ip": str(self.lease.attrs.public_ip),
                "backend": self.config.backend_type if self.config else None,
                "expires_in": None if expires is None else max(expires - time.time(), 0.0),
            }
        if self.backend is not None:
            status.update(self.backend.status())
        # Refused and cut-off clients of the control socket and health endpoints, by reason.
        guards = {name: server.stats() for name, server in self.servers.items()}
        if guards:
            status["clients"] = guards
        return status

    def run(self) -> int:
        """Run until stopped; 0 on a requested stop, 1 when our lease is lost."""
        servers = self._start_servers()
        try:
            return self._run()
        finally:
            for server in servers:
                server.stop()

    def _start_servers(self) -> list:
        from weft.observe.control_socket import ControlServer
        from weft.observe.http import HealthServer

        servers: list = []
        if self.options.healthz_port:
            servers.append(HealthServer(self.options.healthz_ip, self.options.healthz_port,
                                        self.status))
        if self.options.control_socket:
            servers.append(ControlServer(self.options.control_socket, self.control_handlers()))
        for server in servers:
            server.start()
        self.servers = {("http" if isinstance(server, HealthServer) else "control"): server
                        for server in servers}
        return servers

    def control_handlers(self) -> dict:
        def trace(args: dict):  # `weft trace --live`: stream events from the backend's hub
            hub = getattr(self.backend, "tracehub", None)
            if hub is None:
                raise RuntimeError("no userspace data path to trace (backend not started yet, "
                                   "or host-gw, which is kernel routing)")
            return hub.stream(args)

        return {"status": lambda _args: self.status(), "trace": trace}

    def _run(self) -> int:
        self.config = self._wait_for_config()
        if self.config is None:
            return 0
        backends.check_type(self.config.backend_type)
        iface = find_external_interface(self.options.iface, self.options.public_ip)
        log.info("using interface %s (index %d), PublicIP %s", iface.name, iface.index,
                 iface.public_ip)
        self.backend = backends.create(self.config, iface, self.options.backend_options)
        try:
            return self._serve(self.backend)
        finally:
            self.backend.close()

    def _serve(self, backend: backends.Backend) -> int:
        assert self.config is not None
        timing = self.options.timing
        previous = subnet_env.read_previous_subnet(self.options.subnet_file)
        self.lease = self._retry_unreachable(
            "acquiring a subnet lease", acquire_lease, self.registry, self.config,
            backend.lease_attrs(), previous, timing, self.rng)
        if self.lease is None:
            return 0
        backend.start(self.lease)
        subnet_env.write(self.options.subnet_file,
                         subnet_env.render(self.config, self.lease, backend.mtu,
                                           self.options.ip_masq))
        log.info("wrote %s for subnet %s (MTU %d)", self.options.subnet_file, self.lease.subnet,
                 backend.mtu)
        listed = self._retry_unreachable("listing leases", self.registry.list_leases)
        if listed is None:
            return 0
        leases, revision = listed
        backend.handle(self._peers_only(LeaseEvents(tuple(leases), reset=True,
                                                    revision=revision)))
        stop_watch = self.registry.watch_leases(revision, self.events.put, self._watch_failed)
        self.ready.set()
        try:
            return self._loop(backend, timing)
        finally:
            self.ready.clear()
            stop_watch()

    def _loop(self, backend: backends.Backend, timing: LeaseTiming) -> int:
        assert self.lease is not None
        renew_at = timing.renew_at(self.lease.expiration or time.time() + timing.ttl)
        while not self.stopping.is_set():
            wait = min(max(renew_at - time.time(), 0.0), 0.5)
            try:
                batch = self.events.get(timeout=wait)
            except queue.Empty:
                batch = None
            if isinstance(batch, BaseException):
                log.error(WATCH_FAILED.format(describe_error(batch)))
                return 1
            if batch is not None:
                if self._own_lease_lost(batch):
                    log.error(REVOKED)
                    return 1
                peers = self._peers_only(batch)
                if peers.added or peers.removed or peers.reset:
                    backend.handle(peers)
            if time.time() >= renew_at and not self.stopping.is_set():
                try:
                    self.lease = renew_lease(self.registry, self.lease, timing)
                    renew_at = timing.renew_at(self.lease.expiration or time.time() + timing.ttl)
                except RegistryUnavailable as exc:  # any other refusal ends the daemon
                    log.error("renewing lease %s failed: %s; retrying in %.0fs",
                              self.lease.subnet, exc, timing.retry)
                    renew_at = time.time() + timing.retry
        log.info("stopping; keeping lease %s", self.lease.subnet)
        return 0

    def _watch_failed(self, exc: BaseException) -> None:
        """Called once from the watch when it gave up; the loop then ends the daemon."""
        self.watch_error = exc
        self.ready.clear()
        self.events.put(exc)

    def _own_lease_lost(self, batch: LeaseEvents) -> bool:
        assert self.lease is not None
        subnet = self.lease.subnet
        if batch.reset:
            return not any(lease.subnet == subnet for lease in batch.added)
        removed = any(lease.subnet == subnet for lease in batch.removed)
        return removed and not any(lease.subnet == subnet for lease in batch.added)

    def _peers_only(self, batch: LeaseEvents) -> LeaseEvents:
        """Drop events about our own subnet: we do not route to ourselves."""
        assert self.lease is not None
        own = self.lease.subnet
        return LeaseEvents(
            tuple(lease for lease in batch.added if lease.subnet != own),
            tuple(lease for lease in batch.removed if lease.subnet != own),
            batch.reset, batch.revision,
        )

    def _retry_unreachable(self, what: str, fn, *args):
        """`fn(*args)`, again every second while etcd is unreachable (e.g. a member died and
        the client fails over); None if asked to stop meanwhile. Other errors end the daemon."""
        while True:
            try:
                return fn(*args)
            except RegistryUnavailable as exc:
                log.warning("%s: %s (retrying in %.0fs)", what, exc, CONFIG_RETRY)
            if self.stopping.wait(CONFIG_RETRY):
                return None

    def _wait_for_config(self) -> NetworkConfig | None:
        """flanneld retries every second until the operator writes the config."""
        logged = False
        while not self.stopping.is_set():
            try:
                return self.registry.get_network_config()
            except ConfigNotFound as exc:
                if not logged:
                    log.warning("%s (retrying every second)", exc)
                    logged = True
            except RegistryUnavailable as exc:  # anything else is not cured by waiting
                log.warning("%s (retrying)", exc)
            self.stopping.wait(CONFIG_RETRY)
        return None
