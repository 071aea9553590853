"""What `weft status` prints: a status snapshot (the control socket's reply) as plain text.

Pure, so the layout is tested without a daemon; every section tolerates missing keys because
the daemon reports what it has (no lease while waiting for etcd, no datapath before start).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from ipaddress import ip_network
from typing import Any


def format_duration(seconds: float) -> str:
    """86000 -> '23h53m20s'; negative means already expired."""
    if seconds < 0:
        return "expired " + format_duration(-seconds) + " ago"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)  # drop leading zero units, keep the rest for a fixed-looking shape
    return "".join(f"{value}{unit}" for value, unit in parts)


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers)] + [line(r) for r in rows]


def _lease_lines(status: Mapping) -> list[str]:
    lease = _mapping(status.get("lease"))
    state = "ready" if status.get("ready") else "not ready"
    if status.get("reason") and not status.get("ready"):
        state += f" ({status['reason']})"
    if not lease:
        return [f"state:     {state}", "lease:     none"]
    expires = lease.get("expires_in")
    left = format_duration(float(expires)) if isinstance(expires, int | float) else "unknown"
    return [
        f"state:     {state}",
        f"subnet:    {lease.get('subnet', '?')}",
        f"public IP: {lease.get('public_ip', '?')}",
        f"backend:   {lease.get('backend', '?')}",
        f"expires:   in {left}" if not left.startswith("expired") else f"expires:   {left}",
    ]


def _peer_lines(status: Mapping) -> list[str]:
    peers = [p for p in status.get("peers") or [] if isinstance(p, Mapping)]
    lines = [f"peers ({len(peers)}):"]
    if not peers:
        return lines + ["  none"]
    rows = [[str(p.get("subnet", "?")), str(p.get("public_ip", "?")),
             str(p.get("vtep_mac") or "-")] for p in peers]
    rows.sort(key=_subnet_order)
    return lines + _table(["SUBNET", "PUBLIC IP", "VTEP MAC"], rows)


def _subnet_order(row: list[str]) -> tuple:
    # Numeric order (10.1.2.0 before 10.1.16.0); unparsable subnets go last, as text.
    try:
        net = ip_network(row[0], strict=False)
    except ValueError:
        return (1, 0, row[0])
    return (0, int(net.network_address), row[0])


def _by_reason(title: str, counts: Mapping) -> list[str]:
    items = sorted((str(k), v) for k, v in counts.items() if v)
    if not items:
        return [f"{title}: none"]
    width = max(len(name) for name, _ in items)
    return [f"{title}:"] + [f"  {name.ljust(width)}  {value}" for name, value in items]


def _counter_lines(status: Mapping) -> list[str]:
    counters = _mapping(status.get("counters"))
    rows = []
    for direction in ("egress", "ingress"):
        per_dir = _mapping(counters.get(direction))
        rows.append([direction, str(per_dir.get("packets", 0)), str(per_dir.get("bytes", 0))])
    lines = ["traffic:"] + _table(["DIRECTION", "PACKETS", "BYTES"], rows)
    lines += _by_reason("drops", _mapping(counters.get("drops")))
    lines += _by_reason("slow path", _mapping(counters.get("slow_path")))
    return lines


def _etcd_lines(status: Mapping) -> list[str]:
    etcd = _mapping(status.get("etcd"))
    if not etcd:
        return []
    if etcd.get("up"):
        line = "etcd:      reachable"
    else:
        since = etcd.get("down_since")
        when = time.strftime("%H:%M:%S", time.localtime(since)) if isinstance(
            since, int | float) else "?"
        down_for = etcd.get("down_for")
        ago = f" ({format_duration(float(down_for))} ago)" if isinstance(
            down_for, int | float) else ""
        line = (f"etcd:      unreachable since {when}{ago}, {etcd.get('retries', 0)} retries: "
                f"{etcd.get('last_error') or '?'}")
    lines = [line, f"watch:     {etcd.get('watch', '?')} "
                   f"({etcd.get('watch_restarts', 0)} restarts)"]
    keeper = _mapping(status.get("lease_keeper"))
    if keeper:
        lines.append(f"renewals:  {keeper.get('renewals', 0)} ok, "
                     f"{keeper.get('renew_failures', 0)} failed, "
                     f"{keeper.get('recreated', 0)} re-created after expiry/deletion")
    pending = _mapping(status.get("peer_sync")).get("pending_removal") or []
    if pending:
        lines.append(f"pending:   peers {', '.join(map(str, pending))} lost their lease; "
                     "removed after the grace period unless they come back")
    return lines


def _datapath_lines(status: Mapping) -> list[str]:
    datapath = _mapping(status.get("datapath"))
    if not datapath:
        return ["datapath:  not started"]
    extra = ", ".join(f"{k}={v}" for k, v in sorted(datapath.items()) if k != "mode")
    mode = str(datapath.get("mode", "?"))
    return [f"datapath:  {mode}" + (f" ({extra})" if extra else "")]


def _repair_lines(status: Mapping) -> list[str]:
    """Kernel state put back by the repair pass, and repairs the kernel still refuses."""
    repairs = _mapping(status.get("repairs"))
    done = ", ".join(f"{k}={v}" for k, v in sorted(repairs.items()) if v) or "none"
    lines = [f"repairs:   {done}"]
    for detail, why in sorted(_mapping(status.get("repair_failing")).items()):
        lines.append(f"  failing: {detail}: {why}")
    return lines


def _refused_lines(status: Mapping) -> list[str]:
    """Lease keys in etcd that the policy refuses now (never programmed), and why."""
    refused = _mapping(status.get("leases_rejected"))
    current = _mapping(refused.get("current"))
    if not refused:
        return []
    if not current:
        return ["refused:   no lease refused now"]
    rows = [[repr(str(key))[1:-1], str(_mapping(why).get("reason", "?")),
             str(_mapping(why).get("detail", ""))] for key, why in current.items()]
    return [f"refused leases ({len(rows)}, never programmed):"] + _table(
        ["KEY", "REASON", "DETAIL"], rows)


def _iptables_lines(status: Mapping) -> list[str]:
    """Our masquerade/forward rules: which chains, how often re-applied, a failing apply."""
    iptables = _mapping(status.get("iptables"))
    if not iptables:
        return []
    chains = ", ".join(map(str, iptables.get("chains") or [])) or "none"
    state = "applied" if iptables.get("applied") else "not applied"
    lines = [f"iptables:  {chains} {state}, {iptables.get('resyncs', 0)} resyncs"]
    if iptables.get("error"):
        lines.append(f"  failing: {iptables['error']}")
    return lines


def format_status(status: dict) -> str:
    """The `weft status` report: lease, etcd, datapath, peers, counters, repairs."""
    sections = [_lease_lines(status), _etcd_lines(status), _datapath_lines(status),
                _peer_lines(status), _refused_lines(status), _counter_lines(status),
                _repair_lines(status), _iptables_lines(status)]
    return "\n".join(line for section in sections for line in section) + "\n"
