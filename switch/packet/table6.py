"""The IPv6 half's peer table and config as numpy arrays, the form the fastpath6 kernels read.

flannel's IPv6 subnets (IPv6SubnetLen, 64 by default) are numbered inside IPv6Network as IPv4
subnets are inside Network, so the lookup stays O(1): the subnet number lies in the upper 64
bits of an address (subnet lengths up to 64 only, which weft checks at start), and kernels read
those as two 32-bit words, `hi`, `lo`, so nothing overflows int64:
`idx = ((hi & ~mask_hi) << 32 | (lo & ~mask_lo)) >> (64 - subnet_len)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Network

import numpy as np

from weft.packet.table import mac_to_int

# Indices into DatapathConfig6.cfg (int64).
CFG6_NET_HI = 0  # network address, bits 0-31 (host order)
CFG6_NET_LO = 1  # bits 32-63
CFG6_MASK_HI = 2  # network mask over the same two words
CFG6_MASK_LO = 3
CFG6_SUBNET_SHIFT = 4  # 64 - subnet_len: offset in the upper 64 bits >> shift = subnet number
CFG6_LOCAL_INDEX = 5  # our subnet number, -1 until set_local()
CFG6_VNI = 6
CFG6_PORT = 7
CFG6_LOCAL_VTEP_MAC = 8  # the v6 device's VtepMAC as a 48-bit integer
CFG6_MTU = 9  # the v6 device's MTU: largest inner IPv6 packet carried
CFG6_SIZE = 16

MAX_SUBNET_LEN = 64  # the subnet number must lie in the upper 64 bits
MAX_SUBNETS = 1 << 20  # table arrays beyond this would cost more memory than they are worth


def check_layout(network: IPv6Network, subnet_len: int) -> None:
    """ValueError unless the IPv6 table can number this network's subnets."""
    if not 1 <= network.prefixlen <= subnet_len <= MAX_SUBNET_LEN:
        raise ValueError(f"IPv6SubnetLen {subnet_len} with IPv6Network {network}: weft's vxlan "
                         f"needs {network.prefixlen} <= IPv6SubnetLen <= {MAX_SUBNET_LEN}")
    if subnet_len - network.prefixlen > 20:
        raise ValueError(f"IPv6Network {network} holds 2**{subnet_len - network.prefixlen} "
                         f"/{subnet_len} subnets; weft's vxlan numbers at most 2**20")


def _words(address: int) -> tuple[int, int]:
    """The two 32-bit words of an address's upper 64 bits."""
    return (address >> 96) & 0xFFFFFFFF, (address >> 64) & 0xFFFFFFFF


