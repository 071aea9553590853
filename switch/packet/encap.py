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
ETHERNET_HEADER_LEN = 14  # destination MAC, source MAC, ethertype

# What a device carries, by its kind: the link type a packet reader (scapy's describe, pcap)
# needs, and where the inner IP header starts in what the device hands over.
_DEVICE_LINK: dict[str, tuple[Literal["ether", "ip"], int]] = {
    "tap": ("ether", ETHERNET_HEADER_LEN),  # Ethernet frames
    "tun": ("ip", 0),  # bare IP packets
}


class BackendOptions(Protocol):
    """What an encapsulation reads of a network config (weft.control.config.NetworkConfig)."""

    def backend_option(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class Encap:
    """An encapsulation as one backend type carries it over an IPv4 underlay.

    Every vxlan/udp difference the packet path, the offline tools and doctor act on is a field
    here, read from the row the backend type selects once (Pipeline.encap, the backend's class):
    a third encapsulation is a third row, and an IPv6 underlay is a row with outer="ipv6" (and
    its own overhead), not a branch in the readers.
    """

    backend: str  # the backend type that carries it (its key in ENCAPS)
    # The row as compiled code sees it (numba takes ints, not rows): the steps and the compiled
    # loops pick the row's kernels by it, and counters.ENCAP_PATHS its counters rows.
    code: int
    default_port: int  # outer UDP port when the Backend gives no Port
    # Outer bytes per packet: MTU = interface MTU - overhead, as flanneld computes it when the
    # Backend gives no MTU.
    overhead: int
    device_kind: Literal["tap", "tun"]  # TAP carries Ethernet frames, TUN bare IP packets
    device_name_rule: str  # the device's name, "{vni}" replaced by the VNI
    has_vni: bool  # a VNI travels in the header (and names the device)
    # Bytes of encapsulation header between the outer UDP header and the inner frame or packet
    # (the start of what the UDP socket receives): VXLAN's 8, none for flannel's udp.
    header_len: int
    header_name: str  # how traces name that header ("" when there is none)
    # The egress step writes the outer IPv4 + UDP itself and the datagram leaves on a raw
    # socket (vxlan); else the step's output is the UDP payload and a UDP socket adds them (udp).
    builds_outer: bool
    # What `weft trace` says the forwarding step does, egress and ingress.
    egress_action: str
    ingress_action: str
    outer: Literal["ipv4", "ipv6"] = "ipv4"  # the underlay family; an IPv6 underlay is another row

    @property
    def tap(self) -> bool:
        return self.device_kind == "tap"

    @property
    def device_link(self) -> Literal["ether", "ip"]:
        """What the device carries, as weft.packet.slowpath.describe names link types."""
        return _DEVICE_LINK[self.device_kind][0]

    @property
    def inner_l3_offset(self) -> int:
        """Where the inner IP header starts in a frame or packet of the device."""
        return _DEVICE_LINK[self.device_kind][1]

    @property
    def device_label(self) -> str:
        """The device kind as people write it: TAP, TUN."""
        return self.device_kind.upper()

    def inner(self, payload: bytes) -> bytes:
        """The inner frame or packet in a UDP payload this encapsulation received."""
        return payload[self.header_len:]

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


VXLAN = Encap("vxlan", code=0,
              default_port=8472,  # the Linux kernel's default VXLAN port, and flannel's
              overhead=50,  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
              device_kind="tap", device_name_rule="weft.{vni}", has_vni=True,
              header_len=8, header_name="VXLAN",  # RFC 7348: flags, reserved, VNI, reserved
              builds_outer=True,
              egress_action="encap: push outer IPv4 + UDP + VXLAN (36 bytes, into the headroom)",
              ingress_action="decap: pop VXLAN, inner frame to the TAP")
UDP = Encap("udp", code=1, default_port=8285,  # flannel's udp backend
            overhead=28,  # outer IPv4 20 + UDP 8
            device_kind="tun", device_name_rule="weft0",  # flannel's udp TUN is flannel0
            has_vni=False, header_len=0, header_name="",  # the inner packet is the payload
            builds_outer=False,
            egress_action="ttl: decrement; the packet is the payload of one UDP datagram",
            ingress_action="ttl: decrement, as flannel's udp does on receive")

# flannel's flannel-v6.<VNI>: IPv6 frames over an IPv6 underlay. The kernel writes the outer
# IPv6 + UDP (an AF_INET6 UDP socket bound to the port), so the outer UDP checksum is the one
# the kernel's VXLAN sends over IPv6 (computed; a zero checksum is not allowed there without
# udp6zerocsumtx/rx on both ends).
VXLAN6 = Encap("vxlan", code=2, default_port=VXLAN.default_port,
               overhead=70,  # outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
               device_kind="tap", device_name_rule="weft-v6.{vni}", has_vni=True,
               header_len=8, header_name="VXLAN", builds_outer=False,
               egress_action="encap: push VXLAN (8 bytes); the kernel adds outer IPv6 + UDP",
               ingress_action="decap: pop VXLAN, inner IPv6 frame to the TAP",
               outer="ipv6")

# backend type -> its encapsulation: the backends with a userspace pipeline
ENCAPS: dict[str, Encap] = {encap.backend: encap for encap in (VXLAN, UDP)}
# backend type -> the encapsulation of its IPv6 half (EnableIPv6): a second device beside the
# first, as flannel's flannel-v6.<VNI> beside flannel.<VNI>
ENCAPS_V6: dict[str, Encap] = {VXLAN6.backend: VXLAN6}


def as_encap(kind: Encap | str) -> Encap:
    """An Encap as it is, a backend type through encap_of: for APIs that take either."""
    return kind if isinstance(kind, Encap) else encap_of(kind)


def encap_of(backend_type: str) -> Encap:
    """The encapsulation of a userspace backend; ValueError for any other backend type."""
    try:
        return ENCAPS[backend_type]
    except KeyError:
        raise ValueError(f"backend {backend_type!r} has no userspace pipeline") from None
