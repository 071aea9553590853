"""The rtnetlink numbers weft speaks, each defined once: <linux/netlink.h>, <linux/rtnetlink.h>,
<linux/neighbour.h>, <linux/if_link.h>, <linux/if_addr.h> and <linux/if.h>.

The kernel's ABI, so these never change; the modules that build or parse netlink messages
(netlink_batch, netlink_dump, reconcile, netlink and observe's peer_probe) import them from here.
"""

from __future__ import annotations

import errno
import struct

# <linux/netlink.h>: the header every message starts with, and the error answer after it
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLMSGERR = struct.Struct("=i")  # struct nlmsgerr's error: 0 for an ack, else -errno
RTATTR = struct.Struct("=HH")  # an attribute's header: length, type
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without its NLA_F_NESTED, NLA_F_NET_BYTEORDER
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry the request's header only, not the whole request
# What a request to delete something already absent is refused with: the caller's wish holds.
GONE = frozenset({errno.ESRCH, errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL})


def nlmsg_align(length: int) -> int:
    """NLMSG_ALIGN / RTA_ALIGN: messages and attributes start on 4-byte boundaries."""
    return (length + 3) & ~3


# <linux/rtnetlink.h>: message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
# multicast groups a socket binds to for notifications
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400
# The fixed part of each message type, after the header
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
# struct rtmsg's values, and route attributes
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RTPROT_RA = 9  # a route the kernel learnt from a router advertisement
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
IFA_F_NODAD = 0x02  # an address put on without duplicate address detection
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15

# <linux/neighbour.h>: neighbour attributes and states
NDA_DST, NDA_LLADDR = 1, 2
NUD_INCOMPLETE, NUD_FAILED, NUD_PERMANENT = 0x01, 0x20, 0x80

# <linux/if_link.h>, <linux/if_addr.h>, <linux/if.h>: link and address attributes, link flags
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02  # an address used at once, without duplicate address detection
IFF_UP = 1
