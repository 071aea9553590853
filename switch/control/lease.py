"""Subnet leases: etcd key names and the lease value JSON, byte-identical to flannel's.

flannel (pkg/lease/lease.go) marshals LeaseAttrs with Go's encoding/json: fields in declaration
order, `PublicIPv6` always present (null when unset), BackendType/BackendData omitted when empty.
BackendData is a json.RawMessage, so we keep the decoded object in its original key order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from weft.control.json_object import json_object

# flannel's key pattern. It is matched whole (fullmatch: `$` would let a trailing newline
# through) and the parsed subnet must give the key back (`subnet_key`): only one spelling of a
# subnet is a lease, so `10.1.15.0-024` or `010.1.15.0-24` cannot alias `10.1.15.0-24`.
KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?:([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4})")

# Why a key or value is not a lease (the `reason` label of weft_leases_rejected_total).
MALFORMED_KEY = "malformed_key"
KEY_NOT_CANONICAL = "key_not_canonical"
MALFORMED_VALUE = "malformed_value"


class LeaseFormatError(ValueError):
    """A key or value in etcd that is not a flannel lease; `reason` says which rule it broke."""

    def __init__(self, message: str, reason: str = MALFORMED_VALUE) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LeaseAttrs:
    """What a host publishes about itself: how to reach its subnet."""

    public_ip: IPv4Address
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""  # "" as flannel's udp backend writes no BackendType
    backend_data: Any = None  # decoded BackendData JSON, key order preserved
    backend_v6_data: Any = None  # BackendV6Data: the IPv6 half's (vxlan: its own VNI, VtepMAC)

    @property
    def effective_backend(self) -> str:
        return self.backend_type or "udp"

    @property
    def vtep_mac(self) -> str | None:
        return self._backend_field("VtepMAC", str)

    @property
    def vni(self) -> int | None:
        return self._backend_field("VNI", int)

    def _backend_field(self, name: str, kind: type) -> Any:
        """BackendData[name] if BackendData is an object and the field is a `kind`; else None.

        BackendData is whatever the peer wrote: a missing or mistyped field is "not known".
        """
        data = self.backend_data
        if isinstance(data, dict) and isinstance(data.get(name), kind):
            return data[name]
        return None

    def to_json(self) -> str:
        parts = [f'"PublicIP":{json.dumps(str(self.public_ip))}']
        v6 = json.dumps(str(self.public_ipv6)) if self.public_ipv6 else "null"
        parts.append(f'"PublicIPv6":{v6}')
        if self.backend_type:
            parts.append(f'"BackendType":{json.dumps(self.backend_type)}')
        if self.backend_data is not None:
            parts.append('"BackendData":' + json.dumps(self.backend_data, separators=(",", ":")))
        if self.backend_v6_data is not None:
            parts.append('"BackendV6Data":'
                         + json.dumps(self.backend_v6_data, separators=(",", ":")))
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        raw = json_object(text, LeaseFormatError, "lease value is not JSON",
                          "lease value is not a JSON object")
        fields = {k.lower(): v for k, v in raw.items()}
        v4, v6 = fields.get("publicip"), fields.get("publicipv6")
        # Addresses are JSON strings (Go's net.IP); IPv4Address(167772161) would take a number.
        if not isinstance(v4, str) or not isinstance(v6, str | None):
            raise LeaseFormatError("lease PublicIP/PublicIPv6 is not a string")
        try:
            public_ip = IPv4Address(v4)
            public_ipv6 = IPv6Address(v6) if v6 else None
        except (ValueError, TypeError) as exc:
            raise LeaseFormatError(f"lease value has a bad address: {exc}") from None
        backend_type = fields.get("backendtype") or ""
        if not isinstance(backend_type, str):
            raise LeaseFormatError("lease BackendType is not a string")
        return cls(public_ip, public_ipv6, backend_type, fields.get("backenddata"),
                   fields.get("backendv6data"))


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    attrs: LeaseAttrs
    ipv6_subnet: IPv6Network | None = None
    expiration: float | None = None  # unix time; None when unknown
    etcd_lease_id: int = field(default=0, compare=False)

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)

    def snapshot_json(self) -> dict[str, Any]:
        """The value as stored, and for a dual-stack lease the IPv6 half of its key as
        "IPv6Subnet" (a snapshot is keyed by the IPv4 subnet alone)."""
        value = json.loads(self.attrs.to_json())
        if self.ipv6_subnet is not None:
            value["IPv6Subnet"] = str(self.ipv6_subnet)
        return value


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """`10.1.15.0-24`, or `10.1.15.0-24&fd00:12:13::-56` in dual stack."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(name: str) -> tuple[IPv4Network, IPv6Network | None]:
    """The subnet(s) a lease key names; `name` is the key below `<prefix>/subnets/`.

    LeaseFormatError unless `name` is exactly flannel's key for those subnets: no path
    segments, no leading zeros, no host bits, nothing before or after.
    """
    match = KEY_RE.fullmatch(name)
    if not match:
        raise LeaseFormatError(f"not a subnet key: {name!r}", MALFORMED_KEY)
    try:
        subnet = IPv4Network(f"{match[1]}/{int(match[2])}")
        ipv6 = IPv6Network(f"{match[3]}/{int(match[4])}") if match[3] else None
    except ValueError as exc:
        raise LeaseFormatError(f"not a subnet key: {name!r} ({exc})", MALFORMED_KEY) from None
    if subnet_key(subnet, ipv6) != name:
        raise LeaseFormatError(f"{name!r} is not how flannel writes the key of {subnet}"
                               f" (that is {subnet_key(subnet, ipv6)!r})", KEY_NOT_CANONICAL)
    return subnet, ipv6


def parse_vtep_mac(text: str) -> bytes:
    """A lease's VtepMAC ('7e:81:33:71:e9:51', or with dashes, as Go's net.ParseMAC) as bytes."""
    if not isinstance(text, str) or not MAC_RE.fullmatch(text):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes.fromhex(text.replace(":", "").replace("-", ""))


def parse_subnet_cidr(text: str) -> IPv4Network:
    """The subnet in snapshot keys and CLI flags: `10.1.15.0/24` or the etcd form `10.1.15.0-24`."""
    text = text.strip()
    if "/" not in text and "-" in text:
        return parse_subnet_key(text)[0]
    return IPv4Network(text, strict=False)
