"""What `weft status` prints: a status snapshot (the control socket's reply, read back into
weft.status.DaemonStatus) as plain text.

Pure, so the layout is tested without a daemon. Sections the daemon does not have yet (no lease
while waiting for etcd, no data path before start) are None and print as such.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from ipaddress import ip_network

from weft.status import BackendStatus, DaemonStatus


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


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return [line(headers)] + [line(r) for r in rows]


def _lease_lines(status: DaemonStatus) -> list[str]:
    lease = status.lease
    state = "ready" if status.ready else "not ready"
    if status.reason and not status.ready:
        state += f" ({status.reason})"
    if lease is None:
        return [f"state:     {state}", "lease:     none"]
    left = format_duration(lease.expires_in) if lease.expires_in is not None else "unknown"
    ipv6 = ([f"IPv6:      {lease.ipv6_subnet}, public IPv6 {lease.public_ipv6 or '?'}"]
            if lease.ipv6_subnet is not None else [])
    return [
        f"state:     {state}",
        f"subnet:    {lease.subnet}",
        f"public IP: {lease.public_ip}",
        *ipv6,
        f"backend:   {lease.backend or '?'}",
        f"expires:   in {left}" if not left.startswith("expired") else f"expires:   {left}",
    ]


def _peer_lines(backend: BackendStatus | None) -> list[str]:
    peers = backend.peers if backend is not None else ()
    lines = [f"peers ({len(peers)}):"]
    if not peers:
        return lines + ["  none"]
    headers = ["SUBNET", "PUBLIC IP", "VTEP MAC"]
    rows = [[p.subnet, p.public_ip, p.vtep_mac or "-"] for p in peers]
    if any(p.ipv6_subnet is not None for p in peers):  # dual-stack: each peer's IPv6 half
        headers += ["IPV6 SUBNET", "PUBLIC IPV6"]
        for row, p in zip(rows, peers, strict=True):
            row += [p.ipv6_subnet or "-", p.public_ipv6 or "-"]
    rows.sort(key=_subnet_order)
    return lines + _table(headers, rows)


def _subnet_order(row: list[str]) -> tuple:
    # Numeric order (10.1.2.0 before 10.1.16.0); unparsable subnets go last, as text.
    try:
        net = ip_network(row[0], strict=False)
    except ValueError:
        return (1, 0, row[0])
    return (0, int(net.network_address), row[0])


def _by_reason(title: str, counts: Mapping[str, int]) -> list[str]:
    items = sorted((name, value) for name, value in counts.items() if value)
    if not items:
        return [f"{title}: none"]
    width = max(len(name) for name, _ in items)
    return [f"{title}:"] + [f"  {name.ljust(width)}  {value}" for name, value in items]


def _counter_lines(backend: BackendStatus | None) -> list[str]:
    counters = backend.counters if backend is not None else None
    if counters is None:
        return ["traffic:   not counted (no userspace data path)"]
    rows = [[direction, str(figures.packets), str(figures.bytes)]
            for direction, figures in (("egress", counters.egress),
                                       ("ingress", counters.ingress))]
    lines = ["traffic:"] + _table(["DIRECTION", "PACKETS", "BYTES"], rows)
    lines += _by_reason("drops", counters.drops)
    lines += _by_reason("slow path", counters.slow_path)
    return lines


def _etcd_lines(status: DaemonStatus) -> list[str]:
    etcd = status.etcd
    if etcd.up:
        line = "etcd:      reachable"
    else:
        since = etcd.down_since
        when = time.strftime("%H:%M:%S", time.localtime(since)) if since is not None else "?"
        ago = f" ({format_duration(etcd.down_for)} ago)" if etcd.down_for is not None else ""
        line = (f"etcd:      unreachable since {when}{ago}, {etcd.retries} retries: "
                f"{etcd.last_error or '?'}")
    lines = [line, f"watch:     {etcd.watch} ({etcd.watch_restarts} restarts)"]
    keeper = status.lease_keeper
    if keeper is not None:
        lines.append(f"renewals:  {keeper.renewals} ok, {keeper.renew_failures} failed, "
                     f"{keeper.recreated} re-created after expiry/deletion")
    pending = status.peer_sync.pending_removal if status.peer_sync is not None else ()
    if pending:
        lines.append(f"pending:   peers {', '.join(pending)} lost their lease; "
                     "removed after the grace period unless they come back")
    return lines


def _datapath_lines(backend: BackendStatus | None) -> list[str]:
    datapath = backend.datapath if backend is not None else None
    if datapath is None:
        return ["datapath:  not started"]
    extra = ", ".join(f"{k}={v}" for k, v in sorted(datapath.details.items()))
    return [f"datapath:  {datapath.mode}" + (f" ({extra})" if extra else "")]


def _repair_lines(backend: BackendStatus | None) -> list[str]:
    """Kernel state put back by the repair pass, and repairs the kernel still refuses."""
    repair = backend.repair if backend is not None else None
    if repair is None:
        return ["repairs:   none"]
    done = ", ".join(f"{k}={v}" for k, v in sorted(repair.repairs.items()) if v) or "none"
    lines = [f"repairs:   {done}"]
    for detail, why in sorted(repair.failing.items()):
        lines.append(f"  failing: {detail}: {why}")
    return lines


def _refused_lines(status: DaemonStatus) -> list[str]:
    """Lease keys in etcd that the policy refuses now (never programmed), and why."""
    current = status.leases_rejected.current
    if not current:
        return ["refused:   no lease refused now"]
    rows = [[repr(key)[1:-1], why.reason, why.detail] for key, why in current.items()]
    return [f"refused leases ({len(rows)}, never programmed):"] + _table(
        ["KEY", "REASON", "DETAIL"], rows)


def _iptables_lines(status: DaemonStatus) -> list[str]:
    """Our masquerade/forward rules: which chains, how often re-applied, a failing apply."""
    iptables = status.iptables
    if iptables is None:
        return []
    chains = ", ".join(iptables.chains) or "none"
    state = "applied" if iptables.applied else "not applied"
    lines = [f"iptables:  {chains} {state}, {iptables.resyncs} resyncs"]
    if iptables.error:
        lines.append(f"  failing: {iptables.error}")
    return lines


def format_status(status: DaemonStatus) -> str:
    """The `weft status` report: lease, etcd, datapath, peers, counters, repairs."""
    backend = status.backend
    sections = [_lease_lines(status), _etcd_lines(status), _datapath_lines(backend),
                _peer_lines(backend), _refused_lines(status), _counter_lines(backend),
                _repair_lines(backend), _iptables_lines(status)]
    return "\n".join(line for section in sections for line in section) + "\n"
