"""subnet.env as flannel's CNI plugin reads it: KEY=VALUE lines that `weft run` writes."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network

from weft.cni.errors import DECODING_FAILURE, IO_FAILURE, TRY_AGAIN_LATER, CniError

DEFAULT_PATH = "/run/flannel/subnet.env"
MAX_SIZE = 64 * 1024  # what weft writes is a few hundred bytes


@dataclass(frozen=True)
class SubnetEnv:
    networks: tuple[IPv4Network, ...]
    subnet: IPv4Network | None  # the network of FLANNEL_SUBNET (10.1.15.1/24 -> 10.1.15.0/24)
    ipv6_networks: tuple[IPv6Network, ...]
    ipv6_subnet: IPv6Network | None
    mtu: int
    ip_masq: bool


def parse(text: str, path: str = DEFAULT_PATH) -> SubnetEnv:
    """Parse the file's text; a value that does not parse or a missing key is an error."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    try:
        networks = _networks(values.get("FLANNEL_NETWORK"), 4)
        ipv6_networks = _networks(values.get("FLANNEL_IPV6_NETWORK"), 6)
        subnet = _subnet(values.get("FLANNEL_SUBNET"), 4)
        ipv6_subnet = _subnet(values.get("FLANNEL_IPV6_SUBNET"), 6)
        mtu = int(values["FLANNEL_MTU"]) if "FLANNEL_MTU" in values else None
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"{path}: {exc}; is it the file `weft run` "
                                         f"--subnet-file writes?") from None
    missing = []
    if not networks and not ipv6_networks:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if subnet is None and ipv6_subnet is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if "FLANNEL_IPMASQ" not in values:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise CniError(DECODING_FAILURE, f"{path} is missing {', '.join(missing)}")
    return SubnetEnv(networks, subnet, ipv6_networks, ipv6_subnet, mtu,
                     values["FLANNEL_IPMASQ"] == "true")  # flannel: true only if exactly "true"


def load(path: str = DEFAULT_PATH) -> SubnetEnv:
    """Read and parse the file. Missing means weft has no lease yet: try again later."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIZE + 1)  # not all of it: a conf may name /dev/zero
    except FileNotFoundError:
        raise CniError(TRY_AGAIN_LATER,
                       f"{path} does not exist: is `weft run` running on this host and holding "
                       f"a lease? (conf key subnetFile must match weft run --subnet-file)"
                       ) from None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_SIZE:
        raise CniError(DECODING_FAILURE, f"{path} is larger than {MAX_SIZE} bytes: is it the "
                                         f"file `weft run` --subnet-file writes?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CniError(DECODING_FAILURE, f"{path} is not UTF-8 text ({exc.reason} at byte "
                                         f"{exc.start})") from None
    return parse(text, path)


def _networks(value: str | None, version: int) -> tuple:
    if not value:
        return ()
    return tuple(_net(part.strip(), version) for part in value.split(",") if part.strip())


def _subnet(value: str | None, version: int):
    return _net(value, version, host_bits=True) if value else None


def _net(text: str, version: int, host_bits: bool = False):
    # FLANNEL_SUBNET carries the gateway address (10.1.15.1/24): keep its network.
    net = ip_interface(text).network if host_bits else ip_network(text)
    if net.version != version:
        raise ValueError(f"{text} is not an IPv{version} network")
    return net
