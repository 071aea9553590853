"""Which etcd client errors are connection trouble (retry) and which are not (fail loudly).

Retrying everything hides bugs and misconfiguration behind an endless "retrying" log line: a
permission error or a TypeError never heals. Only an unreachable or slow store is worth waiting
for.
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


def is_transient(exc: BaseException) -> bool:
    """True when `exc` means etcd is unreachable or timed out, so a retry may succeed."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, grpc.RpcError):
        return status_code(exc) in TRANSIENT_CODES
    return False


def describe(exc: BaseException) -> str:
    """`UNAVAILABLE: failed to connect` for gRPC errors, the message otherwise."""
    code = status_code(exc)
    if code is not None:
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{code.name}: {details}"
    return str(exc) or type(exc).__name__


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of `exc`, or None when it carries none."""
    # A grpc.RpcError raised by a call is also a grpc.Call with code(); a bare RpcError is not.
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        value = code()
    except (AttributeError, TypeError, ValueError):
        return None
    return value if isinstance(value, grpc.StatusCode) else None
