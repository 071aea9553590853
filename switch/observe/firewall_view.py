"""`weft doctor`'s reading of the filter table: the FORWARD policy and what INPUT does to the
backend's UDP port, judged from `iptables-save -t filter` text (pure, so tested on fixtures).

The port check walks INPUT (and the chains it jumps to) in order, as the kernel would for a new
UDP datagram to the port from a host it knows nothing about. A rule that also matches on
something doctor cannot decide (source address, input interface, conntrack state, ...) is
"conditional": it neither proves the port open nor closed, and a conditional DROP is a
warning. nftables rules outside iptables' tables are not seen; the findings say so.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network

from weft.observe.doctor_checks import FAIL, OK, WARN, Finding

# Matches that do not narrow which UDP datagrams a rule takes: modules and comments.
_NEUTRAL_OPTIONS = {"-m", "--comment"}
_DROPS = {"DROP", "REJECT"}
_MAX_DEPTH = 16  # user chains jumping to user chains; iptables itself refuses loops


@dataclass
class Rule:
    chain: str
    text: str  # as iptables-save printed it
    target: str = ""
    protocol: str | None = None
    protocol_negated: bool = False
    ports: list[tuple[int, int]] | None = None  # --dport / --dports ranges; None = any
    ports_negated: bool = False
    # (network, negated); an IPv6 network in ip6tables-save text
    source: tuple[IPv4Network | IPv6Network, bool] | None = None
    dest: tuple[IPv4Network | IPv6Network, bool] | None = None
    in_iface: str | None = None  # -i NAME (not negated)
    conditional: bool = False  # matches on something else (interface, state, ...)


@dataclass
class FilterTable:
    policies: dict[str, str] = field(default_factory=dict)
    rules: dict[str, list[Rule]] = field(default_factory=dict)


def parse_filter(text: str) -> FilterTable:
    """The filter table's chains, policies and rules from iptables-save output."""
    table = FilterTable()
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            current = line[1:]
        elif current != "filter":
            continue
        elif line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            table.policies[name] = rest.split(" ", 1)[0]
            table.rules.setdefault(name, [])
        elif line.startswith("-A "):
            rule = _parse_rule(line)
            table.rules.setdefault(rule.chain, []).append(rule)
    return table


def _parse_rule(line: str) -> Rule:
    try:
        words = shlex.split(line)
    except ValueError:  # an unbalanced quote: keep the rule, unreadable means conditional
        words = line.split()
    rule = Rule(chain=words[1], text=line)
    negate = False
    i = 2
    while i < len(words):
        word = words[i]
        i += 1
        if word == "!":
            negate = True
            continue
        values = []  # an option's values run up to the next option (some take none: --syn)
        while i < len(words) and words[i] != "!" and not words[i].startswith("-"):
            values.append(words[i])
            i += 1
        value = values[0] if values else ""
        if word in ("-j", "-g"):
            rule.target = value
            break  # what follows are the target's options (--reject-with ...), not matches
        if word == "-p":
            rule.protocol, rule.protocol_negated = value.lower(), negate
        elif word in ("--dport", "--dports", "--destination-port", "--destination-ports"):
            rule.ports, rule.ports_negated = _ports(value), negate
        elif word in ("-s", "-d"):
            try:
                net = (ip_network(value, strict=False), negate)
            except ValueError:
                rule.conditional = True
            else:
                if word == "-s":
                    rule.source = net
                else:
                    rule.dest = net
        elif word not in _NEUTRAL_OPTIONS:
            rule.conditional = True  # -i, --ctstate, --sport, -m set, and anything unknown
            if word in ("-i", "--in-interface") and not negate:
                rule.in_iface = value
        negate = False
    return rule


def _ports(text: str) -> list[tuple[int, int]] | None:
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        try:
            ranges.append((int(low or 0), int(high or low or 65535)))
        except ValueError:
            return None
    return ranges


def _takes_port(rule: Rule, port: int) -> bool:
    """Whether the rule's protocol and port matches take a UDP datagram to `port`."""
    if rule.protocol not in (None, "all", "udp", "17"):
        if not rule.protocol_negated:
            return False
    elif rule.protocol not in (None, "all") and rule.protocol_negated:
        return False
    if rule.ports is None:
        return True
    inside = any(low <= port <= high for low, high in rule.ports)
    return inside != rule.ports_negated


def _narrowed(rule: Rule) -> bool:
    """The rule only takes some senders (by address or anything doctor cannot judge)."""
    return rule.conditional or rule.source is not None or rule.dest is not None


def port_check(text: str, port: int) -> Finding:
    """Does filter INPUT let a new datagram to udp/`port` in? See the module doc."""
    table = parse_filter(text)
    maybe: list[str] = []
    verdict = _walk(table, "INPUT", port, maybe, 0)
    caveat = " (nftables rules outside iptables not read)"
    accept_fix = (f"iptables -I INPUT -p udp --dport {port} -j ACCEPT (firewalld: "
                  f"firewall-cmd --permanent --add-port={port}/udp && firewall-cmd --reload)")
    if verdict is not None and verdict.target in _DROPS:
        delete = "iptables -D " + verdict.text[3:]
        return Finding("firewall", FAIL,
                       f"filter {verdict.chain} rule `{verdict.text}` drops udp/{port}, the "
                       "backend's port: no peer's packets arrive",
                       f"{delete}, or insert an accept before it: {accept_fix}")
    if verdict is None and table.policies.get("INPUT") == "DROP":
        return Finding("firewall", FAIL,
                       f"filter INPUT policy DROP and no rule accepts udp/{port}, the backend's "
                       "port", accept_fix)
    if verdict is not None:
        found = f"udp/{port} accepted by `{verdict.text}`"
    else:
        found = f"nothing in filter INPUT drops udp/{port}"
    if maybe:
        return Finding("firewall", WARN,
                       f"{found}, but these may drop it for some senders: {'; '.join(maybe)}"
                       + caveat, f"check them; {accept_fix}")
    return Finding("firewall", OK, found + caveat)


