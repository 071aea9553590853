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

KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


class LeaseFormatError(ValueError):
    """A key or value in etcd that is not a flannel lease."""


@dataclass(frozen=True)
class LeaseAttrs:
    """What a host publishes about itself: how to reach its subnet."""

    public_ip: IPv4Address
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""  # "" as flannel's udp backend writes no BackendType
    backend_data: Any = None  # decoded BackendData JSON, key order preserved

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
        return cls(public_ip, public_ipv6, backend_type, fields.get("backenddata"))


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
        return json.loads(self.attrs.to_json())


def subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """`10.1.15.0-24`, or `10.1.15.0-24&fd00:12:13::-56` in dual stack."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """The subnet(s) named by a lease key (last path element); LeaseFormatError if it is not one."""
    match = KEY_RE.match(key.rsplit("/", 1)[-1])
    if not match:
        raise LeaseFormatError(f"not a subnet key: {key!r}")
    try:
        subnet = IPv4Network(f"{match[1]}/{match[2]}")
        ipv6 = IPv6Network(f"{match[3]}/{match[4]}") if match[3] else None
    except ValueError as exc:
        raise LeaseFormatError(f"not a subnet key: {key!r} ({exc})") from None
    return subnet, ipv6


def parse_subnet_cidr(text: str) -> IPv4Network:
    """The subnet in snapshot keys and CLI flags: `10.1.15.0/24` or the etcd form `10.1.15.0-24`."""
    text = text.strip()
    if "/" not in text and "-" in text:
        return parse_subnet_key(text)[0]
    return IPv4Network(text, strict=False)
