"""Peer table and datapath configuration as numpy arrays, the form the numba kernels read.

The control plane owns these objects and mutates them between batches; the kernels receive the
arrays as arguments on every call, so a table update never forces a recompile. Everything is
indexed by subnet number, `idx = (ip - network) >> (32 - subnet_len)`, which makes the per-packet
lookup one shift and one array read.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import numpy as np

from weft.packet.encap import DEFAULT_VNI, VXLAN

# Indices into DatapathConfig.cfg (int64). Kernels index the array with these names.
CFG_NETWORK = 0  # cluster network address, host-order u32
CFG_NETMASK = 1  # cluster network mask, host-order u32
CFG_SUBNET_SHIFT = 2  # 32 - subnet_len: ip offset >> shift = subnet number
CFG_LOCAL_INDEX = 3  # our own subnet number, -1 until set_local()
CFG_LOCAL_PUBLIC_IP = 4  # our PublicIP, host-order u32 (outer source address)
CFG_VNI = 5  # VXLAN network identifier (24 bit)
CFG_PORT = 6  # UDP port of the backend (its Port option, else Encap.default_port)
CFG_LOCAL_VTEP_MAC = 7  # our VtepMAC as a 48-bit integer
CFG_MTU = 8  # overlay MTU: largest inner IPv4 packet sent with DF
CFG_N_SUBNETS = 9  # number of subnet slots (size of the table arrays)
CFG_SIZE = 16  # room for later fields without changing kernel signatures

_HASH_MULT = 0x45D9F3B  # < 2**27 so ip * mult never overflows int64 in the kernels


def sender_hash(ip: int, mask: int) -> int:
    """Slot of a PublicIP in the sender set (open addressing, linear probing).

    fastpath.py holds an independent numba copy; tests check they agree.
    """
    return (((ip ^ (ip >> 16)) * _HASH_MULT) & 0xFFFFFFFF) >> 8 & mask


def mac_to_int(mac: bytes) -> int:
    return int.from_bytes(mac, "big")


def parse_mac(text: str) -> bytes:
    """'7e:81:33:71:e9:51' -> 6 bytes (the VtepMAC format in flannel leases)."""
    raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {text!r}")
    return raw


class PeerTable:
    """Remote subnets -> (PublicIP, VtepMAC), plus a hash set of every peer PublicIP.

    Arrays read by the kernels: `present`, `public_ip`, `vtep_mac`, `sender_keys`.
    A zero VtepMAC means the lease carried none (udp backend). The table follows what the
    backend programs (backends/peers.py); who is a peer is decided by PeerSync, not here.
    """

    def __init__(self, network: IPv4Network, subnet_len: int) -> None:
        if not network.prefixlen <= subnet_len <= 32:
            raise ValueError(f"subnet length {subnet_len} does not fit network {network}")
        self.network = network
        self.subnet_len = subnet_len
        self.shift = 32 - subnet_len
        self.size = 1 << (subnet_len - network.prefixlen)
        self._base = int(network.network_address)
        self.present = np.zeros(self.size, dtype=np.uint8)
        self.public_ip = np.zeros(self.size, dtype=np.uint32)
        self.vtep_mac = np.zeros((self.size, 6), dtype=np.uint8)
        # Sender set: at most one key per subnet, so twice the table size keeps probes short.
        cap = 16
        while cap < 2 * self.size:
            cap <<= 1
        self.sender_keys = np.zeros(cap, dtype=np.uint32)  # 0 = empty slot (0.0.0.0 is no peer)
        self._senders: dict[int, int] = {}  # PublicIP -> number of subnets it holds

    def index_of(self, ip: int) -> int:
        """Subnet number of a host-order address, -1 outside the network."""
        off = ip - self._base
        if off < 0 or off >= self.size << self.shift:
            return -1
        return off >> self.shift

    def _index(self, subnet: IPv4Network) -> int:
        # A /subnet_len whose address lies in the network is a subnet of it: integer checks
        # only (subnet_of costs more than the rest of set_peer, 4,095 times a round).
        idx = self.index_of(int(subnet.network_address))
        if subnet.prefixlen != self.subnet_len or idx < 0:
            raise ValueError(f"{subnet} is not a /{self.subnet_len} subnet of {self.network}")
        return idx

    def subnet_at(self, idx: int) -> IPv4Network:
        return IPv4Network((self._base + (idx << self.shift), self.subnet_len))

    def check_peer(self, subnet: IPv4Network, public_ip: IPv4Address,
                   vtep_mac: bytes | None) -> int:
        """The slot set_peer would fill, or ValueError saying why it would refuse; changes nothing.

        Lets a backend refuse a peer before it programs the kernel for it.
        """
        idx = self._index(subnet)
        if int(public_ip) == 0:
            raise ValueError("PublicIP 0.0.0.0 cannot be a peer")
        if vtep_mac is not None and len(vtep_mac) != 6:
            raise ValueError("VtepMAC must be 6 bytes")
        return idx

    def set_peer(self, subnet: IPv4Network, public_ip: IPv4Address, vtep_mac: bytes | None) -> None:
        """Add or replace the lease of a remote subnet (replace semantics: replays are harmless).

        Refuses (ValueError) before it changes anything, as check_peer says.
        """
        idx = self.check_peer(subnet, public_ip, vtep_mac)
        ip = int(public_ip)
        old_ip = int(self.public_ip[idx]) if self.present[idx] else 0
        self.public_ip[idx] = ip
        self.vtep_mac[idx] = np.frombuffer(vtep_mac or bytes(6), dtype=np.uint8)
        self.present[idx] = 1
        if old_ip != ip:  # a new VtepMAC alone leaves the sender set as it is
            self._add_sender(ip)
            if old_ip:
                self._drop_sender(old_ip)

    def remove_peer(self, subnet: IPv4Network) -> bool:
        """Forget a subnet's lease; False when there was none."""
        idx = self._index(subnet)
        if not self.present[idx]:
            return False
        # Clear presence first so a concurrent reader never sees a half-removed entry as valid.
        self.present[idx] = 0
        self._drop_sender(int(self.public_ip[idx]))
        self.public_ip[idx] = 0
        self.vtep_mac[idx] = 0
        return True

    def peer(self, subnet: IPv4Network) -> tuple[IPv4Address, bytes | None] | None:
        idx = self._index(subnet)
        if not self.present[idx]:
            return None
        return self._entry(idx)

    def _entry(self, idx: int) -> tuple[IPv4Address, bytes | None]:
        mac = bytes(self.vtep_mac[idx])
        return IPv4Address(int(self.public_ip[idx])), (mac if any(mac) else None)

    def peers(self) -> Iterator[tuple[IPv4Network, IPv4Address, bytes | None]]:
        """(subnet, PublicIP, VtepMAC or None) for every current peer, in subnet order."""
        for idx in np.flatnonzero(self.present):
            yield (self.subnet_at(int(idx)), *self._entry(int(idx)))

    def __len__(self) -> int:
        return int(np.count_nonzero(self.present))

    def has_sender(self, ip: int) -> bool:
        """True when `ip` (host order) is the PublicIP of at least one current peer."""
        return ip in self._senders

    def _add_sender(self, ip: int) -> None:
        count = self._senders.get(ip, 0)
        self._senders[ip] = count + 1
        if count == 0:
            self._insert_key(ip)

    def _drop_sender(self, ip: int) -> None:
        count = self._senders.pop(ip, 0)
        if count > 1:
            self._senders[ip] = count - 1
            return
        _delete_key(self.sender_keys, ip)

    def _insert_key(self, ip: int) -> None:
        _insert_key(self.sender_keys, ip)


