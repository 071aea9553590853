"""Kernel state repair: put back what the backend programmed when something else removed it.

flanneld re-adds deleted routes every 10 s and recreates a deleted VXLAN device; weft does the
same for everything its backends program. A pass compares the backend's own record (`Wanted`)
with one dump of links, addresses, routes and neighbours and repairs the difference with
replace semantics, so a pass costs four netlink dumps whatever the number of peers. Passes run
every INTERVAL seconds and at once when a netlink notification says a link, address, route or
neighbour went away (or a link changed state), so most repairs take well under a second; the
timer is the safety net for notifications the socket dropped.

Routes and neighbours are compared in the family they belong to: a backend that programs
IPv6 ones (host-gw dual-stack) gets IPv6 dumped too, and their repairs are counted apart
(`route_ipv6`, `neighbour_ipv6`), so an operator sees which half the kernel lost.

Each repair is counted by what was repaired (`repairs`, shown by `weft status` and /metrics)
and logged once. A repair the kernel refuses (a route via an external interface that is down)
is logged once and retried every pass until it works.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from types import ModuleType
from typing import Protocol

from weft.control.iface import ExternalInterface
from weft.host import netlink
from weft.host.rtnl import (
    NLMSGHDR,
    NUD_PERMANENT,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
    RTNH_F_ONLINK,
    nlmsg_align,
)
from weft.status import RepairStatus

log = logging.getLogger(__name__)

INTERVAL = 3.0  # seconds between passes when no notification comes
SETTLE = 0.05  # after a notification, let a burst (a device delete removes many) finish first
# A pass costs ~10 us per dumped entry (50 ms with 4,096 peers); the timer waits at least this
# many pass-durations all the same, so that passes never take a large share of a CPU
# (notifications still wake a pass at once).
PASS_SPACING = 5
# What a repair restores, the label of weft_repairs_total.
ROUTE, NEIGHBOUR, ADDRESS, DEVICE, LINK, PUBLIC_IP = (
    "route", "neighbour", "address", "device", "link", "public_ip")

# IPv6 route deletions wake a pass too (host-gw dual-stack routes); on an IPv4-only host the
# odd one (a router advertisement's route expiring) costs a pass that finds nothing to do.
_GROUPS = (RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
           | RTMGRP_IPV6_ROUTE)
# Our own repairs announce NEWROUTE/NEWNEIGH; waking on those would only cost empty passes.
_WAKE_ON = {RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_DELROUTE, RTM_DELNEIGH}


@dataclass(frozen=True)
class Route:
    dst: IPv4Network | IPv6Network
    oif: int
    gateway: IPv4Address | IPv6Address | None = None  # of dst's family
    onlink: bool = False


@dataclass(frozen=True)
class Neighbour:
    ip: IPv4Address | IPv6Address
    mac: str
    ifindex: int


def family_label(what: str, address: IPv4Address | IPv6Address | IPv4Network | IPv6Network
                 ) -> str:
    """ROUTE or NEIGHBOUR as counted: the IPv6 ones apart ("route_ipv6"), the IPv4 ones under
    the names they always had."""
    return f"{what}_ipv6" if address.version == 6 else what


@dataclass(frozen=True)
class Device:
    """Our TUN/TAP as it must be: up, this MTU (and MAC, for the vxlan TAP), address/32."""

    name: str
    index: int
    address: IPv4Address
    mtu: int
    mac: str | None = None


@dataclass(frozen=True)
class Wanted:
    """What the backend has programmed and expects the kernel to keep."""

    external: ExternalInterface
    routes: tuple[Route, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    device: Device | None = None

    @property
    def ipv6(self) -> bool:
        """Whether any route or neighbour is IPv6: then the dump must hold IPv6 ones too."""
        return any(r.dst.version == 6 for r in self.routes) or any(
            n.ip.version == 6 for n in self.neighbours)


class KernelView:
    """One dump (netlink.dump_kernel's plain dicts), indexed for the comparisons below."""

    def __init__(self, dump: dict) -> None:
        self.links = {link["name"]: link for link in dump["links"]}
        self.addrs: dict[int, list[IPv4Interface]] = {}
        for a in dump["addrs"]:
            self.addrs.setdefault(a["index"], []).append(
                IPv4Interface(f"{a['address']}/{a['prefixlen']}"))
        # Addresses of both families are parsed to the objects the backend's Wanted holds, so
        # an IPv6 route present compares equal (fd10::/64 is one key however it was spelt).
        self.routes: dict[IPv4Network | IPv6Network, set[Route]] = {}
        for r in dump["routes"]:
            route = Route(ip_network(r["dst"]), r["oif"],
                          ip_address(r["gateway"]) if r["gateway"] else None,
                          bool(r["flags"] & RTNH_F_ONLINK))
            self.routes.setdefault(route.dst, set()).add(route)
        self.neighbours = {(n["ifindex"], ip_address(n["ip"])): n for n in dump["neighbours"]
                           if n["ip"] and n["mac"]}


def missing_routes(wanted: Wanted, view: KernelView) -> list[Route]:
    """Wanted routes the main table lacks, or holds with another device or gateway."""
    return [r for r in wanted.routes if r not in view.routes.get(r.dst, ())]


def missing_neighbours(wanted: Wanted, view: KernelView) -> list[Neighbour]:
    """Wanted neighbour entries that are gone, point elsewhere or are no longer permanent."""
    out = []
    for n in wanted.neighbours:
        have = view.neighbours.get((n.ifindex, n.ip))
        if (have is None or have["mac"].lower() != n.mac.lower()
                or not have["state"] & NUD_PERMANENT):
            out.append(n)
    return out


def device_problems(device: Device, view: KernelView) -> list[str]:
    """[DEVICE] when it is gone (or another link took its name), else LINK and/or ADDRESS."""
    link = view.links.get(device.name)
    if link is None or link["index"] != device.index:
        return [DEVICE]
    problems = []
    mac_differs = device.mac is not None and (link["mac"] or "").lower() != device.mac.lower()
    if not link["up"] or link["mtu"] != device.mtu or mac_differs:
        problems.append(LINK)
    if IPv4Interface(f"{device.address}/32") not in view.addrs.get(device.index, []):
        problems.append(ADDRESS)
    return problems


def new_public_address(external: ExternalInterface, view: KernelView) -> IPv4Address | None:
    """The external interface's new address when the one we publish moved away from it.

    Only when the PublicIP is the interface's own address (no --public-ip, which stays what
    the operator said), and only once a new address is there: an interface briefly without
    any address (a DHCP renewal) is not a change.
    """
    if external.address is None or external.public_ip != external.address:
        return None
    present = [a.ip for a in view.addrs.get(external.index, [])]
    if not present or external.address in present:
        return None
    return present[0]


class Repairable(Protocol):
    """What a backend gives its reconciler."""

    lock: threading.RLock  # held by the backend while it programs peers, and by each pass

    def wanted(self) -> Wanted: ...

    def setup_device(self) -> None:
        """MTU, MAC, address, up, sysctls of our device (replace semantics)."""
        ...

    def recreate_device(self) -> None:
        """Make the deleted device again, set it up and reattach the datapath to it."""
        ...

    def public_ip_changed(self, address: IPv4Address) -> None:
        """Take `address` as our PublicIP and ask for the lease to be republished."""
        ...


class Reconciler:
    """Runs repair passes for one backend on a thread; `kernel` is netlink unless a test fakes
    it (dump_kernel, route_replace, neigh_replace)."""

    def __init__(self, target: Repairable, interval: float = INTERVAL,
                 kernel: ModuleType | object = netlink, monitor: bool = True) -> None:
        self.target = target
        self.interval = interval
        self.kernel = kernel
        self.monitor = monitor
        self.repairs: Counter[str] = Counter()
        self.failing: dict[str, str] = {}  # repair -> why the kernel refused it (last pass)
        self.passes = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        # Written by stop(): the notification thread sleeps in select() on it and on netlink,
        # so it ends at once instead of at its next timeout.
        self._stop_r, self._stop_w = socket.socketpair()

    # -- one pass -------------------------------------------------------------------------------
    def run_once(self) -> Counter[str]:
        """Compare and repair once; returns what this pass repaired."""
        done: Counter[str] = Counter()
        refused: dict[str, str] = {}
        with self.target.lock:
            wanted = self.target.wanted()
            view = self._view(wanted)
            address = new_public_address(wanted.external, view)
            if address is not None:
                self._attempt(PUBLIC_IP, f"PublicIP {wanted.external.public_ip} -> {address}",
                              lambda: self.target.public_ip_changed(address), done, refused)
            if wanted.device is not None:
                problems = device_problems(wanted.device, view)
                if problems == [DEVICE]:
                    what = f"device {wanted.device.name} recreated"
                    if self._attempt(DEVICE, what, self.target.recreate_device, done, refused):
                        wanted = self.target.wanted()
                        view = self._view(wanted)
                elif problems:
                    detail = f"{' and '.join(problems)} of {wanted.device.name}"
                    if self._attempt(problems[0], detail, self.target.setup_device, done,
                                     refused):
                        for extra in problems[1:]:
                            done[extra] += 1
            for n in missing_neighbours(wanted, view):
                self._attempt(family_label(NEIGHBOUR, n.ip), f"neighbour {n.ip} lladdr {n.mac}",
                              lambda n=n: self.kernel.neigh_replace(n.ip, n.mac,
                                                                    ifindex=n.ifindex),
                              done, refused)
            for r in missing_routes(wanted, view):
                via = f" via {r.gateway}" if r.gateway else ""
                self._attempt(family_label(ROUTE, r.dst), f"route {r.dst}{via} dev #{r.oif}",
                              lambda r=r: self.kernel.route_replace(
                                  r.dst, oif=r.oif, gateway=r.gateway, onlink=r.onlink),
                              done, refused)
        self.failing = refused
        self.repairs.update(done)
        self.passes += 1
        return done

    def _view(self, wanted: Wanted) -> KernelView:
        # IPv6 routes and neighbours are dumped only for a backend that programs some: an
        # IPv4-only host's pass stays the four dumps it was.
        return KernelView(self.kernel.dump_kernel(ipv6=True) if wanted.ipv6
                          else self.kernel.dump_kernel())

    def _attempt(self, what: str, detail: str, fn: Callable[[], None], done: Counter[str],
                 refused: dict[str, str]) -> bool:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one refused repair must not stop the others
            # Logged when it starts failing, not every pass while (say) eth0 stays down.
            level = logging.DEBUG if detail in self.failing else logging.WARNING
            log.log(level, "repair of %s failed: %s (retrying)", detail, exc)
            refused[detail] = str(exc)
            return False
        log.warning("repaired %s", detail)
        done[what] += 1
        return True

    def status(self) -> RepairStatus:
        return RepairStatus(repairs=dict(self.repairs), failing=dict(self.failing))

    # -- the threads ----------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, name="weft-reconcile", daemon=True)]
        if self.monitor:
            sock = _monitor_socket()
            if sock is not None:
                self._threads.append(threading.Thread(target=self._watch, args=(sock,),
                                                      name="weft-netlink-watch", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._stop_w.send(b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self._stop_r.close()
        self._stop_w.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a failed dump must not end repairs for good
                log.exception("kernel state check failed; next pass in %.0fs", self.interval)
            took = time.monotonic() - started
            self._wake.wait(max(self.interval, PASS_SPACING * took))
            self._wake.clear()
            self._stop.wait(SETTLE)

    def _watch(self, sock: socket.socket) -> None:
        """Wake the pass loop on notifications that may mean something of ours went away."""
        with sock:
            while not self._stop.is_set():
                if sock not in select.select([sock, self._stop_r], [], [])[0]:
                    continue
                try:
                    data = sock.recv(1 << 16)
                except OSError:  # ENOBUFS: notifications lost; a pass catches up on all
                    self._wake.set()
                    continue
                if any(kind in _WAKE_ON for kind in message_types(data)):
                    self._wake.set()


def message_types(data: bytes) -> list[int]:
    """nlmsg_type of each netlink message in one datagram."""
    kinds, off = [], 0
    while off + NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size:
            break
        kinds.append(kind)
        off += nlmsg_align(length)
    return kinds


def _monitor_socket() -> socket.socket | None:
    """A rtnetlink socket subscribed to link, address, route and neighbour notifications.

    It only reads notification types (to wake a pass); the state itself is read by dump.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        sock.bind((0, _GROUPS))
    except OSError as exc:
        log.warning("no netlink notifications (%s); repairs every %.0fs only", exc, INTERVAL)
        return None
    sock.setblocking(False)
    return sock
