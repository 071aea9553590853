"""Verdicts and reasons shared by the fast path, the slow path, counters and the trace tool.

Codes are small integers so numba kernels can write them into uint8 arrays; names are the
snake_case labels used in metrics and trace output. Add new reasons at the end only: pcaps/
expected outputs and metrics dashboards refer to the names, kernels to the numbers.
"""

from enum import IntEnum


class Verdict(IntEnum):
    FORWARD = 0  # fast path handled it; send/write the output bytes
    DROP = 1  # dropped and counted under a reason
    SLOW = 2  # hand to the scapy slow path (ARP, ICMP errors, ...)


class Reason(IntEnum):
    OK = 0
    TRUNCATED = 1  # shorter than the headers it claims
    NOT_IPV4 = 2  # not an IPv4 packet where one was expected
    BAD_IP_HEADER = 3  # version/IHL/total length inconsistent
    BAD_VXLAN_FLAGS = 4  # I bit (0x08) not set
    WRONG_VNI = 5
    UNKNOWN_SENDER = 6  # outer source is not a current peer's PublicIP
    SPOOFED_INNER_SRC = 7  # inner source outside the sending peer's subnet
    NOT_FOR_US = 8  # inner destination outside our subnet
    NO_ROUTE = 9  # destination in the network but no lease covers it (ICMP net unreachable)
    OUTSIDE_NETWORK = 10  # destination outside the cluster network
    TTL_EXCEEDED = 11  # TTL would reach 0 (ICMP time exceeded)
    FRAG_NEEDED = 12  # DF set and larger than the overlay MTU (ICMP frag needed)
    ARP = 13  # ARP request from the kernel on the TAP (answered by the slow path)
    IPV6 = 14  # IPv6: weft carries IPv4 only, so all of it is dropped (the slow path names it)
    BROADCAST = 15
    MULTICAST = 16
    WRONG_INNER_MAC = 17  # inner destination MAC is not our VTEP MAC
    LOCAL_DST = 18  # egress packet addressed to our own subnet
    UNKNOWN_ETHERTYPE = 19
    BAD_UDP = 20  # outer UDP header inconsistent
    WRONG_PORT = 21  # not our VXLAN/UDP port
    UNSUPPORTED_LINKTYPE = 22  # pcap link type the pipeline cannot read
    ICMP_ERROR_SENT = 23  # slow path answered with an ICMP error
    ARP_REPLIED = 24
    # 25 was ND_REPLIED (the slow path once answered IPv6 neighbour solicitations); retired,
    # never reused: RETIRED keeps its name for old logs and metrics.
    SLOW_PATH_DROP = 26  # reached the slow path and nothing answers it
    PEER_LOOKUP_MISS = 27  # inner destination MAC/peer mismatch on egress
    ICMP_SUPPRESSED = 28  # an ICMP error was due but RFC 1122/1812 forbid sending it
    # The IPv6 half (weft.packet.fastpath6): what the kernel says on the v6 device about
    # itself is never carried to peers (no loops), and IPv4 there is not ours to carry.
    NDP = 29  # neighbour discovery / router solicitation (ICMPv6 133-137)
    MLD = 30  # multicast listener reports and queries (ICMPv6 130-132, 143)
    NOT_IPV6 = 31  # not an IPv6 packet where one was expected
    LINK_LOCAL = 32  # link-local source or destination: never leaves the link


# Codes no longer produced, kept reserved so records that carry them still read by name.
RETIRED = {25: "nd_replied"}


def reason_name(code: int) -> str:
    """Label of a reason code, tolerant of retired codes and codes newer than this module."""
    try:
        return Reason(code).name.lower()
    except ValueError:
        return RETIRED.get(code, f"reason_{code}")


def verdict_name(code: int) -> str:
    try:
        return Verdict(code).name.lower().replace("_", "-")
    except ValueError:
        return f"verdict_{code}"
