"""The lease registry on etcd v3, with flannel's keys and values.

Keys: `<prefix>/config` and `<prefix>/subnets/<10.1.15.0-24>`; each lease key is attached to an
etcd lease so that it expires on its own. The watch turns etcd events into LeaseEvents batches,
re-lists after a compaction (once per compaction: flannel's watcher could re-list in a hot loop)
and reconnects with backoff 100 ms doubling to 5 s. Only connection trouble is retried
(`etcd_errors.is_transient`); any other error ends the watch loudly and is reported to its owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from urllib.parse import urlsplit

import grpc
import pyetcd
from pyetcd import events as etcd_events
from pyetcd import exceptions as etcd_exc
from pyetcd.utils import prefix_range_end

from weft.control.config import NetworkConfig, parse_config
from weft.control.etcd_client import EtcdClient, tls_credentials
from weft.control.etcd_errors import (
    TRANSIENT_ERRORS,
    describe,
    explain,
    is_transient,
    status_code,
)
from weft.control.lease import (
    Lease,
    LeaseAttrs,
    LeaseFormatError,
    parse_subnet_key,
    subnet_key,
)
from weft.control.lease_policy import LeaseRejections
from weft.control.registry import (
    CONFIG_MISSING,
    DEFAULT_PREFIX,
    ConfigNotFound,
    LeaseEvents,
    LeaseTaken,
    RegistryError,
    RegistryUnavailable,
    is_ours,
)
from weft.control.store_health import StoreHealth

log = logging.getLogger(__name__)

_UNKNOWN_ATTRS = LeaseAttrs(IPv4Address(0))  # attrs of a removed lease: not needed, not known

__all__ = ["CONFIG_MISSING", "ConfigNotFound", "EtcdOptions", "EtcdRegistry", "connect"]

_CAS_ATTEMPTS = 5  # reads and conditional puts of one renewal before calling it contention
# Keys per page of a lease list: ~200 bytes each, so a page stays near 0.4 MB, far below gRPC's
# 4 MB default message limit, and a /12 of /24s (4,096 hosts) is two pages.
LIST_PAGE = 2048
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
# A watch stream may also end CANCELLED when the client drops its channel to fail over to
# another endpoint: that is reconnecting, not a refusal.
STREAM_END_CODES = frozenset({grpc.StatusCode.CANCELLED})


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: str = "http://127.0.0.1:2379"
    prefix: str = DEFAULT_PREFIX
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0


# HTTP/2 pings on the etcd connection: a connection whose local address went away (the
# external interface got a new one) gets no error, only silence; the pings find it dead so
# gRPC connects again from the new address. etcd refuses pings more often than every 5 s.
KEEPALIVE = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]


def connect(options: EtcdOptions) -> EtcdClient:
    """A client over every endpoint in the comma-separated list, failing over between them."""
    tls = None
    if options.cafile or options.certfile or options.keyfile:
        tls = tls_credentials(options.cafile, options.certfile, options.keyfile)
    endpoints = []
    for url in options.endpoints.split(","):
        parts = urlsplit(url.strip() if "//" in url else "//" + url.strip())
        if not parts.hostname:
            raise RegistryError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
        secure = parts.scheme == "https"
        if tls is not None and not secure:
            log.warning("etcd endpoint %s is plain http: the TLS files are not used for it", url)
        creds = (tls or grpc.ssl_channel_credentials()) if secure else None
        endpoints.append(pyetcd.Endpoint(parts.hostname, parts.port or 2379, secure=secure,
                                         creds=creds, time_retry=1.0, opts=KEEPALIVE))
    return EtcdClient(endpoints, options.timeout, options.username, options.password)


class EtcdRegistry:
    def __init__(self, options: EtcdOptions, client=None) -> None:
        self.options = options
        self.prefix = options.prefix.rstrip("/")
        self.subnets_prefix = self.prefix + "/subnets/"
        self.client = client or connect(options)
        self.health = StoreHealth()
        self.rejections = LeaseRejections()  # keys and values that are not leases, and why

    # -- config -------------------------------------------------------------------------------
    def get_network_config(self) -> NetworkConfig:
        value, _ = self._call(self.client.get, self.prefix + "/config")
        if value is None:
            raise ConfigNotFound()
        return parse_config(value)

    def put_network_config(self, text: str) -> None:
        self._call(self.client.put, self.prefix + "/config", text)

    # -- leases -------------------------------------------------------------------------------
    def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease, read in pages at one revision; no TTL lookups (expiration None).

        The daemon needs who holds which subnet, never how long a peer's lease has left, and a
        TTL lookup per key was one etcd round trip per host: 8 s for 4,096 leases. `weft leases`
        asks for the time left with `with_expirations`.
        """
        kvs, revision = self._call(self._range_pages)
        self.rejections.relisted()
        leases = []
        for kv in kvs:
            lease = self._decode(kv.key, kv.value, kv.lease)
            if lease is not None:
                leases.append(lease)
        return leases, revision

    def _range_pages(self) -> tuple[list, int]:
        """The subnets prefix in pages of LIST_PAGE keys, all read at the first page's revision.

        Pages keep each reply far below gRPC's 4 MB message limit however many hosts there are;
        pinning the revision makes the pages one consistent snapshot. A compaction between pages
        makes the pinned revision unreadable: start again at the newest one.
        """
        end = prefix_range_end(self.subnets_prefix.encode())
        for _ in range(_CAS_ATTEMPTS):
            kvs: list = []
            start, revision = self.subnets_prefix.encode(), None
            try:
                while True:
                    response = self.client.get_range_response(
                        start, end, sort_order="ascend", limit=LIST_PAGE, revision=revision)
                    if revision is None:
                        revision = response.header.revision
                    kvs.extend(response.kvs)
                    if not response.more or not response.kvs:
                        return kvs, revision
                    start = response.kvs[-1].key + b"\0"
            except grpc.RpcError as exc:
                if status_code(exc) != grpc.StatusCode.OUT_OF_RANGE or revision is None:
                    raise
                log.info("lease list: revision %d compacted between pages; listing again",
                         revision)
        raise RegistryUnavailable("the lease list kept being compacted while it was read")

    def with_expirations(self, leases: list[Lease], workers: int = 16) -> list[Lease]:
        """`leases` with the time left of each one's etcd lease, for display (`weft leases`).

        The lookups run concurrently on one channel, so thousands of leases cost a few round
        trips of wall time instead of one each. A lookup that fails leaves expiration None:
        the time left is informative, a listing must not fail on it.
        """
        now = time.time()

        def one(lease: Lease) -> Lease:
            if not lease.etcd_lease_id:
                return lease
            try:
                ttl = self.client.get_lease_info(lease.etcd_lease_id).TTL
            except (grpc.RpcError, etcd_exc.Etcd3Exception) as exc:
                log.debug("lease TTL for %s: %s", lease.subnet, describe(exc))
                return lease
            return replace(lease, expiration=now + ttl if ttl >= 0 else None)

        if len(leases) < 2:
            return [one(lease) for lease in leases]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lease-ttl") as pool:
            return list(pool.map(one, leases))

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        key = self.subnets_prefix + subnet_key(subnet, ipv6_subnet)
        grant = self._call(self.client.lease, ttl)
        tx = self.client.transactions
        ok, _ = self._call(
            self.client.transaction,
            compare=[tx.version(key) == 0],
            success=[tx.put(key, attrs.to_json(), lease=grant.id)],
            failure=[],
        )
        if not ok:
            self._call(self.client.revoke_lease, grant.id)
            return None
        return Lease(subnet, attrs, ipv6_subnet, expiration=time.time() + ttl,
                     etcd_lease_id=grant.id)

    def get_lease(self, subnet: IPv4Network,
                  ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        value, meta = self._call(self.client.get,
                                 self.subnets_prefix + subnet_key(subnet, ipv6_subnet))
        if value is None:
            return None
        # No TTL lookup: callers need who holds the key, and a second request per check of
        # every host would double the load of the periodic checks.
        lease = self._decode(meta.key, value, 0)
        return None if lease is None else replace(lease, etcd_lease_id=meta.lease_id)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl: int,
                     old_lease_id: int = 0, ipv6_subnet: IPv6Network | None = None) -> Lease:
        """Grant a fresh etcd lease and put the value with it, only while the key is ours.

        Read the key, decide (absent or `is_ours`), then put in a transaction comparing the
        key's mod revision (or its absence) with what was read: another host's create between
        the read and the put makes the transaction fail, and the key is read again.
        """
        key = self.subnets_prefix + subnet_key(subnet, ipv6_subnet)
        grant = self._call(self.client.lease, ttl)
        tx = self.client.transactions
        for _ in range(_CAS_ATTEMPTS):
            value, meta = self._call(self.client.get, key)
            if value is None:
                compare = tx.version(key) == 0
            else:
                holder = _attrs_or_none(value)
                current = Lease(subnet, holder, etcd_lease_id=meta.lease_id) if holder else None
                if current is None or not is_ours(current, attrs, old_lease_id):
                    self._revoke(grant.id)
                    raise LeaseTaken(subnet, holder)
                compare = tx.mod(key) == meta.mod_revision
            ok, _ = self._call(self.client.transaction, compare=[compare],
                               success=[tx.put(key, attrs.to_json(), lease=grant.id)], failure=[])
            if ok:
                if old_lease_id and old_lease_id != grant.id:
                    # The key moved to the new lease; drop the orphan so etcd does not pile them.
                    self._revoke(old_lease_id)
                return Lease(subnet, attrs, ipv6_subnet, expiration=time.time() + ttl,
                             etcd_lease_id=grant.id)
        self._revoke(grant.id)
        raise RegistryUnavailable(f"lease {subnet} kept changing while we renewed it; retrying")

    def _revoke(self, lease_id: int) -> None:
        try:
            self.client.revoke_lease(lease_id)
        except (grpc.RpcError, etcd_exc.Etcd3Exception) as exc:  # it expires on its own
            log.debug("revoking etcd lease %x: %s", lease_id, describe(exc))

    def delete_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> None:
        self._call(self.client.delete, self.subnets_prefix + subnet_key(subnet, ipv6_subnet))

    def key_name(self, key: bytes) -> str:
        """The part of a lease key below `<prefix>/subnets/` (the whole key if it is not there)."""
        text = key.decode(errors="replace")
        return text[len(self.subnets_prefix):] if text.startswith(self.subnets_prefix) else text

    def parse_key(self, key: bytes) -> tuple[IPv4Network, IPv6Network | None] | None:
        """The subnets of a lease key; None (refusal recorded) when it is not flannel's key."""
        name = self.key_name(key)
        try:
            return parse_subnet_key(name)
        except LeaseFormatError as exc:
            self.rejections.refuse(name, exc.reason, str(exc))
            return None

    def _decode(self, key: bytes, value: bytes, etcd_lease: int) -> Lease | None:
        subnets = self.parse_key(key)
        if subnets is None:
            return None
        try:
            attrs = LeaseAttrs.from_json(value)
        except LeaseFormatError as exc:
            self.rejections.refuse(self.key_name(key), exc.reason, str(exc))
            return None
        return Lease(subnets[0], attrs, subnets[1], None, etcd_lease)

    def _call(self, fn, *args, **kwargs):
        try:
            if isinstance(self.client, EtcdClient):  # logs in first, and again when stale
                result = self.client.call(fn, *args, **kwargs)
            else:
                result = fn(*args, **kwargs)
        except (grpc.RpcError, etcd_exc.Etcd3Exception) as exc:
            message = explain(exc, self.options.endpoints, self.options.username, self.prefix)
            if is_transient(exc):
                self.health.failure(getattr(fn, "__name__", "request"), describe(exc))
                raise RegistryUnavailable(message) from None
            raise RegistryError(message) from None
        self.health.success()
        return result

    # -- watch --------------------------------------------------------------------------------
    def watch_leases(
        self,
        revision: int,
        deliver: Callable[[LeaseEvents], None],
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Callable[[], None]:
        watch = LeaseWatch(self, revision, deliver, on_error)
        watch.start()
        return watch.stop


def _attrs_or_none(value: bytes) -> LeaseAttrs | None:
    try:
        return LeaseAttrs.from_json(value)
    except LeaseFormatError:
        return None


class LeaseWatch:
    """Keeps one etcd watch on the subnets prefix alive and turns its events into batches.

    Connection trouble is retried with backoff. Anything else (a permission error, a bug in
    decoding or in `deliver`) ends the watch: logged with its traceback, kept in `error` and
    passed to `on_error`, so a dead watch never passes for a quiet one.
    """

    def __init__(self, registry: EtcdRegistry, revision: int,
                 deliver: Callable[[LeaseEvents], None],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.registry = registry
        self.revision = revision  # last revision delivered
        self.deliver = deliver
        self.on_error = on_error
        self.error: BaseException | None = None  # what ended the watch, if it was not stop()
        self.stopped = threading.Event()
        self.wake = threading.Event()  # set by the callback when the stream ends
        self.relists = 0
        self.retries = 0  # connection failures retried so far
        self.thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self._watch_id = None
        self._fail_lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self._cancel()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._keep_watching()
        except Exception as exc:  # noqa: BLE001 - not swallowed: reported, and the watch ends
            self._fail(exc)

    def _keep_watching(self) -> None:
        backoff = BACKOFF_MIN
        health = self.registry.health
        connects = 0
        while not self.stopped.is_set():
            self.wake.clear()
            try:
                self._watch_id = self.registry.client.add_watch_prefix_callback(
                    self.registry.subnets_prefix, self._on_response,
                    start_revision=self.revision + 1,
                )
            except etcd_exc.RevisionCompactedError as exc:
                self._relist(exc.compacted_revision)
                continue
            except (grpc.RpcError, *TRANSIENT_ERRORS) as exc:
                if not is_transient(exc):
                    raise
                self.retries += 1
                health.set_watch("reconnecting")
                health.failure("watch", describe(exc))  # logs, rate-limited
                log.debug("lease watch: %s; retrying in %.1fs", describe(exc), backoff)
                if self.stopped.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            health.success()
            health.set_watch("connected")
            connects += 1
            if connects > 1:
                health.watch_restarted()
            self.wake.wait()
            self._cancel()
            if not self.stopped.is_set():
                self.stopped.wait(BACKOFF_MIN)  # never spin, even if the stream dies at once

    def _fail(self, exc: BaseException) -> None:
        with self._fail_lock:
            if self.error is not None or self.stopped.is_set():
                return  # stop() was asked for, or the failure is already reported
            self.error = exc
            self.registry.health.set_watch("failed")
            self.stopped.set()
            self.wake.set()
        log.error("lease watch failed, not retrying: %s", describe(exc), exc_info=exc)
        if self.on_error is not None:
            self.on_error(exc)

    def _cancel(self) -> None:
        watch_id, self._watch_id = self._watch_id, None
        if watch_id is not None:
            try:
                self.registry.client.cancel_watch(watch_id)
            except (grpc.RpcError, *TRANSIENT_ERRORS):
                pass  # the stream is already gone: nothing left to cancel

    def _on_response(self, response) -> None:
        # pyetcd calls this from its own thread and only logs what it raises, which would leave
        # the watch silently dead; so every error ends the watch here, visibly.
        try:
            self._handle_response(response)
        except Exception as exc:  # noqa: BLE001 - reported via _fail, not swallowed
            self._fail(exc)

    def _handle_response(self, response) -> None:
        if self.stopped.is_set():
            return
        if isinstance(response, etcd_exc.RevisionCompactedError):
            self._relist(response.compacted_revision)
            self.wake.set()
            return
        if response is None or isinstance(response, Exception):
            # The stream ended: cleanly (None), or with an error, which decides whether to
            # reconnect or to give up.
            if response is not None and not self._stream_end_retryable(response):
                raise response
            log.warning("lease watch stream ended: %s",
                        "closed" if response is None else describe(response))
            self.registry.health.set_watch("reconnecting")
            self.wake.set()
            return
        added, removed = [], []
        for event in response.events:
            lease = self._event_lease(event)
            if lease is None:
                continue
            (removed if isinstance(event, etcd_events.DeleteEvent) else added).append(lease)
        revision = response.header.revision
        self.revision = max(self.revision, revision)
        if added or removed:
            self.deliver(LeaseEvents(tuple(added), tuple(removed), revision=revision))

    def _event_lease(self, event) -> Lease | None:
        registry = self.registry
        if isinstance(event, etcd_events.DeleteEvent):
            # Only the subnet matters for a removal; the old value may be gone or garbage.
            name = registry.key_name(event.key)
            registry.rejections.clear(name)  # a refused key that is gone is refused no more
            try:
                subnet, ipv6 = parse_subnet_key(name)
            except LeaseFormatError:
                return None
            return Lease(subnet, _UNKNOWN_ATTRS, ipv6)
        return registry._decode(event.key, event.value, event.lease)

    def _relist(self, compacted: int) -> None:
        """The watch fell behind a compaction: list again and deliver the whole set."""
        self.relists += 1
        self.registry.health.watch_restarted()
        log.warning("lease watch fell behind compaction at revision %d; re-listing", compacted)
        while not self.stopped.is_set():
            try:
                leases, revision = self.registry.list_leases()
            except RegistryUnavailable as exc:  # reported to health by list_leases
                log.debug("re-list failed: %s", exc)
                self.stopped.wait(BACKOFF_MAX)
                continue
            self.revision = revision
            self.deliver(LeaseEvents(tuple(leases), reset=True, revision=revision))
            return


    @staticmethod
    def _stream_end_retryable(exc: Exception) -> bool:
        return is_transient(exc) or status_code(exc) in STREAM_END_CODES
