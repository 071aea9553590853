"""Turn the user's packet for `weft trace` into pipeline input: bytes plus direction.

The packet comes as a scapy expression (evaluated by a restricted AST walker: scapy layers,
literals, '/' and '*' only), as hex, or as one record of a pcap. Fields scapy would resolve on
this machine (MACs, outer addresses) are filled in as the traced host would see them, and the
direction (egress, or ingress when the packet is IPv4/UDP to our PublicIP and port) is inferred
unless given; outer headers the kernel's UDP socket strips are removed. tools/trace.py traces
the result.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from weft.packet.outer import find_datagram, is_ingress
from weft.packet.reasons import reason_name
from weft.packet.table import CFG_PORT
from weft.tools.offline import OfflineHost


class TraceInputError(ValueError):
    """The packet argument cannot be used (bad expression, bad hex, no such pcap record)."""


@dataclass
class TraceInput:
    data: bytes  # exactly what the pipeline step receives: TAP frame, TUN packet, UDP payload
    direction: str
    src_ip: int = 0  # ingress: the outer sender
    origin: str = ""
    notes: list[str] = field(default_factory=list)


_NAMESPACE: dict[str, type] = {}


def scapy_namespace() -> dict[str, type]:
    """Every scapy layer class (Ether, IP, ICMP, VXLAN, ...) and nothing else."""
    if not _NAMESPACE:
        from scapy.layers import inet, inet6, l2, vxlan
        from scapy.packet import Packet, Padding, Raw

        for module in (l2, inet, inet6, vxlan):
            for name, value in vars(module).items():
                if isinstance(value, type) and issubclass(value, Packet) and name[0] != "_":
                    _NAMESPACE[name] = value
        _NAMESPACE.update(Raw=Raw, Padding=Padding)
    return _NAMESPACE


_ALLOWED = (ast.Expression, ast.BinOp, ast.Div, ast.Mult, ast.Call, ast.keyword, ast.Constant,
            ast.Name, ast.Load, ast.List, ast.Tuple, ast.UnaryOp, ast.USub)


def eval_scapy(text: str):
    """Build a packet from a scapy expression: layer calls with literal arguments, `/` and
    `literal * count`. No attributes, no other names, no builtins: nothing else can run."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise TraceInputError(f"packet expression does not parse: {exc.msg}") from None
    names = scapy_namespace()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise TraceInputError(f"packet expression: {type(node).__name__} is not allowed "
                                  f"(only scapy layers, literals, '/' and '*')")
        if isinstance(node, ast.Name) and node.id not in names:
            raise TraceInputError(f"packet expression: {node.id!r} is not a scapy layer")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise TraceInputError("packet expression: only scapy layers can be called")
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            raise TraceInputError("packet expression: only plain field=value arguments")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right = node.left, node.right
            if not (isinstance(left, ast.Constant) and isinstance(right, ast.Constant)
                    and isinstance(left.value, str | bytes) and isinstance(right.value, int)
                    and 0 <= len(left.value) * right.value <= 65535):
                raise TraceInputError("packet expression: '*' only as 'literal' * count, "
                                      "at most 65535 bytes")
    try:
        pkt = eval(compile(tree, "<packet>", "eval"), {"__builtins__": {}}, dict(names))  # noqa: S307 - checked above
    except Exception as exc:  # a scapy error building the layers
        raise TraceInputError(f"packet expression failed: {type(exc).__name__}: {exc}") from None
    from scapy.packet import Packet

    if not isinstance(pkt, Packet):
        raise TraceInputError("packet expression must evaluate to a scapy packet")
    return pkt


def _peer_mac_for(host: OfflineHost, ip: str | None) -> str | None:
    if ip is None:
        return None
    table = host.pipeline.table
    idx = table.index_of(int(IPv4Address(ip)))
    if idx < 0 or not table.present[idx] or not any(table.vtep_mac[idx]):
        return None
    return bytes(table.vtep_mac[idx]).hex(":")


