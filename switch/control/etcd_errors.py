"""Which etcd client errors are connection trouble (retry) and which are not (fail loudly).

Retrying everything hides bugs and misconfiguration behind an endless "retrying" log line: a
permission error or a TypeError never heals. Only an unreachable or slow store is worth waiting
for. A failed TLS handshake also arrives as UNAVAILABLE, but a certificate does not heal by
waiting either, so it is fatal, and `explain` names the flag to check.
"""

from __future__ import annotations

import grpc
from pyetcd import exceptions as etcd_exc

# gRPC codes meaning "could not talk to etcd (in time)", not "etcd said no".
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# pyetcd maps UNAVAILABLE and DEADLINE_EXCEEDED to its first two; the others mean that no
# endpoint answered, that a watch could not be created in time, or a socket-level failure.
TRANSIENT_ERRORS = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.WatchTimedOut,
    ConnectionError,
    TimeoutError,
)

# etcd's answers that mean "log in again": the token expired (simple tokens after 5 idle
# minutes, JWTs after their TTL), or the auth store changed since it was issued.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")

# Handshake failures (BoringSSL reason codes in grpc's details) -> what to tell the operator.
_TLS_REASONS = (
    ("CERTIFICATE_VERIFY_FAILED",
     "certificate verify failed: the server's certificate is not signed by the CA in "
     "--etcd-cafile (or is expired) — check --etcd-cafile"),
    ("ALERT_CERTIFICATE_EXPIRED",
     "etcd rejected our client certificate as expired — check --etcd-certfile"),
    ("ALERT_BAD_CERTIFICATE",
     "etcd rejected our client certificate (missing, expired, or not signed by a CA etcd "
     "trusts) — check --etcd-certfile and --etcd-keyfile"),
    ("ALERT_CERTIFICATE_REQUIRED",
     "etcd requires a client certificate — set --etcd-certfile and --etcd-keyfile"),
    ("ALERT_UNKNOWN_CA",
     "etcd does not trust the CA that signed our client certificate — check --etcd-certfile"),
    ("WRONG_VERSION_NUMBER",
     "the server does not speak TLS — is the endpoint http:// rather than https://?"),
)


class WatchRefused(etcd_exc.Etcd3Exception):
    """etcd answered a watch create request by cancelling it (e.g. permission denied)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"etcd refused the watch: {self.reason}"


def is_transient(exc: BaseException) -> bool:
    """True when `exc` means etcd is unreachable or timed out, so a retry may succeed."""
    if tls_failure(exc) is not None:
        return False
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, grpc.RpcError):
        return status_code(exc) in TRANSIENT_CODES
    return False


def is_stale_token(exc: BaseException) -> bool:
    """True when etcd asks for a fresh auth token; one new login and retry is worth it."""
    return any(marker in details(exc) for marker in _STALE_TOKEN)


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong in the TLS handshake, if `exc` is a failed handshake."""
    text = details(exc)
    if "handshake failed" not in text.lower():
        return None
    for marker, reason in _TLS_REASONS:
        if marker in text:
            return reason
    return text


def explain(exc: BaseException, endpoints: str, username: str | None, prefix: str) -> str:
    """One line for the operator: the cause and what to check, not a gRPC dump."""
    text = details(exc)
    code = status_code(exc)
    user = f"user '{username}'" if username else "this client"
    if (reason := tls_failure(exc)) is not None:
        return f"etcd at {endpoints}: TLS handshake failed: {reason}"
    if "authentication failed" in text:
        return (f"etcd authentication failed for user '{username}': wrong user name or "
                "password")
    if "user name is empty" in text:
        return (f"etcd at {endpoints} requires authentication: set --etcd-username and "
                "--etcd-password")
    if is_stale_token(exc):
        return (f"etcd at {endpoints} rejected the auth token of {user} even after logging in "
                f"again: {text}")
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in text:
        return (f"permission denied on {prefix.rstrip('/')}/...: the etcd role of {user} must "
                "allow read-write on that prefix")
    return f"etcd at {endpoints}: {describe(exc)}"


def describe(exc: BaseException) -> str:
    """`UNAVAILABLE: failed to connect` for gRPC errors, the message otherwise."""
    code = status_code(exc)
    if code is not None:
        return f"{code.name}: {details(exc)}"
    return str(exc) or type(exc).__name__


def details(exc: BaseException) -> str:
    """The gRPC details of `exc` (or of the gRPC error it replaced), else its message."""
    rpc = _rpc_error(exc)
    if rpc is not None and callable(getattr(rpc, "details", None)):
        try:
            return rpc.details() or ""
        except (AttributeError, TypeError, ValueError):
            pass
    return str(exc)


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of `exc` (or of the gRPC error it replaced), or None."""
    rpc = _rpc_error(exc)
    if rpc is None:
        return None
    try:
        value = rpc.code()
    except (AttributeError, TypeError, ValueError):
        return None
    return value if isinstance(value, grpc.StatusCode) else None


def _rpc_error(exc: BaseException) -> BaseException | None:
    # A grpc.RpcError raised by a call is also a grpc.Call with code(); a bare RpcError is not.
    # pyetcd raises its own ConnectionFailedError etc. while handling the gRPC error, so that
    # error (with the details, e.g. a TLS handshake failure) survives as __context__.
    for candidate in (exc, exc.__context__):
        if candidate is not None and callable(getattr(candidate, "code", None)):
            return candidate
    return None