def _insert_key(keys: np.ndarray, ip: int) -> None:
    mask = len(keys) - 1
    slot = sender_hash(ip, mask)
    while keys[slot] != 0:
        slot = (slot + 1) & mask
    keys[slot] = ip


class DatapathConfig:
    """The small int64 array `cfg` every kernel takes, with readable setters."""

    def __init__(
        self, network: IPv4Network, subnet_len: int, *, vni: int = DEFAULT_VNI,
        port: int = VXLAN.default_port, mtu: int = 1500 - VXLAN.overhead,  # vxlan, 1500 link
    ) -> None:
        self.cfg = np.zeros(CFG_SIZE, dtype=np.int64)
        self.cfg[CFG_NETWORK] = int(network.network_address)
        self.cfg[CFG_NETMASK] = int(network.netmask)
        self.cfg[CFG_SUBNET_SHIFT] = 32 - subnet_len
        self.cfg[CFG_N_SUBNETS] = 1 << (subnet_len - network.prefixlen)
        self.cfg[CFG_LOCAL_INDEX] = -1
        self.network = network
        self.subnet_len = subnet_len
        self.set_backend(vni=vni, port=port, mtu=mtu)

    def set_backend(self, *, vni: int, port: int, mtu: int) -> None:
        if not 0 <= vni < 1 << 24:
            raise ValueError(f"VNI {vni} does not fit 24 bits")
        if not 0 < port < 1 << 16:
            raise ValueError(f"bad port {port}")
        self.cfg[CFG_VNI] = vni
        self.cfg[CFG_PORT] = port
        self.cfg[CFG_MTU] = mtu

    def set_local(
        self, subnet: IPv4Network, public_ip: IPv4Address, vtep_mac: bytes | None = None
    ) -> None:
        """Our lease: which subnet is local, the outer source address and our VtepMAC."""
        if subnet.prefixlen != self.subnet_len or not subnet.subnet_of(self.network):
            raise ValueError(f"{subnet} is not a /{self.subnet_len} subnet of {self.network}")
        off = int(subnet.network_address) - int(self.network.network_address)
        self.cfg[CFG_LOCAL_INDEX] = off >> (32 - self.subnet_len)
        self.cfg[CFG_LOCAL_PUBLIC_IP] = int(public_ip)
        self.cfg[CFG_LOCAL_VTEP_MAC] = mac_to_int(vtep_mac) if vtep_mac else 0


def _delete_key(keys: np.ndarray, ip: int) -> None:
    """Remove `ip` by shifting later keys of its probe run back (no tombstones, no rebuild).

    Each moved key is written to its new slot before its old slot is reused or blanked, so a
    kernel probing concurrently may see a key twice for a moment but never misses one.
    """
    mask = len(keys) - 1
    hole = sender_hash(ip, mask)
    while keys[hole] != ip:
        if keys[hole] == 0:
            return
        hole = (hole + 1) & mask
    probe = hole
    while True:
        probe = (probe + 1) & mask
        key = int(keys[probe])
        if key == 0:
            break
        home = sender_hash(key, mask)
        # `key` may fill the hole unless its home lies cyclically in (hole, probe].
        if (home - hole - 1) & mask >= (probe - hole) & mask:
            keys[hole] = key
            hole = probe
    keys[hole] = 0
