"""flannel's subnet file (default /run/flannel/subnet.env), read by flannel's CNI plugin."""

from __future__ import annotations

import os
import tempfile
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from weft.control.config import NetworkConfig
from weft.control.lease import Lease

DEFAULT_PATH = "/run/flannel/subnet.env"


def render(config: NetworkConfig, lease: Lease, mtu: int, ip_masq: bool) -> str:
    """The file's text, in flannel's variable order (WriteSubnetFile): each family's network
    and subnet, then MTU and IPMASQ."""
    lines = []
    if config.network is not None:
        lines.append(f"FLANNEL_NETWORK={config.network}")
        # The subnet's first address with its prefix: what the CNI bridge takes as gateway.
        first = IPv4Interface((int(lease.subnet.network_address) + 1, lease.subnet.prefixlen))
        lines.append(f"FLANNEL_SUBNET={first}")
    if config.enable_ipv6 and lease.ipv6_subnet is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={config.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={lease.ipv6_subnet.network_address + 1}"
                     f"/{lease.ipv6_subnet.prefixlen}")
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "\n".join(lines) + "\n"


def write(path: str | Path, text: str) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_previous_subnet(path: str | Path) -> IPv4Network | None:
    """FLANNEL_SUBNET of an earlier run (10.1.15.1/24 -> 10.1.15.0/24), if the file exists."""
    return read_previous_subnets(path)[0]


def read_previous_subnets(path: str | Path) -> tuple[IPv4Network | None, IPv6Network | None]:
    """FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET of an earlier run, as networks (None if absent)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None, None
    values = {name.strip(): value.strip() for name, _, value in
              (line.partition("=") for line in text.splitlines())}
    v4 = v6 = None
    try:
        v4 = IPv4Interface(values["FLANNEL_SUBNET"]).network
    except (KeyError, ValueError):
        pass
    try:
        v6 = IPv6Interface(values["FLANNEL_IPV6_SUBNET"]).network
    except (KeyError, ValueError):
        pass
    return v4, v6
