"""pyetcd's multi-endpoint client, with TLS material read from files and auth as etcd takes it.

etcd reads the auth token from the `token` gRPC metadata key. pyetcd sends it both as metadata
and as gRPC call credentials, and grpc refuses call credentials on a plaintext channel
("Established channel does not have a sufficient security level"), so user/password auth over
http failed on every call. This client logs in itself and sends the token as metadata only.

Tokens expire (etcd's simple tokens after 5 idle minutes, JWTs after their TTL): a call that gets
"invalid auth token" logs in again and is retried once. Logging in waits for the first call, so
an etcd that is down at start-up is retried like any other unreachable etcd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc
import pyetcd
from pyetcd import etcdrpc
from pyetcd import watch as etcd_watch

from weft.control.etcd_errors import WatchRefused, is_stale_token, status_code
from weft.control.registry import RegistryError

log = logging.getLogger(__name__)

T = TypeVar("T")


def tls_credentials(cafile: str | None, certfile: str | None,
                    keyfile: str | None) -> grpc.ChannelCredentials:
    """Channel credentials from PEM files; no CA file means the system's trusted roots."""
    if bool(certfile) != bool(keyfile):
        raise RegistryError("--etcd-certfile and --etcd-keyfile must be given together")
    # grpc takes the PEM contents (pyetcd's get_secure_creds takes paths).
    return grpc.ssl_channel_credentials(
        _read(cafile, "--etcd-cafile"), _read(keyfile, "--etcd-keyfile"),
        _read(certfile, "--etcd-certfile"))


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RegistryError(f"cannot read {flag} {path}: {exc.strerror}") from None


class EtcdClient(pyetcd.MultiEndpointEtcd3Client):
    """Fails over between `endpoints`; logs in as `username` when one is given."""

    def __init__(self, endpoints: list[pyetcd.Endpoint], timeout: float,
                 username: str | None = None, password: str | None = None) -> None:
        super().__init__(endpoints, timeout=timeout, failover=True)
        self.username = username or None
        self.password = password or ""
        self.logged_in = False
        plain = [f"http://{e.netloc}" for e in endpoints if not e.secure]
        if self.username and plain:
            # Logging in sends the password, and every call then the token, which is as good
            # as the password until it expires: anyone on the path reads both. etcd accepts
            # this, so weft goes on, but says so once, at start.
            log.warning("etcd user %r logs in over plain http to %s: the password and the auth "
                        "token travel in clear text; use https:// endpoints with --etcd-cafile",
                        self.username, ", ".join(plain))

    def login(self) -> None:
        """Get a fresh token; every call and every watch stream opened afterwards carries it."""
        request = etcdrpc.AuthenticateRequest(name=self.username, password=self.password)
        try:
            response = self.authstub.Authenticate(request, self.timeout)
        except grpc.RpcError as exc:
            if status_code(exc) == grpc.StatusCode.FAILED_PRECONDITION:
                # "authentication is not enabled": etcd's own client goes on without a token
                log.warning("etcd auth is not enabled; going on without logging in as %r",
                            self.username)
                self.logged_in = True
                return
            self._manage_grpc_errors(exc)  # marks the endpoint failed when it is unreachable
        self.metadata = (("token", response.token),)
        watcher = self._stubs.get("watcher")
        if watcher is not None:
            watcher._metadata = self.metadata  # its next stream must not carry the old token
        self.logged_in = True

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` once logged in; logs in again once if the token went stale."""
        if self.username and not self.logged_in:
            self.login()
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            if not (self.username and is_stale_token(exc)):
                raise
        log.info("etcd auth token of %r expired; logging in again", self.username)
        self.login()
        return fn(*args, **kwargs)

    def _manage_grpc_errors(self, exc: grpc.RpcError):
        # pyetcd marks an unreachable endpoint failed for `time_retry` seconds and keeps it
        # current: a caller that retries later than that (weft retries after 1 s, renewals
        # after up to 60 s) goes back to the dead member every time and never fails over.
        # So the next call goes to the next endpoint in the list.
        current = self.endpoint_in_use
        try:
            super()._manage_grpc_errors(exc)
        finally:
            if current is not None and current.last_failed and len(self.endpoints) > 1:
                labels = list(self.endpoints)
                following = labels[(labels.index(current.netloc) + 1) % len(labels)]
                self._current_endpoint_label = following
                log.debug("etcd at %s failed; next call goes to %s", current.netloc, following)

    def add_watch_callback(self, *args, **kwargs):
        # etcd checks a watch against the token its stream was opened with; a stream opened
        # now must carry a fresh one, since the watch may have outlived the previous token.
        if not self.username:
            return super().add_watch_callback(*args, **kwargs)
        self.login()
        try:
            return super().add_watch_callback(*args, **kwargs)
        except WatchRefused:
            # The stream still open may carry an expired token: open a new one, once.
            self._clear_old_stubs()
            return super().add_watch_callback(*args, **kwargs)

    def get_watcher(self) -> etcd_watch.Watcher:
        return _Watcher(etcdrpc.WatchStub(self.channel), timeout=self.timeout,
                        metadata=self.metadata)


class _Watcher(etcd_watch.Watcher):
    """pyetcd's watcher, except that a watch etcd cancels on creation is an error.

    etcd answers a watch it refuses (e.g. permission denied) with created+canceled and a
    reason; pyetcd takes that for a created watch that then never delivers anything.
    """

    def _handle_response(self, rs) -> None:
        if rs.created and rs.canceled:
            with self._lock:
                if self._new_watch is not None:
                    self._new_watch.err = WatchRefused(rs.cancel_reason or "canceled")
                    self._new_watch_cond.notify_all()
            return
        super()._handle_response(rs)
