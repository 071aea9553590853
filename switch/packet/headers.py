"""Wire header layouts: the lengths, field offsets and values of Ethernet, IPv4, UDP, TCP and
VXLAN headers, defined once for every reader and writer of packets.

Plain integers (and a slice for the Python twins), no numpy, no numba: the numba kernels read
them as module globals, which numba freezes into the machine code as constants, so naming a
number costs nothing per packet; the twins, the slow path and the offline tools import them
just as cheaply. `_AT` names a field's byte offset from the start of its header, `_HLEN` a
header's length.
"""

from __future__ import annotations

# ---- Ethernet II (no VLAN tag) -----------------------------------------------------------------
ETH_ALEN = 6  # a MAC address
ETH_DST_AT = 0
ETH_SRC_AT = 6
ETH_TYPE_AT = 12
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

# ---- IPv4 ----------------------------------------------------------------------------------------
IPV4_HLEN = 20  # without options (IHL 5); IHL * 4 is the real length
IPV4_VER_IHL = 0x45  # first byte of a header without options: version 4, IHL 5
IPV4_TOS_AT = 1
IPV4_TOT_LEN_AT = 2
IPV4_ID_AT = 4
IPV4_FRAG_AT = 6  # flags (3 bits) and fragment offset (13 bits)
IPV4_TTL_AT = 8
IPV4_PROTO_AT = 9
IPV4_CSUM_AT = 10
IPV4_SRC_AT = 12
IPV4_DST_AT = 16
IPV4_ADDRS = slice(IPV4_SRC_AT, IPV4_DST_AT + 4)  # source and destination, for Python's slicing
IPV4_MAX_LEN = 0xFFFF  # the 16-bit total length
IP_DF = 0x4000  # don't fragment, in the 16-bit flags/offset field
IP_MF_OFFSET = 0x3FFF  # more fragments + offset: nonzero in every fragment of a datagram

# ---- IPv6 (RFC 8200), no extension headers read past the fixed header -------------------------
IPV6_HLEN = 40
IPV6_VERSION = 6  # the high nibble of the first byte
IPV6_PLEN_AT = 4  # payload length: what follows the fixed header
IPV6_NEXT_AT = 6
IPV6_HOP_LIMIT_AT = 7
IPV6_SRC_AT = 8
IPV6_DST_AT = 24
IPV6_ALEN = 16
IPV6_MIN_MTU = 1280  # what every IPv6 link carries; ICMPv6 errors fit in it
IPPROTO_HOPOPTS = 0  # hop-by-hop options (MLD carries a router alert in one)
IPPROTO_ICMPV6 = 58
ICMPV6_TYPE_AT = 0

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

# ---- TCP, UDP and SCTP headers all start with the two ports -----------------------------------
L4_SPORT_AT = 0
L4_DPORT_AT = 2
L4_PORTS_LEN = 4

# ---- UDP -----------------------------------------------------------------------------------------
UDP_LEN_AT = 4
UDP_CSUM_AT = 6
UDP_HLEN = 8

# ---- TCP -----------------------------------------------------------------------------------------
TCP_SEQ_AT = 4
TCP_ACK_AT = 8
TCP_DOFF_AT = 12  # data offset in the high nibble, in 32-bit words
TCP_FLAGS_AT = 13
TCP_WINDOW_AT = 14
TCP_CSUM_AT = 16
TCP_URG_PTR_AT = 18
TCP_HLEN = 20  # without options

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# ---- VXLAN (RFC 7348) ----------------------------------------------------------------------------
VXLAN_FLAGS_AT = 0
VXLAN_VNI_AT = 4  # 24-bit VNI, then a reserved byte
VXLAN_HLEN = 8
VXLAN_FLAG_I = 0x08  # the VNI is valid

# ---- what the tunnels put in front of a payload --------------------------------------------------
IPV4_UDP_HLEN = IPV4_HLEN + UDP_HLEN  # 28: what a UDP socket sends a payload in (udp backend)
VXLAN_ENCAP = IPV4_UDP_HLEN + VXLAN_HLEN  # 36: outer IPv4 + UDP + VXLAN before an inner frame
