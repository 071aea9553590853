"""flanneld's --ip-blackhole-route: a blackhole route for our own subnet.

Packets to an address of our subnet that no pod holds are dropped here instead of following
the default route out of the host (and looping back via the overlay). As flanneld, weft adds
the route once the lease is held and leaves it at exit: a restart takes the same subnet back,
and until then traffic to it is better dropped than leaked.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import rt_type

log = logging.getLogger(__name__)


def add_blackhole_route(subnet: IPv4Network, iproute=IPRoute) -> bool:
    """Add (replace) `blackhole <subnet>` in the main table; False, logged, if refused.

    A failure is logged, not fatal, as in flanneld: the data path works without it."""
    try:
        with iproute() as ipr:
            ipr.route("replace", dst=str(subnet), type=rt_type["blackhole"])
    except (NetlinkError, OSError) as exc:
        log.error("adding blackhole route for %s failed: %s", subnet, exc)
        return False
    log.info("added blackhole route for %s", subnet)
    return True
