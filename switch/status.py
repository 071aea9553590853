"""The status snapshot, typed: what `weft run` reports to /readyz, /metrics and `weft status`.

The daemon and its parts build these sections; metrics, status_text, http and doctor read them
by attribute, so a renamed field fails where it is read (and in the tests), never silently as a
metric missing from a scrape. `to_json` gives the control socket's JSON, whose keys tools and the
lab read ("ready", "peers", "counters", "repairs" ...); the backend's section sits at the top
level of it, as it always did. `from_json` reads that JSON back for `weft status`: a missing
required key is a StatusFormatError, an unknown key is ignored (a newer daemon may add some).

Plain dataclasses over the standard library, importing nothing of weft: every producer, low or
high in the package, may build them.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Self

_KEY, _FLAT, _OMIT_NONE = "json_key", "flat", "omit_none"


class StatusFormatError(ValueError):
    """A status JSON object without a field the snapshot needs, or with one of the wrong type."""


def _optional(flat: bool = False) -> Any:
    """A section or value that is genuinely absent at times: None, and then left out of JSON.
    `flat`: its keys sit beside its parent's rather than under its own name."""
    return field(default=None, metadata={_OMIT_NONE: True, _FLAT: flat})


class Section:
    """Base of every status dataclass: its JSON form and back."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get(_OMIT_NONE):
                continue
            if f.metadata.get(_FLAT):
                out.update(_to_json(value))
            else:
                out[_json_key(f)] = _to_json(value)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Self:
        if not isinstance(data, Mapping):
            raise StatusFormatError(f"{cls.__name__}: expected an object, got {data!r:.60}")
        hints = typing.get_type_hints(cls)
        own_keys = {_json_key(f) for f in fields(cls) if not f.metadata.get(_FLAT)}
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            kind = hints[f.name]
            if f.metadata.get(_FLAT):
                kwargs[f.name] = _flat_from_json(kind, data, own_keys)
                continue
            key = _json_key(f)
            if key not in data:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise StatusFormatError(f"{cls.__name__}: no {key!r}")
                continue
            kwargs[f.name] = _from_json(kind, data[key], f"{cls.__name__}.{key}")
        return cls(**kwargs)


def _json_key(f: Field) -> str:
    return f.metadata.get(_KEY, f.name)


def _to_json(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(kind))
    return kind, False


def _flat_from_json(kind: Any, data: Mapping, own_keys: set[str]) -> Any:
    """A flattened field: a section whose keys sit beside ours (present when its first key is),
    or a dict of every key no other field claims."""
    inner, optional = _unwrap_optional(kind)
    if is_dataclass(inner):
        first = _json_key(fields(inner)[0])
        if optional and first not in data:
            return None
        return inner.from_json(data)
    return {k: v for k, v in data.items() if k not in own_keys}


def _from_json(kind: Any, value: Any, where: str) -> Any:
    inner, optional = _unwrap_optional(kind)
    if value is None and optional:
        return None
    origin = typing.get_origin(inner)
    if is_dataclass(inner):
        return inner.from_json(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise StatusFormatError(f"{where}: expected a list, got {value!r:.60}")
        return tuple(_from_json(typing.get_args(inner)[0], v, where) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise StatusFormatError(f"{where}: expected an object, got {value!r:.60}")
        item = typing.get_args(inner)[1]
        return {str(k): _from_json(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    if inner is Any:
        return value
    if inner is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if inner is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if inner in (bool, str) and isinstance(value, inner):
        return value
    raise StatusFormatError(f"{where}: expected {inner}, got {value!r:.60}")


# -- the daemon's sections --------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class LeaseStatus(Section):
    subnet: str
    public_ip: str
    backend: str | None  # the network config's backend type
    expires_in: float | None  # seconds; None for a lease without expiry
    # The lease's IPv6 half and what peers send IPv6 to (EnableIPv6); left out of the JSON of
    # an IPv4-only lease, which reads as it always did.
    ipv6_subnet: str | None = _optional()
    public_ipv6: str | None = _optional()


@dataclass(frozen=True, kw_only=True)
class EtcdStatus(Section):
    """The store's reachability and the lease watch (control/store_health.py)."""

    up: bool
    down_since: float | None  # time.time() of the first failure of this outage
    down_for: float | None
    retries: int  # failed requests in the current outage
    last_error: str | None
    outages: int
    watch: str  # idle | connected | reconnecting
    watch_restarts: int


