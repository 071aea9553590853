"""Outer IPv4/UDP headers as the host's kernel strips and adds them around a tunnel payload.

The daemon never sees these headers on ingress (its UDP socket receives only the payload) and,
for the udp backend, never writes them on egress (its UDP socket adds them). The offline tools
(`weft replay`, `weft trace`) and live-trace pcaps must do what the kernel does, so this one
module answers for all of them:

- `find_datagram`: the UDP datagram in an IPv4 packet, bounded as the socket delivers it.
- `is_ingress`: whether the host's tunnel socket receives it. The rule: the outer destination
  is our PublicIP AND the UDP destination port is the backend port. Linux delivers a datagram
  to a socket bound to INADDR_ANY:port (flanneld's udp socket, the kernel's VXLAN socket) only
  when its destination is an address of this host; a datagram to another address is routed
  (forwarded or dropped), never delivered, whatever its port. The one address of the host
  weft knows is the PublicIP it published in its lease, which is where peers send.
- `wrap_udp`: the IPv4/UDP packet a Linux UDP socket sends a payload in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from weft.packet.checksum import inet_checksum, udp_checksum
from weft.packet.headers import (
    IP_DF,
    IP_MF_OFFSET,
    IPPROTO_UDP,
    IPV4_CSUM_AT,
    IPV4_FRAG_AT,
    IPV4_HLEN,
    IPV4_PROTO_AT,
    IPV4_SRC_AT,
    IPV4_TOT_LEN_AT,
    IPV4_VER_IHL,
    L4_DPORT_AT,
    UDP_CSUM_AT,
    UDP_HLEN,
    UDP_LEN_AT,
)
from weft.packet.reasons import Reason

WIRE_TTL = 64  # net.ipv4.ip_default_ttl


@dataclass(frozen=True)
class Datagram:
    """An IPv4/UDP datagram found in a packet: addresses, destination port and UDP payload."""

    src: int
    dst: int
    dport: int  # -1 when the UDP header is not there
    payload: bytes | None  # None when the UDP header or length is broken: see `error`
    error: Reason = Reason.OK


def find_datagram(data: bytes, off: int = 0) -> Datagram | None:
    """The UDP datagram in the IPv4 packet at `off`; None when it is not IPv4/UDP at all.

    The IP total length bounds the packet (Ethernet padding is not payload) and the UDP length
    bounds the payload, as the kernel's socket delivers it. A datagram the kernel would not
    deliver (broken header, fragment, cut short) has no payload and says why in `error`.
    """
    ip = data[off:]
    if len(ip) < IPV4_HLEN or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, IPV4_TOT_LEN_AT)[0]
    src, dst = struct.unpack_from("!II", ip, IPV4_SRC_AT)
    if ihl < IPV4_HLEN or total < ihl:  # the protocol field of a broken header means nothing
        return Datagram(src, dst, -1, None, Reason.BAD_IP_HEADER)
    if ip[IPV4_PROTO_AT] != IPPROTO_UDP:
        return None
    if len(ip) < ihl + L4_DPORT_AT + 2:
        return Datagram(src, dst, -1, None, Reason.TRUNCATED)
    dport = struct.unpack_from("!H", ip, ihl + L4_DPORT_AT)[0]
    if total < ihl + UDP_HLEN:
        return Datagram(src, dst, dport, None, Reason.BAD_UDP)
    if total > len(ip):
        return Datagram(src, dst, dport, None, Reason.TRUNCATED)
    if struct.unpack_from("!H", ip, IPV4_FRAG_AT)[0] & IP_MF_OFFSET:  # the kernel reassembles
        return Datagram(src, dst, dport, None, Reason.BAD_UDP)
    udp_len = struct.unpack_from("!H", ip, ihl + UDP_LEN_AT)[0]
    if udp_len < UDP_HLEN or ihl + udp_len > total:
        return Datagram(src, dst, dport, None, Reason.BAD_UDP)
    return Datagram(src, dst, dport, bytes(ip[ihl + UDP_HLEN : ihl + udp_len]))


def is_ingress(dgram: Datagram | None, public_ip: int, port: int) -> bool:
    """True when our tunnel socket receives `dgram`: to our PublicIP and the backend port."""
    return dgram is not None and dgram.dst == public_ip and dgram.dport == port


def wrap_udp(payload: bytes, src: int, dst: int, port: int) -> bytes:
    """The IPv4/UDP packet a Linux UDP socket bound to `port` sends `payload` in, to dst:port.

    Source and destination port are both `port`, as between two flanneld udp sockets (a VXLAN
    sender's real source port is a flow hash the receiving socket never reports). The UDP
    checksum is computed, as a Linux UDP socket does unless told otherwise (SO_NO_CHECK). Linux
    sets DF on UDP sockets (IP_PMTUDISC_WANT, the default with ip_no_pmtu_disc=0) and, for an
    unconnected socket's DF datagram, an IP ID of 0 (ip_select_ident).
    """
    udp_len = UDP_HLEN + len(payload)
    udp = struct.pack("!HHHH", port, port, udp_len, 0) + payload
    udp = (udp[:UDP_CSUM_AT] + struct.pack("!H", udp_checksum(src, dst, udp))
           + udp[UDP_CSUM_AT + 2 :])
    ip = struct.pack("!BBHHHBBHII", IPV4_VER_IHL, 0, IPV4_HLEN + udp_len, 0, IP_DF, WIRE_TTL,
                     IPPROTO_UDP, 0, src, dst)
    ip = ip[:IPV4_CSUM_AT] + struct.pack("!H", inet_checksum(ip)) + ip[IPV4_CSUM_AT + 2 :]
    return ip + udp
