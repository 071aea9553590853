"""What the userspace backends (vxlan, udp) take when the config's Backend section is silent.

One place for these values: the backends, the offline host of `weft replay`/`weft trace` and
the pcap generator all derive their settings here. No device or datapath imports, so offline
tools can use it on a machine without TUN/TAP.
"""

from __future__ import annotations

from dataclasses import dataclass

from weft.control.config import NetworkConfig

VXLAN_PORT = 8472  # the Linux kernel's default VXLAN port, and flannel's
UDP_PORT = 8285  # flannel's udp backend
DEFAULT_VNI = 1  # flannel's default VNI
# MTU = interface MTU - overhead, as flanneld computes it when the Backend gives no MTU
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
UDP_OVERHEAD = 28  # outer IPv4 20 + UDP 8
UDP_DEVICE = "weft0"  # flannel's udp TUN is flannel0

DEFAULT_PORTS = {"vxlan": VXLAN_PORT, "udp": UDP_PORT}
OVERHEADS = {"vxlan": VXLAN_OVERHEAD, "udp": UDP_OVERHEAD}
OVERLAY_KINDS = tuple(DEFAULT_PORTS)  # the backends with a userspace pipeline


def device_name(kind: str, vni: int = DEFAULT_VNI) -> str:
    """The device a backend opens: the TAP `weft.<VNI>` (flannel's flannel.<VNI>) or TUN weft0."""
    return f"weft.{vni}" if kind == "vxlan" else UDP_DEVICE


@dataclass(frozen=True)
class OverlaySettings:
    """A userspace backend's settings: what goes into its Pipeline and device."""

    kind: str
    vni: int  # 0 for udp, which has no VNI
    port: int
    mtu: int
    device: str
    tap: bool  # vxlan carries Ethernet frames (TAP), udp bare IPv4 packets (TUN)


def overlay_settings(config: NetworkConfig, iface_mtu: int) -> OverlaySettings:
    """Settings from the config's Backend options (VNI, Port, MTU), else the defaults above."""
    kind = config.backend_type
    if kind not in DEFAULT_PORTS:
        raise ValueError(f"backend {kind!r} has no userspace pipeline")
    vni = int(config.backend_option("VNI") or DEFAULT_VNI) if kind == "vxlan" else 0
    port = int(config.backend_option("Port") or DEFAULT_PORTS[kind])
    mtu = int(config.backend_option("MTU") or iface_mtu - OVERHEADS[kind])
    return OverlaySettings(kind, vni, port, mtu, device_name(kind, vni), kind == "vxlan")
