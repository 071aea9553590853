"""Keeps the masquerade and forward rules (traffic_rule_text) installed while `weft run` runs.

Host plumbing, like the routes the backends program, but for every backend alike, so the
daemon starts it once the lease (our subnet) is known. It applies the rules, then every
`resync` seconds compares `iptables-save` of each table with the wanted lines and re-applies
when anything differs (someone ran `iptables -t nat -F`, a firewall reload): pods lose their
way out for at most one period. Re-applications are counted (`resyncs`).

On stop the rules stay, as flanneld leaves its own: pods keep working through a restart, and
the next run's first apply replaces them (see traffic_rule_text on why that is atomic).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from weft.host.iptables import IptablesError
from weft.host.traffic_rule_text import (
    ChainRules,
    drifted,
    forward_chain,
    masq_chain,
    restore_text,
    tables,
)
from weft.status import IptablesStatus

log = logging.getLogger(__name__)

DEFAULT_RESYNC = 5.0  # seconds, flanneld's --iptables-resync default


class IptablesAdapter(Protocol):
    def save(self, table: str) -> str: ...
    def restore(self, text: str) -> None: ...
    def supports_random_fully(self) -> bool: ...


def wanted_chains(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network,
                  ip_masq: bool,
                  forward_rules: bool, random_fully: bool,
                  forward_devices: Sequence[str] = ()) -> list[ChainRules]:
    chains = []
    if ip_masq:
        chains.append(masq_chain(network, subnet, random_fully))
    if forward_rules:
        chains.append(forward_chain(network, forward_devices))
    return chains


def start_traffic_rules(network: IPv4Network | None, subnet: IPv4Network,
                        previous: IPv4Network | None, ip_masq: bool, forward_rules: bool,
                        random_fully: bool = True, resync: float = DEFAULT_RESYNC,
                        iptables: IptablesAdapter | None = None,
                        forward_devices: Sequence[str] = (),
                        ipv6: tuple[IPv6Network, IPv6Network] | None = None,
                        ip6tables: IptablesAdapter | None = None) -> TrafficRules | None:
    """The daemon's hook, once the lease is known: None when neither kind of rule is wanted
    (or there is no IPv4 network). `previous` is the subnet of an earlier run's subnet.env;
    its rules go in the first apply's flush of our chains. ipv6: the dual-stack network and
    our IPv6 subnet, whose rules (the same, through ip6tables) are kept beside the IPv4 ones."""
    if not (ip_masq or forward_rules) or network is None:
        return None
    if iptables is None:
        from weft.host.iptables import Iptables

        iptables = Iptables()
    # Probed once: flanneld likewise decides --random-fully at start-up.
    fully = ip_masq and random_fully and iptables.supports_random_fully()
    if ip_masq and not fully:
        log.info("masquerading without --random-fully (%s)",
                 "disabled" if not random_fully else "not supported here")
    if ip_masq and previous is not None and previous != subnet:
        log.info("masquerade rules of the previous subnet %s are replaced by those of %s",
                 previous, subnet)
    family6 = None
    if ipv6 is not None:
        if ip6tables is None:
            from weft.host.iptables import Iptables

            ip6tables = Iptables(version=6)
        fully6 = ip_masq and random_fully and ip6tables.supports_random_fully()
        family6 = (wanted_chains(*ipv6, ip_masq, forward_rules, fully6, forward_devices),
                   ip6tables)
    traffic = TrafficRules(wanted_chains(network, subnet, ip_masq, forward_rules, fully,
                                         forward_devices), iptables, resync, ipv6=family6)
    traffic.start()
    return traffic


class TrafficRules:
    """Apply `chains` now, then keep them applied from a thread until stop()."""

    def __init__(self, chains: list[ChainRules], iptables: IptablesAdapter,
                 resync: float = DEFAULT_RESYNC,
                 ipv6: tuple[list[ChainRules], IptablesAdapter] | None = None) -> None:
        self.chains = chains
        self.iptables = iptables
        # (label, chains, tool) per address family: ip6tables' after iptables' when dual-stack
        self.families = [("", chains, iptables)]
        if ipv6 is not None:
            self.families.append(("ip6 ", *ipv6))
        self.resync = resync
        self.resyncs = 0  # re-applications after the first successful apply
        self.applied = False
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="weft-iptables", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking; the rules stay installed (flanneld's behaviour too)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def check(self) -> bool:
        """Re-apply when the kernel's rules differ from the wanted ones; True if it did.
        Failures are logged once per distinct message and retried next period."""
        problems: list[str] = []
        try:
            for label, chains, tool in self.families:
                saved = {table: tool.save(table) for table in tables(chains)}
                found = [label + p for c in chains for p in drifted(c, saved[c.table])]
                if found:
                    tool.restore(restore_text(chains, saved))
                    problems += found
            if not problems:
                self.applied = True
                self._clear_error()
                return False
        except IptablesError as exc:
            if str(exc) != self.last_error:
                log.error("iptables rules not applied (retrying every %gs): %s", self.resync,
                          exc)
            self.last_error = str(exc)
            return False
        if self.applied:
            self.resyncs += 1
            log.warning("iptables rules re-applied: %s", "; ".join(problems))
        else:
            log.info("iptables rules applied: %s",
                     ", ".join(f"{label}{c.table} {c.chain}" for label, chains, _ in self.families
                               for c in chains))
        self.applied = True
        self._clear_error()
        return True

    def _clear_error(self) -> None:
        if self.last_error is not None:
            log.info("iptables rules applied again after: %s", self.last_error)
            self.last_error = None

    def _run(self) -> None:
        while not self._stop.wait(self.resync):
            self.check()

    def status(self) -> IptablesStatus:
        return IptablesStatus(chains=tuple(f"{label.strip() + ':' if label else ''}"
                                           f"{c.table}/{c.chain}"
                                           for label, chains, _ in self.families
                                           for c in chains),
                              applied=self.applied, resyncs=self.resyncs, error=self.last_error)
