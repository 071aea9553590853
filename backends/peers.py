"""Per-peer programming shared by the backends (flannel's route network, trimmed).

Turns PeerChanges (weft.control.peer_sync, which alone decides who is a peer) into
program/unprogram rounds, and keeps what is programmed with the lease it was programmed from:
unprogramming, the repair pass and `weft status` read it. A changed lease is programmed over the
old one (replace semantics), a lease equal to the programmed one is a replay and costs nothing,
a lease of another backend type is not programmed (and an older one of that peer is removed),
and one failing peer is logged while the others go on.

A backend may program a whole round at once (`program_many`/`unprogram_many`: thousands of peers
in a few netlink system calls instead of a round trip each); it then reports failures per peer.
A backend without them has each peer go through `program`/`unprogram` on its own
(`PeerPrograms.one_at_a_time`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Network

from weft.control.lease import Lease, parse_vtep_mac
from weft.control.peer_sync import PeerChanges
from weft.status import PeerStatus

log = logging.getLogger(__name__)

# leases -> {subnet: why it failed}; every lease not in the answer succeeded
ProgramMany = Callable[[list[Lease]], dict[IPv4Network, str]]
LOG_EACH = 16  # rounds larger than this log one summary line; each peer at debug level


class PeerPrograms:
    """Programs whole rounds of peers through `program_many`/`unprogram_many`.

    A backend that programs one peer at a time builds it with `PeerPrograms.one_at_a_time`.
    """

    def __init__(self, backend_type: str, program_many: ProgramMany,
                 unprogram_many: ProgramMany) -> None:
        self.backend_type = backend_type
        self._program_many = program_many
        self._unprogram_many = unprogram_many
        self.programmed: dict[IPv4Network, Lease] = {}
        self.failed: dict[IPv4Network, str] = {}  # subnet -> why it is not programmed

    @classmethod
    def one_at_a_time(cls, backend_type: str, program: Callable[[Lease], None],
                      unprogram: Callable[[Lease], None]) -> PeerPrograms:
        """For a backend whose calls take one lease and raise on failure."""
        return cls(backend_type, _one_by_one(program), _one_by_one(unprogram))

    def handle(self, changes: PeerChanges) -> None:
        wanted = {lease.subnet: lease for lease in changes.added}  # a later lease wins
        gone = set(changes.removed) - set(wanted)  # added and removed at once: added
        for subnet in gone:
            self.failed.pop(subnet, None)
        for subnet, lease in list(wanted.items()):
            old = self.programmed.get(subnet)
            if lease.attrs.effective_backend != self.backend_type:
                log.warning("ignoring lease %s of PublicIP %s: backend %s, we run %s",
                            subnet, lease.attrs.public_ip, lease.attrs.effective_backend,
                            self.backend_type)
                self.failed[subnet] = f"backend type {lease.attrs.effective_backend}"
                del wanted[subnet]
                gone.add(subnet)  # do not keep routing by an older lease of that peer
            elif old is not None and old.attrs == lease.attrs:
                del wanted[subnet]  # a replay: nothing to do
        # A changed lease is programmed over the old one: every backend programs with replace
        # semantics (the kernel state and the table entry follow from the lease alone), so the
        # peer never goes missing between an unprogram and a program.
        self._remove([self.programmed[s] for s in gone if s in self.programmed])
        self._add(list(wanted.values()))

    def peers(self, ipv6: bool = False) -> tuple[PeerStatus, ...]:
        """What is programmed, in subnet order, for `weft status`; `ipv6`: the backend routes
        peers' IPv6 halves too (dual-stack), so a peer that has one shows it."""
        return tuple(PeerStatus(subnet=str(subnet), public_ip=str(lease.attrs.public_ip),
                                vtep_mac=_vtep_mac(lease), **_ipv6_half(lease, ipv6))
                     for subnet, lease in sorted(self.programmed.items()))

    def unprogrammed(self) -> dict[str, str]:
        """Subnets handed to us that are not programmed, and why."""
        return {str(subnet): why for subnet, why in sorted(self.failed.items())}

    def _add(self, leases: list[Lease]) -> None:
        if not leases:
            return
        failures = self._program_many(leases)
        stale = []
        for lease in leases:
            why = failures.get(lease.subnet)
            if why is not None:
                log.error("programming peer %s (%s) failed: %s", lease.subnet,
                          lease.attrs.public_ip, why)
                self.failed[lease.subnet] = why
                if lease.subnet in self.programmed:  # do not keep routing by the old lease
                    stale.append(self.programmed[lease.subnet])
                continue
            self.failed.pop(lease.subnet, None)
            self.programmed[lease.subnet] = lease
            _each(len(leases), "peer %s via %s programmed", lease.subnet, lease.attrs.public_ip)
        if len(leases) > LOG_EACH:
            log.info("programmed %d peers (%d failed)", len(leases) - len(failures),
                     len(failures))
        self._remove(stale)

    def _remove(self, leases: list[Lease]) -> None:
        if not leases:
            return
        failures = self._unprogram_many(leases)
        for lease in leases:
            why = failures.get(lease.subnet)
            if why is not None:
                log.error("removing peer %s failed: %s", lease.subnet, why)
            else:
                _each(len(leases), "peer %s removed", lease.subnet)
            # Forget it only now: status must not report a peer gone while its routes work.
            del self.programmed[lease.subnet]
        if len(leases) > LOG_EACH:
            log.info("removed %d peers (%d failed)", len(leases), len(failures))


def _vtep_mac(lease: Lease) -> str | None:
    """The lease's VtepMAC as the kernel shows it (lower case, colons); None without one, or
    with one that is no MAC (a udp or host-gw lease does not use it, so the policy lets it be)."""
    try:
        return parse_vtep_mac(lease.attrs.vtep_mac or "").hex(":")
    except ValueError:
        return None


def _ipv6_half(lease: Lease, ipv6: bool) -> dict[str, str]:
    if not ipv6 or lease.ipv6_subnet is None or lease.attrs.public_ipv6 is None:
        return {}  # reached over IPv4 only
    return {"ipv6_subnet": str(lease.ipv6_subnet), "public_ipv6": str(lease.attrs.public_ipv6)}


def _each(count: int, message: str, *args: object) -> None:
    log.log(logging.INFO if count <= LOG_EACH else logging.DEBUG, message, *args)


def _one_by_one(fn: Callable[[Lease], None]) -> ProgramMany:
    def run(leases: list[Lease]) -> dict[IPv4Network, str]:
        failures = {}
        for lease in leases:
            try:
                fn(lease)
            except Exception as exc:  # noqa: BLE001 - one bad peer must not stop the others
                failures[lease.subnet] = str(exc)
        return failures

    return run
