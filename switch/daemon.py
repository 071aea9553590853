"""`weft run`: wires the lease registry, the lease lifecycle and a backend together.

The loop is flanneld's: wait for the network config, set up the backend, acquire a lease, write
subnet.env, program the current peers, then apply watch batches and renew before expiry until a
signal (keep the lease, as flanneld does), the loss of our own lease to another host, or a lease
watch that failed on something other than connection trouble (both exit 1). Unlike flanneld, a
lease that expired or was deleted is put back while its subnet is free (LeaseKeeper), and a peer
is unprogrammed only once its lease stayed gone for a grace period (PeerSync).
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Any

from weft import backends
from weft.control import subnet_env
from weft.control.blackhole import add_blackhole_route
from weft.control.config import NetworkConfig
from weft.control.iface import find_external_interface
from weft.control.lease import Lease, LeaseAttrs
from weft.control.lease_keeper import CHECK_INTERVAL, LeaseKeeper
from weft.control.lease_manager import LeaseTiming, acquire_lease
from weft.control.lease_policy import LeasePolicy
from weft.control.peer_sync import REMOVAL_GRACE, PeerSync
from weft.control.registry import (
    ConfigNotFound,
    LeaseEvents,
    LeaseRegistry,
    LeaseTaken,
    RegistryUnavailable,
)
from weft.dev.handover import Inherited
from weft.drivers.compile_job import LOOPS, CompileJob
from weft.host.traffic_rules import TrafficRules, start_traffic_rules
from weft.observe.sdnotify import Notifier
from weft.status import DaemonStatus, LeaseStatus

log = logging.getLogger(__name__)


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

REVOKED = "Lease has been revoked. Shutting down daemon."
RELOAD = -1  # run()'s result when SIGHUP asked for a re-exec (weft.dev.handover)
WATCH_FAILED = "lease watch failed: {}. Shutting down daemon."
CONFIG_RETRY = 1.0  # seconds between reads of a missing config, as flanneld
WAKE = object()  # put in the event queue by stop(): the loop looks at `stopping` now


@dataclass
class RunOptions:
    iface: str | list[str] | None = None  # names or addresses; the first that exists is used
    iface_regex: list[str] = field(default_factory=list)
    iface_can_reach: IPv4Address | None = None
    ip_blackhole_route: bool = False
    public_ip: IPv4Address | None = None
    public_ipv6: IPv6Address | None = None  # --public-ipv6 (EnableIPv6)
    subnet_file: str = subnet_env.DEFAULT_PATH
    ip_masq: bool = False
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    backend_options: dict[str, Any] = field(default_factory=dict)
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0  # 0 = off, as flanneld
    control_socket: str | None = None
    lease_check_interval: float = CHECK_INTERVAL  # seconds between checks of our key in etcd
    peer_removal_grace: float = REMOVAL_GRACE  # seconds a peer stays after its lease is gone
    # iptables (host/traffic_rules.py). Forward rules default off here so that a Daemon built
    # in code never touches the host's iptables; `weft run` defaults them on, as flanneld.
    ip_masq_random_fully: bool = True
    iptables_forward_rules: bool = False
    iptables_resync: float = 5.0  # seconds between checks of our rules
    # Descriptors the previous `weft run` passed (SIGHUP's exec, systemd's fd store).
    inherited: Inherited = field(default_factory=Inherited)


class Daemon:
    def __init__(self, registry: LeaseRegistry, options: RunOptions) -> None:
        self.registry = registry
        self.options = options
        self.stopping = threading.Event()
        # Watch batches, the error that ended the watch (which ends the loop too), or WAKE from
        # stop(). A SimpleQueue because stop() runs in a signal handler: its put() is
        # reentrant, where Queue.put could deadlock on the lock the interrupted get() holds.
        self.events: queue.SimpleQueue[LeaseEvents | BaseException | object] = (
            queue.SimpleQueue())
        self.watch_error: BaseException | None = None
        self.config: NetworkConfig | None = None
        self.lease: Lease | None = None
        self.backend: backends.Backend | None = None
        self.keeper: LeaseKeeper | None = None
        self.peers: PeerSync | None = None
        self.traffic: TrafficRules | None = None  # masquerade/forward rules, when asked for
        self.ready = threading.Event()  # lease held, subnet.env written, peers synced
        self.rng = random.Random()
        self.notifier = Notifier.from_environment()  # systemd, when it started us
        self.servers: dict[str, Any] = {}  # "control"/"http" -> server, for their client stats
        # The backend's new lease attrs while etcd did not take them yet (retried each turn).
        self.unpublished: LeaseAttrs | None = None
        self.reload_requested = threading.Event()  # SIGHUP: re-exec once the new code compiled
        self._reload_job: CompileJob | None = None
        self.handover_fds: dict[str, int] = {}  # what run() left open for the exec (RELOAD)
        self._stored_fds: dict[str, int] = {}  # what systemd's fd store was last given

    def stop(self) -> None:
        """Ask the loop to end; safe in a signal handler. The loop wakes at once, not at its
        next timeout, so a SIGTERM is acted on within milliseconds."""
        self.stopping.set()
        self.events.put(WAKE)

    def reload(self) -> None:
        """SIGHUP: compile the installed code's data path while this one keeps forwarding,
        then hand the devices and sockets to a re-exec of ourselves (run() returns RELOAD)."""
        self.reload_requested.set()

    def status(self) -> DaemonStatus:
        """The snapshot /readyz, /metrics and `weft status` are made from."""
        # Ready: our lease is safe and the data path runs. A dead watch (peers no longer
        # tracked) or renewals failing inside the renew margin end it; etcd merely unreachable
        # while the lease has time left does not (see README, "Failure behaviour").
        keeper = self.keeper
        risk = keeper.at_risk() if keeper is not None else None
        lease = keeper.lease if keeper is not None else self.lease
        reason = (f"lease watch failed: {describe_error(self.watch_error)}"
                  if self.watch_error is not None else risk)
        # Refused and cut-off clients of the control socket and health endpoints, by reason.
        clients = {name: server.stats() for name, server in self.servers.items()}
        return DaemonStatus(
            ready=self.ready.is_set() and self.watch_error is None and risk is None,
            reason=reason,
            lease=None if lease is None else self._lease_status(lease),
            etcd=self.registry.health.snapshot(),
            leases_rejected=self.registry.rejections.snapshot(),
            lease_keeper=keeper.status() if keeper is not None else None,
            peer_sync=self.peers.status() if self.peers is not None else None,
            backend=self.backend.status() if self.backend is not None else None,
            clients=clients or None,
            iptables=self.traffic.status() if self.traffic is not None else None,
        )

    def _lease_status(self, lease: Lease) -> LeaseStatus:
        expires = lease.expiration
        return LeaseStatus(
            subnet=str(lease.subnet), public_ip=str(lease.attrs.public_ip),
            backend=self.config.backend_type if self.config else None,
            expires_in=None if expires is None else max(expires - time.time(), 0.0),
            ipv6_subnet=_text(lease.ipv6_subnet), public_ipv6=_text(lease.attrs.public_ipv6))

    def run(self) -> int:
        """Run until stopped; 0 on a requested stop, 1 when our lease is lost."""
        servers = self._start_servers()
        code = 1
        try:
            code = self._run()
            return code
        finally:
            if code != RELOAD:  # a reload is not a stop: the same PID carries on
                self.notifier.stopping("stopping" if code == 0 else "exiting on an error")
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
            hub = self.backend.tracehub if self.backend is not None else None
            if hub is None:
                raise RuntimeError("no userspace data path to trace (backend not started yet, "
                                   "or host-gw, which is kernel routing)")
            return hub.stream(args)

        return {"status": lambda _args: self.status().to_json(), "trace": trace}

    def _run(self) -> int:
        self.config = self._wait_for_config()
        if self.config is None:
            return 0
        backends.check_type(self.config.backend_type)
        backends.check_families(self.config)
        iface = find_external_interface(self.options.iface, self.options.public_ip,
                                        self.options.iface_regex, self.options.iface_can_reach,
                                        ipv6=self.config.enable_ipv6,
                                        public_ipv6=self.options.public_ipv6)
        log.info("using interface %s (index %d), PublicIP %s%s", iface.name, iface.index,
                 iface.public_ip, f", PublicIPv6 {iface.public_ipv6}" if iface.public_ipv6
                 else "")
        self.backend = backends.create(self.config, iface, {
            **self.options.backend_options, "inherited": self.options.inherited})
        code = 1
        try:
            code = self._serve(self.backend)
            return code
        finally:
            if self.traffic is not None:
                self.traffic.stop()  # the rules stay, as flanneld's do
            if code == RELOAD:
                self.handover_fds = self.backend.detach()
            else:
                self.backend.close()

    def _serve(self, backend: backends.Backend) -> int:
        assert self.config is not None
        timing = self.options.timing
        previous, previous_v6 = subnet_env.read_previous_subnets(self.options.subnet_file)
        self.notifier.status("acquiring a subnet lease")
        acquired = self._retry_unreachable(
            "acquiring a subnet lease", functools.partial(acquire_lease, previous_v6=previous_v6),
            self.registry, self.config, backend.lease_attrs(), previous, timing, self.rng)
        if acquired is None:
            return 0
        self.lease = acquired.lease
        if self.options.ip_blackhole_route:
            add_blackhole_route(self.lease.subnet)
        backend.start(self.lease)
        opts = self.options
        if self.config.backend_type == "alloc":
            # Leases only: no pod traffic crosses this host for weft, so there is nothing to
            # masquerade or forward (and tests of the lease logic leave the host's iptables be).
            log.info("backend alloc carries no pod traffic: no iptables rules installed")
        else:
            self.traffic = start_traffic_rules(self.config.network, self.lease.subnet, previous,
                                               opts.ip_masq, opts.iptables_forward_rules,
                                               opts.ip_masq_random_fully, opts.iptables_resync,
                                               forward_devices=backend.forward_devices,
                                               ipv6=self._ipv6_rules())
        subnet_env.write(self.options.subnet_file,
                         subnet_env.render(self.config, self.lease, backend.mtu,
                                           self.options.ip_masq))
        log.info("wrote %s for subnet %s (MTU %d)", self.options.subnet_file, self.lease.subnet,
                 backend.mtu)
        self.keeper = LeaseKeeper(self.registry, self.lease, timing,
                                  self.options.lease_check_interval)
        policy = LeasePolicy(self.config, self.registry.rejections, self.lease.subnet,
                             self.lease.attrs.public_ip)
        self.peers = PeerSync(policy, backend.handle, self.options.peer_removal_grace)
        # The listing the subnet was chosen on: changes since come through the watch.
        self.peers.handle(LeaseEvents(tuple(acquired.listed), reset=True,
                                      revision=acquired.revision))
        backend.peers_synced()  # an adopted device is served from here on
        self.notifier.remove_fds(self.options.inherited.close_rest())
        self._store_fds(backend)
        stop_watch = self.registry.watch_leases(acquired.revision, self.events.put,
                                                self._watch_failed)
        self.ready.set()
        self.notifier.ready(f"subnet {self.lease.subnet}, backend {self.config.backend_type}, "
                            f"{self.options.subnet_file} written")
        try:
            return self._loop(backend, self.keeper, self.peers)
        finally:
            self.ready.clear()
            stop_watch()

    def _loop(self, backend: backends.Backend, keeper: LeaseKeeper, peers: PeerSync) -> int:
        while not self.stopping.is_set():
            self.notifier.watchdog()  # here only: a loop that hangs stops the pings
            due = [keeper.next_due() - time.time()]
            if self.notifier.watchdog_interval:
                due.append(self.notifier.watchdog_interval / 2)
            if (peer_due := peers.next_due()) is not None:
                due.append(peer_due - peers.clock())
            try:
                batch = self.events.get(timeout=min(max(min(due), 0.0), 0.5))
            except queue.Empty:
                batch = None
            if batch is WAKE:
                batch = None
            if isinstance(batch, BaseException):
                log.error(WATCH_FAILED.format(describe_error(batch)))
                return 1
            if batch is not None:
                if keeper.touched_by(batch):
                    keeper.check_soon()  # judge on the store now, not on this event
                peers.handle(batch)
            if self.stopping.is_set():
                break
            if self.reload_requested.is_set() and self._reload_ready():
                log.info("reloading: handing devices and sockets to the new weft run")
                return RELOAD
            self._store_fds(backend)
            try:
                self._republish_if_changed(backend, keeper)
                keeper.tick()
            except LeaseTaken as exc:  # another host holds our subnet: flannel's exit
                log.error("%s", exc)
                log.error(REVOKED)
                return 1
            self.lease = keeper.lease
            peers.confirm_due(self.registry)
        log.info("stopping; keeping lease %s", keeper.lease.subnet)
        return 0

    def _ipv6_rules(self) -> tuple[IPv6Network, IPv6Network] | None:
        """The IPv6 network and our IPv6 subnet, for ip6tables, in a dual-stack cluster."""
        assert self.config is not None and self.lease is not None
        if self.config.ipv6_network is None or self.lease.ipv6_subnet is None:
            return None
        return self.config.ipv6_network, self.lease.ipv6_subnet

    def _reload_ready(self) -> bool:
        """Whether the installed code's data path is compiled, starting its compile job on
        the first call; a failed compile cancels the reload (this version keeps running)."""
        job = self._reload_job
        if job is None:
            log.info("SIGHUP: reloading; compiling the installed code's data path first "
                     "(this process keeps forwarding meanwhile)")
            self.notifier.reloading("compiling the installed code before the hand-over")
            self._reload_job = CompileJob(report=lambda line: log.info("reload: %s", line))
            return False
        if job.wait(LOOPS, timeout=0):
            return True
        if job.error:
            log.error("reload cancelled, this version keeps running: %s", job.error)
            self.reload_requested.clear()
            self._reload_job = None
            self.notifier.ready("reload cancelled: the new code did not compile")
        return False

    def _store_fds(self, backend: backends.Backend) -> None:
        """Keep systemd's fd store holding our current descriptors (a reopened device is a new
        one), so a restart hands them to the next `weft run` (weft.dev.handover)."""
        if not self.notifier.fd_store:
            return
        fds = backend.carried_fds()
        if fds != self._stored_fds:
            self.notifier.remove_fds([n for n in self._stored_fds if n in fds])
            self.notifier.store_fds(fds)
            self._stored_fds = fds

    def _republish_if_changed(self, backend: backends.Backend, keeper: LeaseKeeper) -> None:
        """Put the backend's new attrs in our lease when it says they changed (its repair pass
        saw the external interface's address move): peers then follow our new PublicIP."""
        attrs = backend.changed_lease_attrs() or self.unpublished
        if attrs is None:
            return
        old = keeper.lease
        try:
            keeper.lease = self.registry.update_lease(old.subnet, attrs, self.options.timing.ttl,
                                                      old_lease_id=old.etcd_lease_id,
                                                      ipv6_subnet=old.ipv6_subnet)
        except RegistryUnavailable as exc:  # retried on the next turn of the loop
            log.warning("republishing lease %s failed: %s; retrying", old.subnet, exc)
            self.unpublished = attrs
            return
        self.unpublished = None
        self.lease = keeper.lease
        if self.peers is not None:  # a peer may not claim our new address either
            self.peers.policy.own_public_ip = attrs.public_ip
        log.info("republished lease %s with PublicIP %s", old.subnet, attrs.public_ip)

    def _watch_failed(self, exc: BaseException) -> None:
        """Called once from the watch when it gave up; the loop then ends the daemon."""
        self.watch_error = exc
        self.ready.clear()
        self.events.put(exc)

    def _retry_unreachable(self, what: str, fn, *args):
        """`fn(*args)`, again every second while etcd is unreachable (e.g. a member died and
        the client fails over); None if asked to stop meanwhile. Other errors end the daemon."""
        while True:
            self.notifier.watchdog()  # waiting for etcd is healthy: systemd must not restart us
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
            self.notifier.watchdog()
            try:
                return self.registry.get_network_config()
            except ConfigNotFound as exc:
                if not logged:
                    log.warning("%s (retrying every second)", exc)
                    self.notifier.status(f"waiting for the network config: {exc}")
                    logged = True
            except RegistryUnavailable as exc:  # anything else is not cured by waiting
                log.warning("%s (retrying)", exc)
            self.stopping.wait(CONFIG_RETRY)
        return None
