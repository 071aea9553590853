"""One description per encapsulation: what the userspace backends (vxlan, udp) put on the wire
and open on the host, and what they take when the config's Backend section is silent.

The one place for these facts: the backends, the daemon (through them), doctor, the offline
host of `weft replay`/`weft trace`, the lab and the pcap generator read them here. A new
encapsulation, or the same one over another address family, is a new row, not a new branch.
No device, datapath or compiler imports, so doctor and the offline tools can read it on a
machine without TUN/TAP and without loading numba.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

DEFAULT_VNI = 1  # flannel's default VNI


class BackendOptions(Protocol):
    """What an encapsulation reads of a network config (weft.control.config.NetworkConfig)."""

    def backend_option(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Encap:
    """An encapsulation as one backend type carries it over an IPv4 underlay."""

    backend: str  # the backend type that carries it (its key in ENCAPS)
    default_port: int  # outer UDP port when the Backend gives no Port
    # Outer bytes per packet: MTU = interface MTU - overhead, as flanneld computes it when the
    # Backend gives no MTU.
    overhead: int
    device_kind: Literal["tap", "tun"]  # TAP carries Ethernet frames, TUN bare IP packets
    device_name_rule: str  # the device's name, "{vni}" replaced by the VNI
    has_vni: bool  # a VNI travels in the header (and names the device)

    @property
    def tap(self) -> bool:
        return self.device_kind == "tap"

    def device_name(self, vni: int = DEFAULT_VNI) -> str:
        """The device the backend opens: `weft.<VNI>` (flannel's flannel.<VNI>) or weft0."""
        return self.device_name_rule.format(vni=vni)

    def vni_of_device(self, name: str) -> int | None:
        """The VNI in a device name this encapsulation gives (None: not one of its names)."""
        head, has_vni, tail = self.device_name_rule.partition("{vni}")
        if not has_vni or not (name.startswith(head) and name.endswith(tail)):
            return None
        digits = name[len(head):len(name) - len(tail)]
        return int(digits) if digits.isdigit() else None

    def settings(self, config: BackendOptions, iface_mtu: int) -> OverlaySettings:
        """The config's Backend options (VNI, Port, MTU), else this encapsulation's defaults."""
        vni = int(config.backend_option("VNI") or DEFAULT_VNI) if self.has_vni else 0
        port = int(config.backend_option("Port") or self.default_port)
        mtu = int(config.backend_option("MTU") or iface_mtu - self.overhead)
        return OverlaySettings(self, vni, port, mtu, self.device_name(vni))


@dataclass(frozen=True)
class OverlaySettings:
    """A userspace backend's settings: what goes into its Pipeline and device."""

    encap: Encap
    vni: int  # 0 for an encapsulation without a VNI
    port: int
    mtu: int
    device: str


VXLAN = Encap("vxlan", default_port=8472,  # the Linux kernel's default VXLAN port, and flannel's
              overhead=50,  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
              device_kind="tap", device_name_rule="weft.{vni}", has_vni=True)
UDP = Encap("udp", default_port=8285,  # flannel's udp backend
            overhead=28,  # outer IPv4 20 + UDP 8
            device_kind="tun", device_name_rule="weft0",  # flannel's udp TUN is flannel0
            has_vni=False)

# backend type -> its encapsulation: the backends with a userspace pipeline
ENCAPS: dict[str, Encap] = {encap.backend: encap for encap in (VXLAN, UDP)}


def encap_of(backend_type: str) -> Encap:
    """The encapsulation of a userspace backend; ValueError for any other backend type."""
    try:
        return ENCAPS[backend_type]
    except KeyError:
        raise ValueError(f"backend {backend_type!r} has no userspace pipeline") from None
