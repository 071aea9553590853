"""The iptables rules of `--ip-masq` and `--iptables-forward-rules`, as iptables-restore text.

Pure functions, so the exact text is unit-tested without a kernel. The rules are flanneld's
(pkg/trafficmngr/iptables) in chains of weft's own, WEFT-POSTRTG (nat) and WEFT-FWD (filter),
each reached by one jump from the built-in chain. Every rule is written the way
`iptables-save` prints it back, so drift is found by comparing lines.

Why our own chains: each apply declares the chain, which makes `iptables-restore --noflush`
flush it before refilling it, inside the table's one atomic COMMIT. Rules of a previous
network or subnet (an earlier run's subnet.env) therefore vanish in the same transaction that
installs the current ones; no rule of anyone else is touched, and there is no moment without
masquerading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

MASQ_CHAIN = "WEFT-POSTRTG"
FORWARD_CHAIN = "WEFT-FWD"
MASQ_COMMENT = "weft masq"
FORWARD_COMMENT = "weft forward"
KUBE_PROXY_MARK = "0x4000/0x4000"  # kube-proxy masquerades these itself
MULTICAST = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"  # flanneld's IPv6 rules leave this out of masquerading instead


@dataclass(frozen=True)
class ChainRules:
    """Our chain in `table`, jumped to from the built-in chain `hook`."""

    table: str
    hook: str
    chain: str
    comment: str
    rules: tuple[str, ...]  # "-A <chain> ..." lines, as iptables-save prints them

    @property
    def jump(self) -> str:
        return f'-A {self.hook} -m comment --comment "{self.comment}" -j {self.chain}'


def _rule(chain: str, match: str, comment: str, target: str) -> str:
    return f'-A {chain} {match}-m comment --comment "{comment}" -j {target}'


def masq_chain(network: IPv4Network | IPv6Network, subnet: IPv4Network | IPv6Network,
               random_fully: bool) -> ChainRules:
    """flanneld's masquerade rules: traffic inside the cluster network keeps its addresses,
    pods talking to the outside get the host's address. The same rules for IPv6 (ip6tables),
    but for the multicast range."""
    masq = "MASQUERADE --random-fully" if random_fully else "MASQUERADE"
    c, n, s = MASQ_CHAIN, network, subnet
    multicast = MULTICAST if network.version == 4 else MULTICAST6
    rules = (
        _rule(c, f"-m mark --mark {KUBE_PROXY_MARK} ", MASQ_COMMENT, "RETURN"),
        _rule(c, f"-s {s} -d {n} ", MASQ_COMMENT, "RETURN"),  # our pods to other pods
        _rule(c, f"-s {n} -d {s} ", MASQ_COMMENT, "RETURN"),  # other pods to ours
        _rule(c, f"! -s {n} -d {s} ", MASQ_COMMENT, "RETURN"),  # outside to our pods
        _rule(c, f"-s {n} ! -d {multicast} ", MASQ_COMMENT, masq),  # pods to the outside
        _rule(c, f"! -s {n} -d {n} ", MASQ_COMMENT, masq),  # the host to remote pods
    )
    return ChainRules("nat", "POSTROUTING", c, MASQ_COMMENT, rules)


def forward_chain(network: IPv4Network | IPv6Network,
                  devices: Sequence[str] = ()) -> ChainRules:
    """Accept forwarding from and to the cluster network even under a FORWARD policy of DROP
    (Docker sets one), and whatever enters through `devices`: the TX TAP whose tunnel-GSO
    frames (outer headers already on, from our PublicIP to a peer's) the host forwards out the
    external interface."""
    c = FORWARD_CHAIN
    rules = (_rule(c, f"-s {network} ", FORWARD_COMMENT, "ACCEPT"),
             _rule(c, f"-d {network} ", FORWARD_COMMENT, "ACCEPT"),
             *(_rule(c, f"-i {device} ", FORWARD_COMMENT, "ACCEPT") for device in devices))
    return ChainRules("filter", "FORWARD", c, FORWARD_COMMENT, rules)


def restore_text(chains: Sequence[ChainRules], saved: dict[str, str]) -> str:
    """Input for `iptables-restore --noflush`: per table, declare (= flush) our chain, refill
    it, and leave exactly one jump to it: --noflush never flushes the built-in chain, so the
    jump is added only when `saved` (that table's iptables-save text) lacks it, and extra
    copies (which would run the rules twice) are deleted."""
    out: list[str] = []
    for table in tables(chains):
        ours = [c for c in chains if c.table == table]
        present = _lines(saved.get(table, ""))
        out.append(f"*{table}")
        out.extend(f":{c.chain} - [0:0]" for c in ours)
        for c in ours:
            jumps = present.count(c.jump)
            if jumps == 0:
                out.append(c.jump)
            out.extend(["-D" + c.jump[2:]] * max(jumps - 1, 0))
            out.extend(c.rules)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def drifted(chain: ChainRules, saved: str) -> list[str]:
    """What differs between `saved` (its table's iptables-save text) and the wanted state, in
    words for the log; empty when nothing does."""
    lines = _lines(saved)
    have = [line for line in lines if line.startswith(f"-A {chain.chain} ")]
    problems = []
    if lines.count(chain.jump) != 1:
        problems.append(f"{lines.count(chain.jump)} jumps from {chain.hook} to {chain.chain}")
    if have != list(chain.rules):
        problems.append(f"{chain.chain} has {len(have)} rules, not the {len(chain.rules)} wanted"
                        if len(have) != len(chain.rules) else f"{chain.chain} rules changed")
    return problems


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def tables(chains: Iterable[ChainRules]) -> list[str]:
    return list(dict.fromkeys(c.table for c in chains))
