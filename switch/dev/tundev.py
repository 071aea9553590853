"""TUN/TAP with the virtio-net header and TSO, with a plain fallback.

With IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4) the kernel hands a TCP flow to us as super-frames
of up to 64 KiB behind a 10-byte virtio_net_hdr (weft.packet.offload.vnet_hdr), one read per ~45
packets instead of one each: past ~0.3 Mpps the cost is system calls per packet, not the packet
work. A kernel or device that refuses either step gets the plain device (no header, MTU-sized
frames) and the reason, so the daemon always comes up.

The device is persistent, so a restarted daemon keeps its MAC and
routes. Linux re-reads IFF_VNET_HDR on every TUNSETIFF of an existing device, so a device made
in one mode reattaches in the other; but the offloads set by TUNSETOFFLOAD stay on the device
after its owner exits. A plain reopen therefore clears them (TUNSETOFFLOAD 0), or the kernel would
keep sending 64 KiB GSO frames to a reader that has no header to learn their segment size from.
Only a device of the wrong type (TUN where a TAP is wanted, or a multiqueue one) refuses the
reattach; that one is deleted and made again.

The compiled loop (switch/drivers/compiled_loops.py) does the reads and writes itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from dataclasses import dataclass

import pytun

from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HLEN,
    IPV4_VER_IHL,
    TCP_ACK,
    TCP_CSUM_AT,
    TCP_HLEN,
    UDP_HLEN,
    VXLAN_ENCAP,
    VXLAN_HLEN,
)
from weft.packet.offload.vnet_hdr import (
    GSO_TCPV4,
    GSO_UDP_TUNNEL_IPV4,
    TNL_HDR_LEN,
    VNET_F_NEEDS_CSUM,
    VnetHdr,
    tunnel_header,
)

log = logging.getLogger(__name__)

TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4

TUNGETIFF = 0x800454D2
_IFF_TYPE = pytun.IFF_TUN | pytun.IFF_TAP

OFFLOAD = "offload"
PLAIN = "plain"


class Mode(str):
    """"offload" or "plain", compared as a string; `.reason` says why plain was chosen."""

    reason: str

    def __new__(cls, value: str, reason: str = "") -> Mode:
        mode = super().__new__(cls, value)
        mode.reason = reason
        return mode


def _tun_kind(name: str) -> str | None:
    """The rtnetlink kind of an existing link ("tun" for TUN and TAP), None if absent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        link = ipr.get_links(idx[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else ""


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def _attach(name: str, flags: int) -> pytun.TunTapDevice:
    """TUNSETIFF, replacing a leftover TUN/TAP of the wrong type (never another kind of link)."""
    try:
        return pytun.TunTapDevice(name=name, flags=flags)
    except pytun.Error as exc:
        if _tun_kind(name) != "tun":
            raise
        log.warning("device %s exists with other TUN/TAP flags (%s); recreating it", name, exc)
        _delete_link(name)
        return pytun.TunTapDevice(name=name, flags=flags)


def open_device(name: str, tap: bool, offload: bool = True,
                offloads: int = DEFAULT_OFFLOADS) -> tuple[pytun.TunTapDevice, Mode]:
    """Open (creating if needed) persistent TUN/TAP `name`; returns (device, mode).

    mode == "offload": every read and write carries a 10-byte virtio_net_hdr and reads may be
    TSO super-frames (up to 64 KiB + header; size the buffers for it). mode == "plain": no
    header, frames of at most the MTU; mode.reason says why offload was not used.
    """
    base = (pytun.IFF_TAP if tap else pytun.IFF_TUN) | pytun.IFF_NO_PI
    reason = "offload not requested"
    if offload:
        try:
            device = _attach(name, base | IFF_VNET_HDR)
        except (pytun.Error, OSError) as exc:
            reason = f"IFF_VNET_HDR refused: {exc}"
        else:
            try:
                fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, offloads)
            except OSError as exc:
                reason = f"TUNSETOFFLOAD {offloads:#x} refused: {exc.strerror}"
                device.close()
            else:
                device.persist(True)
                return device, Mode(OFFLOAD)
        log.warning("device %s: plain mode, %s", name, reason)
    device = _attach(name, base)
    try:
        # Clear offloads a previous offload-mode owner left on the persistent device.
        fcntl.ioctl(device.fileno(), TUNSETOFFLOAD, 0)
    except OSError as exc:
        log.debug("device %s: clearing offloads failed: %s", name, exc)
    device.persist(True)
    return device, Mode(PLAIN, reason)


class AdoptionRefused(ValueError):
    """A passed descriptor is not the device it is named for."""


class AdoptedDevice:
    """A TUN/TAP descriptor passed from the previous `weft run` (weft.dev.handover), offering
    what the daemon uses of pytun's device object: fileno() and close()."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def adopt_device(fd: int, name: str, tap: bool, offload: bool = True) -> tuple[AdoptedDevice, Mode]:
    """Check that passed descriptor `fd` is attached to TUN/TAP `name` of the wanted type and
    take it; its mode is the one it was opened in. Raises AdoptionRefused (the caller closes
    `fd` and opens the device anew): a device deleted since (the descriptor no longer reaches
    it), another name, TUN for TAP, packet info on, or an offload device when offload is off."""
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    except OSError as exc:
        raise AdoptionRefused(f"not attached to a TUN/TAP ({exc.strerror})") from None
    got = ifr[:16].split(b"\0", 1)[0].decode(errors="replace")
    flags = struct.unpack_from("=H", ifr, 16)[0]
    want = pytun.IFF_TAP if tap else pytun.IFF_TUN
    if got != name:
        raise AdoptionRefused(f"attached to {got!r}, not {name!r}")
    if flags & _IFF_TYPE != want or not flags & pytun.IFF_NO_PI:
        raise AdoptionRefused(f"{name} has flags {flags:#x}, wanted {'TAP' if tap else 'TUN'} "
                              f"without packet info")
    vnet = bool(flags & IFF_VNET_HDR)
    if vnet and not offload:
        raise AdoptionRefused(f"{name} was opened for offload, which is not wanted now")
    return AdoptedDevice(fd, name), Mode(OFFLOAD) if vnet else Mode(PLAIN, "passed in plain")


# ---- the TX TAP: UDP-tunnel GSO frames into the host's routing ----------------------------------

_PROC_IPV4 = "/proc/sys/net/ipv4"


@dataclass
class TunnelTx:
    """The TX TAP of open_tunnel_tx: fd -1 and `reason` when tunnel GSO cannot be used."""

    fd: int = -1
    mac: int = 0
    name: str = ""
    reason: str = ""
    device: pytun.TunTapDevice | None = None

    def close(self) -> None:
        if self.device is not None:
            self.device.close()  # not persistent: the device goes with the fd
            self.device = None
        self.fd = -1


def tunnel_tx_name(device: str) -> str:
    return (device[:13] + "tx")[:15]


def _sysctl(path: str, value: int | None = None) -> int:
    with open(f"{_PROC_IPV4}/{path}", "r+" if value is not None else "r") as f:
        if value is not None:
            f.write(str(value))
            f.flush()
            f.seek(0)
        return int(f.read().split()[0])


def _probe_frame() -> bytes:
    """A tiny tunnel-GSO frame to a MAC that is not the TAP's: tun must parse its header (an
    older kernel refuses the gso_type with EINVAL), and the host drops it unrouted (not ours)."""
    inner_tcp = struct.pack("!HHIIBBHHH", 9, 9, 0, 0, (TCP_HLEN // 4) << 4, TCP_ACK, 0, 0, 0)
    payload = bytes(200)
    inner_ip = struct.pack("!BBHHHBBHII", IPV4_VER_IHL, 0, IPV4_HLEN + TCP_HLEN + len(payload),
                           0, 0, 1, IPPROTO_TCP, 0, 0, 0)
    inner = bytes(ETH_HLEN) + inner_ip + inner_tcp + payload
    udp = struct.pack("!HHHH", 9, 9, UDP_HLEN + VXLAN_HLEN + len(inner), 0)
    outer_ip = struct.pack("!BBHHHBBHII", IPV4_VER_IHL, 0, VXLAN_ENCAP + len(inner), 0, 0, 1,
                           IPPROTO_UDP, 0, 0, 0)
    eth = bytes.fromhex("020000000000") * 2 + ETH_P_IP.to_bytes(2, "big")
    frame = eth + outer_ip + udp + bytes(VXLAN_HLEN) + inner
    inner_nh = ETH_HLEN + VXLAN_ENCAP + ETH_HLEN
    head = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4,
                   inner_nh + IPV4_HLEN + TCP_HLEN, 100, inner_nh + IPV4_HLEN, TCP_CSUM_AT)
    return tunnel_header(head, ETH_HLEN + IPV4_HLEN, inner_nh) + frame


def open_tunnel_tx(device: str) -> TunnelTx:
    """Open the TX TAP for `device`'s UDP-tunnel GSO frames, or say why not (TunnelTx.reason).

    The TAP carries no address: a frame written into it (outer Ethernet to the TAP's MAC, outer
    IPv4 from our PublicIP to a peer) is received by the host and forwarded out the external
    interface, where the kernel or the NIC cuts it. So the host must forward (ip_forward, as
    flannel needs anyway) and accept our own address as a source on this TAP (accept_local,
    rp_filter off here; a strict all.rp_filter would still drop it, so it refuses then). A
    probe write shows whether this kernel parses tunnel GSO (Linux 6.17+).
    """
    name = tunnel_tx_name(device)
    try:
        if _sysctl("ip_forward") != 1:
            return TunnelTx(reason="net.ipv4.ip_forward is off")
        if _sysctl("conf/all/rp_filter") == 1:
            return TunnelTx(reason="net.ipv4.conf.all.rp_filter=1 (strict) would drop our frames")
    except OSError as exc:
        return TunnelTx(reason=f"cannot read sysctls: {exc}")
    try:
        dev = _attach(name, pytun.IFF_TAP | pytun.IFF_NO_PI | IFF_VNET_HDR)
    except (pytun.Error, OSError) as exc:
        return TunnelTx(reason=f"TX TAP {name}: {exc}")
    tx = TunnelTx(dev.fileno(), 0, name, "", dev)
    try:
        fcntl.ioctl(dev.fileno(), TUNSETVNETHDRSZ, struct.pack("i", TNL_HDR_LEN))
        dev.persist(False)
        _sysctl(f"conf/{name}/accept_local", 1)
        _sysctl(f"conf/{name}/rp_filter", 0)
        try:  # nobody reads this TAP: no IPv6 autoconf traffic to queue up in it
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass
        dev.up()
        tx.mac = int.from_bytes(dev.hwaddr, "big")  # (sysfs may show another namespace)
        os.write(dev.fileno(), _probe_frame())
    except OSError as exc:
        tx.close()
        what = ("this kernel refuses UDP-tunnel GSO in the virtio header (Linux 6.17+ takes it)"
                if exc.errno == 22 else str(exc))
        return TunnelTx(reason=what)
    return tx