class PeerTable6:
    """Remote IPv6 subnets -> (PublicIPv6, v6 VtepMAC), indexed by subnet number.

    Arrays read by the kernels: `present`, `public_ip6` (16 bytes a row), `vtep_mac`.
    """

    def __init__(self, network: IPv6Network, subnet_len: int) -> None:
        check_layout(network, subnet_len)
        self.network = network
        self.subnet_len = subnet_len
        self.shift = 128 - subnet_len
        self.size = 1 << (subnet_len - network.prefixlen)
        self._base = int(network.network_address)
        self.present = np.zeros(self.size, dtype=np.uint8)
        self.public_ip6 = np.zeros((self.size, 16), dtype=np.uint8)
        self.vtep_mac = np.zeros((self.size, 6), dtype=np.uint8)

    def index_of(self, ip: int) -> int:
        off = ip - self._base
        if off < 0 or off >= self.size << self.shift:
            return -1
        return off >> self.shift

    def _index(self, subnet: IPv6Network) -> int:
        idx = self.index_of(int(subnet.network_address))
        if subnet.prefixlen != self.subnet_len or idx < 0:
            raise ValueError(f"{subnet} is not a /{self.subnet_len} subnet of {self.network}")
        return idx

    def subnet_at(self, idx: int) -> IPv6Network:
        return IPv6Network((self._base + (idx << self.shift), self.subnet_len))

    def check_peer(self, subnet: IPv6Network, public_ip6: IPv6Address, vtep_mac: bytes) -> int:
        """The slot set_peer would fill, or ValueError saying why it would refuse."""
        idx = self._index(subnet)
        if int(public_ip6) == 0:
            raise ValueError("PublicIPv6 :: cannot be a peer")
        if len(vtep_mac) != 6:
            raise ValueError("VtepMAC must be 6 bytes")
        return idx

    def set_peer(self, subnet: IPv6Network, public_ip6: IPv6Address, vtep_mac: bytes) -> None:
        idx = self.check_peer(subnet, public_ip6, vtep_mac)
        self.public_ip6[idx] = np.frombuffer(public_ip6.packed, dtype=np.uint8)
        self.vtep_mac[idx] = np.frombuffer(vtep_mac, dtype=np.uint8)
        self.present[idx] = 1

    def remove_peer(self, subnet: IPv6Network) -> bool:
        idx = self._index(subnet)
        if not self.present[idx]:
            return False
        self.present[idx] = 0  # first, so a concurrent reader never uses a half-cleared row
        self.public_ip6[idx] = 0
        self.vtep_mac[idx] = 0
        return True

    def peer(self, subnet: IPv6Network) -> tuple[IPv6Address, bytes] | None:
        idx = self._index(subnet)
        return self._entry(idx) if self.present[idx] else None

    def _entry(self, idx: int) -> tuple[IPv6Address, bytes]:
        return IPv6Address(bytes(self.public_ip6[idx])), bytes(self.vtep_mac[idx])

    def peers(self) -> Iterator[tuple[IPv6Network, IPv6Address, bytes]]:
        for idx in np.flatnonzero(self.present):
            yield (self.subnet_at(int(idx)), *self._entry(int(idx)))

    def public_ip6_of(self, idx: int) -> IPv6Address:
        """The PublicIPv6 in slot idx (the egress kernel names peers by slot)."""
        return IPv6Address(bytes(self.public_ip6[idx]))

    def __len__(self) -> int:
        return int(np.count_nonzero(self.present))


class DatapathConfig6:
    """The int64 array `cfg` the fastpath6 kernels take, with readable setters."""

    def __init__(self, network: IPv6Network, subnet_len: int, *, vni: int, port: int,
                 mtu: int) -> None:
        check_layout(network, subnet_len)
        self.network = network
        self.subnet_len = subnet_len
        self.cfg = np.zeros(CFG6_SIZE, dtype=np.int64)
        mask = int(network.netmask)
        self.cfg[CFG6_NET_HI], self.cfg[CFG6_NET_LO] = _words(int(network.network_address))
        self.cfg[CFG6_MASK_HI], self.cfg[CFG6_MASK_LO] = _words(mask)
        self.cfg[CFG6_SUBNET_SHIFT] = 64 - subnet_len
        self.cfg[CFG6_LOCAL_INDEX] = -1
        if not 0 <= vni < 1 << 24 or not 0 < port < 1 << 16:
            raise ValueError(f"bad VNI {vni} or port {port}")
        self.cfg[CFG6_VNI] = vni
        self.cfg[CFG6_PORT] = port
        self.cfg[CFG6_MTU] = mtu

    def set_local(self, subnet: IPv6Network, vtep_mac: bytes) -> None:
        if subnet.prefixlen != self.subnet_len or not subnet.subnet_of(self.network):
            raise ValueError(f"{subnet} is not a /{self.subnet_len} subnet of {self.network}")
        off = int(subnet.network_address) - int(self.network.network_address)
        self.cfg[CFG6_LOCAL_INDEX] = off >> (128 - self.subnet_len)
        self.cfg[CFG6_LOCAL_VTEP_MAC] = mac_to_int(vtep_mac)