def _walk(table: FilterTable, chain: str, port: int, maybe: list[str],
          depth: int) -> Rule | None:
    """The rule that decides a datagram to `port` in `chain` (ACCEPT, DROP or REJECT), or
    None when the chain falls through. A RETURN ends a user chain like falling through."""
    if depth > _MAX_DEPTH:
        return None
    for rule in table.rules.get(chain, []):
        if not _takes_port(rule, port):
            continue
        if rule.target in table.rules:  # a jump into a user chain
            decided = _walk(table, rule.target, port, maybe, depth + 1)
            if decided is not None and not _narrowed(rule):
                return decided
            if decided is not None and decided.target in _DROPS:
                maybe.append(f"`{rule.text}` -> `{decided.text}`")
            continue
        if rule.target not in ("ACCEPT", "RETURN", *_DROPS):
            continue  # LOG, MARK, ...: the walk goes on
        if _narrowed(rule):
            if rule.target in _DROPS:
                maybe.append(f"`{rule.text}`")
            continue
        if rule.target == "RETURN":
            return None
        return rule
    return None


def forward_check(text: str, network: IPv4Network | IPv6Network | None,
                  tx_device: str | None = None, ipv6: bool = False) -> Finding:
    """A FORWARD policy of DROP (Docker sets one) drops pod traffic between hosts unless rules
    accept the pod network both ways, as `weft run --iptables-forward-rules` (WEFT-FWD) or
    flanneld's FLANNEL-FWD do. Only ACCEPT rules with -s/-d covering the network count.
    `tx_device`: weft's tunnel-GSO TX TAP when it exists; the host forwards what enters it
    (outer packets between PublicIPs), so a rule must accept that too.
    `ipv6`: `text` is ip6tables-save's and `network` the IPv6Network of a dual-stack config
    (check "forward_ipv6"), as weft's and flanneld's IPv6 forward rules accept it."""
    check, tool = ("forward_ipv6", "ip6tables") if ipv6 else ("forward", "iptables")
    table = parse_filter(text)
    policy = table.policies.get("FORWARD", "ACCEPT")
    if policy != "DROP":
        return Finding(check, OK, f"{tool} filter FORWARD policy {policy}" if ipv6
                       else f"filter FORWARD policy {policy}")
    if network is None:
        return Finding(check, WARN,
                       "filter FORWARD policy DROP; the pod network is unknown (no config, no "
                       "subnet file), so its accept rules were not checked")
    accepts_from, accepts_to = [], []
    for rule in _reachable(table, "FORWARD"):
        if rule.target != "ACCEPT":
            continue
        if _covers(rule.source, network):
            accepts_from.append(rule.text)
        if _covers(rule.dest, network):
            accepts_to.append(rule.text)
    fix = (f"run weft with --iptables-forward-rules (the default), or: {tool} -A FORWARD -s "
           f"{network} -j ACCEPT && {tool} -A FORWARD -d {network} -j ACCEPT")
    if accepts_from and accepts_to:
        if tx_device is not None and not any(
                rule.target == "ACCEPT" and rule.in_iface == tx_device
                for rule in _reachable(table, "FORWARD")):
            return Finding(check, FAIL,
                           f"filter FORWARD policy DROP; {network} is accepted, but not what "
                           f"enters {tx_device}: pod TCP sent as whole tunnel-GSO frames is "
                           "dropped", f"run weft with --iptables-forward-rules (the default), "
                           f"or: {tool} -A FORWARD -i {tx_device} -j ACCEPT")
        return Finding(check, OK, f"filter FORWARD policy DROP; {network} accepted both ways "
                       f"(`{accepts_from[0]}`, `{accepts_to[0]}`)")
    if not accepts_from and not accepts_to:
        return Finding(check, FAIL,
                       f"filter FORWARD policy DROP and no rule accepts the pod network "
                       f"{network}: forwarded pod traffic is dropped", fix)
    way = "from" if accepts_from else "to"
    return Finding(check, WARN, f"filter FORWARD policy DROP; only traffic {way} {network} "
                   "is accepted", fix)


def _covers(match: tuple[IPv4Network | IPv6Network, bool] | None,
            network: IPv4Network | IPv6Network) -> bool:
    """A -s/-d match (not negated) that takes all of `network`, of the same family."""
    return (match is not None and not match[1] and match[0].version == network.version
            and match[0].supernet_of(network))  # type: ignore[arg-type]


def _reachable(table: FilterTable, chain: str) -> list[Rule]:
    """Rules of `chain` and of every user chain reachable from it by jumps."""
    seen, todo, out = {chain}, [chain], []
    while todo:
        for rule in table.rules.get(todo.pop(), []):
            out.append(rule)
            if rule.target in table.rules and rule.target not in seen:
                seen.add(rule.target)
                todo.append(rule.target)
    return out
