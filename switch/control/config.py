"""flannel's network config (`<prefix>/config`): parsing, defaults and validation.

Mirrors flannel's pkg/subnet/config.go: the same defaults, the same error texts (so operators can
search them), JSON keys matched case-insensitively as Go's encoding/json does, unknown keys ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from weft.control.json_object import json_object


class ConfigError(ValueError):
    """The network config is invalid; the message is flannel's where flannel has one."""


_FIELDS = {
    name.lower(): name
    for name in (
        "Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6",
        "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "Backend",
    )
}


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network | None
    subnet_len: int
    subnet_min: IPv4Address | None
    subnet_max: IPv4Address | None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    backend_type: str = "udp"
    backend: dict[str, Any] = field(default_factory=dict)  # the Backend object, options included

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A Backend option by case-insensitive name (flannel decodes them with encoding/json)."""
        for key, value in self.backend.items():
            if key.lower() == name.lower():
                return value
        return default

    def to_json(self) -> dict[str, Any]:
        """The config with flannel's defaults filled in, in flannel's field names."""
        out: dict[str, Any] = {}
        if self.network is not None:
            out["Network"] = str(self.network)
            out["SubnetLen"] = self.subnet_len
            out["SubnetMin"] = str(self.subnet_min)
            out["SubnetMax"] = str(self.subnet_max)
        out["EnableIPv4"] = self.enable_ipv4
        out["EnableIPv6"] = self.enable_ipv6
        if self.ipv6_network is not None:
            out["IPv6Network"] = str(self.ipv6_network)
            out["IPv6SubnetLen"] = self.ipv6_subnet_len
            out["IPv6SubnetMin"] = str(self.ipv6_subnet_min)
            out["IPv6SubnetMax"] = str(self.ipv6_subnet_max)
        out["Backend"] = self.backend or {"Type": self.backend_type}
        return out

    def subnets(self) -> range:
        """Subnet numbers (offsets from the network, in subnets) from SubnetMin to SubnetMax."""
        assert self.network is not None and self.subnet_min and self.subnet_max
        base = int(self.network.network_address)
        shift = 32 - self.subnet_len
        first = (int(self.subnet_min) - base) >> shift
        return range(first, ((int(self.subnet_max) - base) >> shift) + 1)

    def subnet_at(self, number: int) -> IPv4Network:
        assert self.network is not None
        base = int(self.network.network_address) + (number << (32 - self.subnet_len))
        return IPv4Network((base, self.subnet_len))


def parse_config(text: str | bytes) -> NetworkConfig:
    """Parse and validate a flannel network config; raise ConfigError with flannel's message."""
    raw = json_object(text, ConfigError, "invalid JSON in network config",
                      "network config must be a JSON object")
    fields: dict[str, Any] = {}
    for key, value in raw.items():
        name = _FIELDS.get(str(key).lower())
        if name is not None:  # Go keeps the last of several case variants; so do we
            fields[name] = value

    enable_ipv4 = _bool(fields, "EnableIPv4", True)
    enable_ipv6 = _bool(fields, "EnableIPv6", False)
    network = subnet_min = subnet_max = None
    subnet_len = 0
    if enable_ipv4:
        network = _network(fields, _V4)
        subnet_len, subnet_min, subnet_max = _subnets(network, fields, _V4)
    ipv6_network = ipv6_min = ipv6_max = None
    ipv6_len = 0
    if enable_ipv6:
        ipv6_network = _network(fields, _V6)
        ipv6_len, ipv6_min, ipv6_max = _subnets(ipv6_network, fields, _V6)
    backend_type, backend = _backend(fields.get("Backend"))
    return NetworkConfig(
        network=network, subnet_len=subnet_len, subnet_min=subnet_min, subnet_max=subnet_max,
        enable_ipv4=enable_ipv4, enable_ipv6=enable_ipv6, ipv6_network=ipv6_network,
        ipv6_subnet_len=ipv6_len, ipv6_subnet_min=ipv6_min, ipv6_subnet_max=ipv6_max,
        backend_type=backend_type, backend=backend,
    )