@dataclass(frozen=True, kw_only=True)
class KeeperStatus(Section):
    """The upkeep of our own lease (control/lease_keeper.py)."""

    renewals: int
    checks: int
    renew_failures: int
    renew_failing_since: float | None
    recreated: int
    next_renewal: float


@dataclass(frozen=True)
class Refusal(Section):
    """Why a lease key is refused (control/lease_policy.py)."""

    reason: str
    detail: str


@dataclass(frozen=True, kw_only=True)
class RejectionsStatus(Section):
    total: dict[str, int]  # refusals counted by reason since start
    current: dict[str, Refusal]  # key below subnets/ -> why it is refused now


@dataclass(frozen=True, kw_only=True)
class PeerSyncStatus(Section):
    """Peer removals held back by the grace period (control/peer_sync.py)."""

    pending_removal: tuple[str, ...]
    deferred: int
    cancelled: int
    grace: float


@dataclass(frozen=True, kw_only=True)
class IptablesStatus(Section):
    """Our masquerade/forward rules (backends/masquerade.py)."""

    chains: tuple[str, ...]
    applied: bool
    resyncs: int
    error: str | None = _optional()


# -- the backend's sections -------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DirectionCounters(Section):
    packets: int
    bytes: int
    forwarded: int
    forwarded_bytes: int
    slow: int
    dropped: int
    checksums_completed: int  # inner checksums a sender left for offload, completed here


@dataclass(frozen=True, kw_only=True)
class TrafficCounters(Section):
    """The pipeline's counters (packet/pipeline.py counter_summary), driver drops included."""

    egress: DirectionCounters
    ingress: DirectionCounters
    drops: dict[str, int]  # by reason name
    slow_path: dict[str, int]  # slow-path outcomes by reason name


@dataclass(frozen=True, kw_only=True)
class PeerStatus(Section):
    subnet: str
    public_ip: str
    vtep_mac: str | None = None  # vxlan peers only
    ipv6_subnet: str | None = _optional()  # a dual-stack peer's IPv6 half
    public_ipv6: str | None = _optional()


@dataclass(frozen=True, kw_only=True)
class DatapathStatus(Section):
    mode: str  # offload | fast | plain, or "kernel routes" for host-gw
    # What the driver tells beside its mode (batch, io, udp_gso, errors, loop ...): shown by
    # `weft status` as it comes, no metric reads it.
    details: dict[str, Any] = field(default_factory=dict, metadata={_FLAT: True})


@dataclass(frozen=True, kw_only=True)
class TraceStatus(Section):
    subscribers: int
    dropped: int  # trace rows lost to slow subscribers


@dataclass(frozen=True, kw_only=True)
class RepairStatus(Section):
    """Kernel state put back by the repair pass, by what (backends/reconcile.py)."""

    repairs: dict[str, int]
    failing: dict[str, str] = field(default_factory=dict,  # repair -> why the kernel refuses it
                                    metadata={_KEY: "repair_failing"})


@dataclass(frozen=True, kw_only=True)
class BackendStatus(Section):
    kind: str = field(metadata={_KEY: "backend"})  # vxlan | udp | host-gw | alloc
    peers: tuple[PeerStatus, ...]  # what is programmed (alloc: what it was handed)
    unprogrammed: dict[str, str] = field(default_factory=dict)  # subnet -> why not programmed
    device: str | None = _optional()
    datapath: DatapathStatus | None = _optional()
    counters: TrafficCounters | None = _optional()  # userspace data paths only
    trace: TraceStatus | None = _optional()
    repair: RepairStatus | None = _optional(flat=True)


@dataclass(frozen=True, kw_only=True)
class DaemonStatus(Section):
    """The whole snapshot; sections are None until what they describe exists."""

    ready: bool  # lease held, subnet.env written, peers synced, watch alive, lease safe
    reason: str | None = _optional()  # why not ready, when known
    lease: LeaseStatus | None  # always in the JSON (null without a lease)
    etcd: EtcdStatus
    leases_rejected: RejectionsStatus
    lease_keeper: KeeperStatus | None = _optional()
    peer_sync: PeerSyncStatus | None = _optional()
    backend: BackendStatus | None = _optional(flat=True)
    # control socket and health endpoint -> connections accepted, refused and cut off by reason
    clients: dict[str, dict[str, int]] | None = _optional()
    iptables: IptablesStatus | None = _optional()