def _sender_of(host: OfflineHost, inner_src: str | None) -> str | None:
    """PublicIP of the peer leasing inner_src: the natural outer source of an ingress packet."""
    if inner_src is None:
        return None
    table = host.pipeline.table
    idx = table.index_of(int(IPv4Address(inner_src)))
    return str(IPv4Address(int(table.public_ip[idx]))) if idx >= 0 and table.present[idx] else None


def fill_defaults(pkt, host: OfflineHost, src_ip: str | None, notes: list[str]) -> None:
    """Set what scapy would otherwise resolve on this machine (MACs by ARP, routes), as the
    traced host would see it: the kernel's neighbour entries give the MACs."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    pl, local_mac = host.pipeline, host.lease.attrs.vtep_mac or "00:00:00:00:00:00"
    layers = []
    layer = pkt
    while layer:
        layers.append(layer)
        layer = layer.payload
    vx = next((i for i, x in enumerate(layers) if isinstance(x, VXLAN)), None)

    def inner_ip(start: int):
        return next((x for x in layers[start:] if isinstance(x, IP)), None)

    def setdefault(layer, name: str, value, why: str) -> None:
        if name not in layer.fields and value is not None:
            setattr(layer, name, value)
            notes.append(f"{layer.name}.{name} = {value} ({why})")

    if vx is not None:  # an ingress VXLAN packet, outer headers optional
        ip = inner_ip(vx)
        if vx and isinstance(layers[vx - 1], UDP):
            setdefault(layers[vx - 1], "dport", int(pl.cfg[CFG_PORT]), "our port")
            setdefault(layers[vx - 1], "sport", int(pl.cfg[CFG_PORT]), "unset")
        outer = next((x for x in layers[:vx] if isinstance(x, IP)), None)
        if outer is not None:
            setdefault(outer, "dst", str(host.lease.attrs.public_ip), "our PublicIP")
            sender = src_ip or _sender_of(host, ip.src if ip is not None else None)
            setdefault(outer, "src", sender, "the peer leasing the inner source")
        for x in layers[:vx]:  # stripped before the pipeline sees it: any MAC will do
            if isinstance(x, Ether):
                for name in ("dst", "src"):
                    if name not in x.fields:
                        setattr(x, name, "00:00:00:00:00:00")
        for x in layers[vx:]:
            if isinstance(x, Ether):
                setdefault(x, "dst", local_mac, "our VtepMAC")
                peer_mac = _peer_mac_for(host, ip.src if ip is not None else None)
                setdefault(x, "src", peer_mac or "00:00:00:00:00:00", "the sender's VtepMAC")
                break
        return
    for i, x in enumerate(layers):
        if isinstance(x, Ether):
            ip = inner_ip(i)
            peer_mac = _peer_mac_for(host, ip.dst if ip is not None else None)
            setdefault(x, "dst", peer_mac or local_mac, "neighbour entry of the destination")
            setdefault(x, "src", local_mac, "our VtepMAC (the TAP)")


def normalise(raw: bytes, link: str, host: OfflineHost, direction: str | None,
              src_ip: str | None, notes: list[str]) -> tuple[bytes, str, int]:
    """Turn what the user gave into (step input, direction, outer source).

    link is "ether", "ip" or "payload" (a bare VXLAN/udp payload). A packet that is IPv4/UDP to
    our PublicIP and port, with or without an Ethernet header, is ingress (the rule `weft
    replay` applies too: weft.packet.outer.is_ingress); its outer headers are stripped as the
    kernel's UDP socket would. `direction` given by the user overrides the inference.
    """
    pl = host.pipeline
    port = int(pl.cfg[CFG_PORT])
    public_ip = host.lease.attrs.public_ip
    sender = int(IPv4Address(src_ip)) if src_ip else 0
    ip_part = raw[14:] if link == "ether" and raw[12:14] == b"\x08\x00" else raw
    dgram = find_datagram(ip_part) if link != "payload" else None
    tunnel = dgram is not None and dgram.dport == port
    to_socket = is_ingress(dgram, int(public_ip), port)
    if tunnel and not to_socket and direction is None:
        notes.append(f"UDP to port {port} but outer destination {IPv4Address(dgram.dst)} is not "
                     f"our PublicIP {public_ip}: egress (the kernel routes it; the tunnel "
                     f"socket never receives it)")
    if tunnel and (to_socket or direction == "ingress"):
        if dgram.payload is None:
            raise TraceInputError(f"outer IPv4/UDP unusable ({reason_name(dgram.error)}): the "
                                  f"kernel would not deliver it to the tunnel socket")
        if link == "ether":
            notes.append("outer Ethernet stripped")
        notes.append(f"outer IPv4/UDP to port {port} stripped (the UDP socket receives only the "
                     f"payload)")
        if not to_socket:
            notes.append(f"outer destination {IPv4Address(dgram.dst)} is not our PublicIP")
        return dgram.payload, "ingress", sender or dgram.src
    if direction == "ingress" or link == "payload":
        if not sender:
            raise TraceInputError("an ingress payload without outer headers needs --src-ip")
        return raw, "ingress", sender
    if link == "ip" and pl.encap.device_link == "ether":
        from scapy.layers.l2 import Ether

        frame = Ether(dst=_peer_mac_for(host, str(IPv4Address(raw[16:20]))) or "00:00:00:00:00:00",
                      src=host.lease.attrs.vtep_mac or "00:00:00:00:00:00", type=0x0800)
        notes.append("Ethernet header added (the TAP carries frames)")
        return bytes(frame) + raw, "egress", 0
    if link == "ether" and pl.encap.device_link == "ip":
        if raw[12:14] != b"\x08\x00":
            raise TraceInputError(f"the {pl.encap.backend} backend's {pl.encap.device_label} "
                                  f"carries only IP packets")
        notes.append(f"Ethernet header removed (the {pl.encap.device_label} carries bare IP "
                     f"packets)")
        return raw[14:], "egress", 0
    return raw, "egress", 0


def _from_pcap(path: str, index: int) -> tuple[bytes, str]:
    from scapy.utils import RawPcapReader

    try:
        with RawPcapReader(path) as reader:
            linktype = getattr(reader, "linktype", 1)
            for n, (data, _meta) in enumerate(reader):
                if n == index:
                    if linktype == 1:
                        return bytes(data), "ether"
                    if linktype in (101, 228):  # LINKTYPE_RAW, LINKTYPE_IPV4
                        return bytes(data), "ip"
                    raise TraceInputError(f"{path}: link type {linktype} is not supported")
    except (OSError, EOFError) as exc:
        raise TraceInputError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # scapy raises Scapy_Exception for non-pcap files
        if isinstance(exc, TraceInputError):
            raise
        raise TraceInputError(f"cannot read {path}: {exc}") from None
    raise TraceInputError(f"{path} has no packet number {index} (counting from 0)")


def read_input(host: OfflineHost, packet: str | None, *, direction: str | None = None,
               src_ip: str | None = None, pcap: str | None = None, index: int = 0) -> TraceInput:
    notes: list[str] = []
    if pcap:
        raw, link = _from_pcap(pcap, index)
        origin = f"{pcap} #{index}"
    elif packet and _HEX.fullmatch(packet) and len(packet.replace(":", "").split()) >= 1:
        digits = "".join(packet.replace(":", "").split())
        try:
            raw = bytes.fromhex(digits)
        except ValueError as exc:
            raise TraceInputError(f"bad hex packet: {exc}") from None
        link = "ip" if raw and raw[0] >> 4 == 4 else "ether"
        origin = "hex"
    elif packet:
        from scapy.layers.inet import IP
        from scapy.layers.vxlan import VXLAN

        pkt = eval_scapy(packet)
        fill_defaults(pkt, host, src_ip, notes)
        link = "payload" if isinstance(pkt, VXLAN) else "ip" if isinstance(pkt, IP) else "ether"
        if link == "payload" and not src_ip:
            ip = pkt.getlayer(IP)
            src_ip = _sender_of(host, ip.src if ip is not None else None)
            if src_ip:
                notes.append(f"outer source {src_ip} (the peer leasing the inner source)")
        raw = bytes(pkt)
        origin = "scapy"
    else:
        raise TraceInputError("no packet given")
    data, way, sender = normalise(raw, link, host, direction, src_ip, notes)
    return TraceInput(data, way, sender, origin, notes)


_HEX = re.compile(r"[0-9a-fA-F:\s]+")