def _bool(fields: dict[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, not {_shown(value)}")
    return value


def _int(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, not {_shown(value)}")
    return value


def _network(fields: dict[str, Any], family: _Family) -> IPv4Network | IPv6Network:
    """Network (or IPv6Network), host bits allowed, or ConfigError with flannel's words."""
    name = f"{family.prefix}Network"
    value = fields.get(name)
    if value in (None, ""):
        raise ConfigError(f"please define a correct {name} parameter in the flannel config")
    try:
        return family.network(str(value), strict=False)
    except ValueError:
        raise ConfigError(
            f"invalid {name} {_shown(value)}: expected an {family.name} CIDR such as "
            f"{family.example}"
        ) from None


def _address(fields: dict[str, Any], name: str, kind: type) -> Any:
    value = fields.get(name)
    if value in (None, ""):
        return None
    try:
        return kind(str(value))
    except ValueError:
        raise ConfigError(f"invalid {name} {_shown(value)}: expected an address") from None


@dataclass(frozen=True)
class _Family:
    """flannel's per-family subnet rules: same logic, different widths and words."""

    prefix: str  # "" or "IPv6": field names are <prefix>Network, <prefix>SubnetLen, ...
    name: str  # "IPv4" or "IPv6", for messages
    network: type[IPv4Network] | type[IPv6Network]
    example: str  # a network to show in the message for a bad one
    bits: int  # 32 or 128
    default_len: int  # the subnet each host gets when the network is big enough
    too_small: str  # flannel's message when the network is too small to split


_V4 = _Family("", "IPv4", IPv4Network, "10.1.0.0/16", 32, 24,
              "network is too small. Minimum useful network prefix is /28")
_V6 = _Family("IPv6", "IPv6", IPv6Network, "fd00::/48", 128, 64,
              "IPv6Network is too small. Minimum useful network prefix is /124")


def _subnets(network, fields: dict[str, Any], family: _Family):
    """SubnetLen/SubnetMin/SubnetMax (or the IPv6 ones) with flannel's defaults and checks."""
    subnet_len = _int(fields, f"{family.prefix}SubnetLen")
    if subnet_len > 0:
        # Each host needs room for a tunnel and a bridge address.
        if subnet_len > family.bits - 2:
            raise ConfigError(f"SubnetLen must be less than /{family.bits - 1}")
        # The first subnet is never handed out, so the network must split into four or more.
        if subnet_len < network.prefixlen + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    elif network.prefixlen > family.bits - 4:
        raise ConfigError(family.too_small)
    elif network.prefixlen <= family.default_len - 2:
        subnet_len = family.default_len
    else:
        subnet_len = network.prefixlen + 2
    size = 1 << (family.bits - subnet_len)
    kind = type(network.network_address)
    low = _address(fields, f"{family.prefix}SubnetMin", kind)
    high = _address(fields, f"{family.prefix}SubnetMax", kind)
    low, high = _range(network, size, low, high, f"{family.prefix}Subnet")
    return subnet_len, low, high


def _range(network, size: int, low, high, label: str):
    """Default and check SubnetMin/SubnetMax as flannel does (first subnet skipped)."""
    kind = type(network.network_address)
    if low is None:
        low = kind(int(network.network_address) + size)
    elif low not in network:
        raise ConfigError(f"{label}Min is not in the range of the Network")
    if high is None:
        high = kind(int(network.broadcast_address) + 1 - size)
    elif high not in network:
        raise ConfigError(f"{label}Max is not in the range of the Network")
    if int(low) % size:
        raise ConfigError(f"{label}Min is not on a SubnetLen boundary: {low}")
    if int(high) % size:
        raise ConfigError(f"{label}Max is not on a SubnetLen boundary: {high}")
    return low, high


def _backend(value: Any) -> tuple[str, dict[str, Any]]:
    if value is None:
        return "udp", {}  # flannel's code default, whatever its docs say
    if not isinstance(value, dict):
        raise ConfigError(f"error decoding Backend property of config: {_shown(value)}")
    backend_type = ""
    for key, item in value.items():
        if key.lower() == "type":
            backend_type = item
    if not isinstance(backend_type, str):
        raise ConfigError(f"unknown backend type: {backend_type}")
    backend_type = backend_type.lower()
    _check_options(backend_type, value)
    return backend_type, value


# The numeric Backend options of the userspace backends: (lowest, highest) when set. 0 or null
# means the default (VNI 1, the backend's port, the external interface's MTU less the overhead).
# flannel decodes them into Go ints and only the kernel refuses a VNI past 24 bits when it
# creates the device; weft checks them here so `weft config put` refuses what no host could run.
_OPTION_RANGES = {
    "VNI": (1, (1 << 24) - 1),  # the VXLAN network identifier is 24 bits (RFC 7348)
    "Port": (1, 65535),
    "MTU": (68, 65535),  # RFC 791's minimum; a TUN/TAP takes no more than 65535
}
_BACKEND_OPTIONS = {"vxlan": ("VNI", "Port", "MTU"), "udp": ("Port", "MTU")}


def _check_options(backend_type: str, backend: dict[str, Any]) -> None:
    """Refuse a VNI, Port or MTU of the wrong type or out of range, in flannel's words.

    Every case variant of a key is checked: encoding/json takes the last one, backend_option
    the first, and both must be valid.
    """
    names = {name.lower(): name for name in _BACKEND_OPTIONS.get(backend_type, ())}
    for key, value in backend.items():
        name = names.get(str(key).lower())
        if name is None or value is None:
            continue
        where = f"error decoding {backend_type.upper()} backend config"
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {name} must be an integer, not {_shown(value)}")
        low, high = _OPTION_RANGES[name]
        if value != 0 and not low <= value <= high:
            raise ConfigError(f"{where}: {name} {_shown(value)} is out of range: {low} to {high} "
                              f"(0 or null for the default)")


def _shown(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut short: the config may hold megabytes of it."""
    try:
        text = json.dumps(value)
    except ValueError:  # an integer past Python's digit limit for str()
        text = "a number too long to show"
    return text if len(text) <= limit else text[:limit] + "..."
