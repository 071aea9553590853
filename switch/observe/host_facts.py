"""`weft doctor`'s readers of the host: sysctls, links, offloads and the filter table.

Only reading: /proc/sys files, netlink dumps (pyroute2), the ethtool ioctl and `iptables-save`
(through weft.host.iptables, the one place weft runs iptables). No `ip`, `ethtool` or
`sysctl` processes. Each reader returns None (or an error text) for what it cannot read, so
one missing piece never stops the other checks. Everything reads the caller's network
namespace, which is how the tests point doctor at a lab host.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from weft.host.iptables import Iptables, IptablesError
from weft.host.rtnl import RTPROT_RA

PROC_SYS = Path("/proc/sys")


def sysctl(key: str) -> int | None:
    """An integer sysctl such as net.ipv4.ip_forward; None when absent or unreadable."""
    try:
        path = key if "/" in key else key.replace(".", "/")
        return int((PROC_SYS / path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def conf_key(device: str, name: str, ipv: str = "ipv4") -> str:
    # Device names may hold dots (weft.1, flannel.1); sysctl's dotted form would split them,
    # so the path is built from parts. `ipv`: "ipv6" for net.ipv6.conf.<device>.<name>.
    return f"net/{ipv}/conf/{device}/{name}"


def ipv6_default_from_ra() -> bool | None:
    """Whether the main table's IPv6 default route was learnt from a router advertisement;
    None when the routes cannot be read."""
    try:
        with IPRoute() as ipr:
            routes = ipr.get_routes(family=socket.AF_INET6, table=254)
    except OSError:
        return None
    return any(r["dst_len"] == 0 and r["proto"] == RTPROT_RA for r in routes)


def br_netfilter_present() -> bool:
    """br_netfilter (module or built in) shows /proc/sys/net/bridge in every namespace."""
    return (PROC_SYS / "net" / "bridge").is_dir()


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str  # "vxlan", "tun", "veth", "" ...
    mtu: int


def links() -> dict[str, Link]:
    """Every link of this namespace by name (one netlink dump)."""
    out = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            name = msg.get_attr("IFLA_IFNAME")
            out[name] = Link(name, msg["index"], kind or "", msg.get_attr("IFLA_MTU"))
    return out


def filter_table(version: int = 4) -> tuple[str | None, str | None]:
    """(iptables-save -t filter text, None), or (None, why it could not be read);
    `version` 6: ip6tables-save's."""
    try:
        return Iptables(version).save("filter"), None
    except IptablesError as exc:
        return None, str(exc)


# -- the ethtool ioctl: features by name, as `ethtool -k` shows them ---------------------------

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16  # legacy: any TX checksum offload on
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
TX_CSUM_GENERIC = "tx-checksum-ip-generic"  # NETIF_F_HW_CSUM, what a vxlan device offers


def _ethtool(sock: socket.socket, ifname: str, buf: bytearray) -> None:
    """One SIOCETHTOOL ioctl; the kernel reads the command from `buf` and writes into it."""
    address = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    # struct ifreq: 16 bytes of name, then a pointer to the command's buffer
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, struct.pack("16sP", ifname.encode(), address))


def feature(ifname: str, name: str = TX_CSUM_GENERIC) -> bool | None:
    """Whether feature `name` is active on `ifname` (ETHTOOL_GFEATURES, looked up by the name
    in the ETH_SS_FEATURES string set); falls back to the legacy ETHTOOL_GTXCSUM for the TX
    checksum when the string set is not offered. None when the device cannot be asked."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                return _gfeatures(sock, ifname, name)
            except (OSError, LookupError):
                if name != TX_CSUM_GENERIC:
                    raise
            raw = bytearray(struct.pack("II", ETHTOOL_GTXCSUM, 0))  # struct ethtool_value
            _ethtool(sock, ifname, raw)
            return struct.unpack("II", raw)[1] != 0
    except (OSError, LookupError):
        return None


def _gfeatures(sock: socket.socket, ifname: str, name: str) -> bool:
    # struct ethtool_sset_info {u32 cmd; u32 reserved; u64 sset_mask; u32 data[1]}
    info = bytearray(struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
    _ethtool(sock, ifname, info)
    count = struct.unpack_from("I", info, 16)[0]
    # struct ethtool_gstrings {u32 cmd; u32 string_set; u32 len; u8 data[len * 32]}
    strings = bytearray(struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                        + bytes(count * ETH_GSTRING_LEN))
    _ethtool(sock, ifname, strings)
    names = [strings[12 + i * ETH_GSTRING_LEN:12 + (i + 1) * ETH_GSTRING_LEN]
             .split(b"\0", 1)[0].decode() for i in range(count)]
    if name not in names:
        raise LookupError(f"{ifname} offers no feature {name}")
    bit = names.index(name)
    blocks = (count + 31) // 32
    # struct ethtool_gfeatures {u32 cmd; u32 size; {u32 available, requested, active,
    # never_changed} features[size]}
    feats = bytearray(struct.pack("II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks))
    _ethtool(sock, ifname, feats)
    active = struct.unpack_from("I", feats, 8 + 16 * (bit // 32) + 8)[0]
    return bool(active & (1 << (bit % 32)))
