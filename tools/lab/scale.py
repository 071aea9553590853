"""`weft bench --scale N`: one real `weft run` against an etcd holding N other hosts' leases.

A one-host lab: etcd in the fabric namespace is filled with N vxlan leases (each on its own etcd
lease, as flanneld leaves them; PublicIPs distinct, from 198.18.0.0/15, the benchmarking range,
since the fabric's /24 holds only 253 hosts and these peers never carry traffic). Then `weft run`
starts in the host namespace and we measure, from its start: when subnet.env appears; when the
kernel holds all N neighbours and routes on weft.<VNI> (read from /proc/<pid>/net/{arp,route},
which show the daemon's namespace without entering it, and cost it nothing); its RSS; the peer
table's size (from `weft status`); the fast path's time per packet with 2 and with N peers; and
lease events at `rate` per second (a new VtepMAC per event) with the lag from each etcd write to
the kernel neighbour showing the new MAC.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from weft.control.lease import LeaseAttrs, subnet_key
from weft.tools.lab import netns
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import Lab

PUBLIC_BASE = int(IPv4Address("198.18.0.1"))
DEVICE = "weft.1"
TXN_OPS = 128  # etcd's default --max-txn-ops


def network_for(peers: int, subnet_len: int = 24) -> IPv4Network:
    """The smallest network (at least a /16) with room for `peers` subnets plus our own.

    Here and not in microbench, which loads numba: this process must not map the compiler
    while the daemon's RSS is measured (pages two processes map count in both, and the daemon
    could not hand them back to the kernel).
    """
    prefix = min(16, subnet_len - peers.bit_length())
    return IPv4Network(f"10.0.0.0/{prefix}")


def peer_mac(k: int, generation: int = 0) -> str:
    return f"02:{generation & 0xFF:02x}:00:{k >> 16 & 0xFF:02x}:{k >> 8 & 0xFF:02x}:{k & 0xFF:02x}"


def peer_subnets(network: IPv4Network, peers: int) -> list[IPv4Network]:
    """Every subnet but the first, which stays free for the daemon (its first choice is random
    among free ones, so leaving exactly one free makes it deterministic)."""
    return list(network.subnets(new_prefix=24))[1:peers + 1]


def _fill(endpoint: str, network: str, peers: int) -> list[int]:
    """In the fabric namespace: N lease keys, each attached to its own etcd lease (TTL 1 day)."""
    import pyetcd

    host, port = endpoint.split("//")[1].split(":")
    client = pyetcd.client(host, int(port))
    tx = client.transactions
    puts, lease_ids = [], []
    for k, subnet in enumerate(peer_subnets(IPv4Network(network), peers)):
        grant = client.lease(86400)
        lease_ids.append(grant.id)
        attrs = LeaseAttrs(IPv4Address(PUBLIC_BASE + k), backend_type="vxlan",
                           backend_data={"VNI": 1, "VtepMAC": peer_mac(k)})
        puts.append(tx.put(f"{PREFIX}/subnets/{subnet_key(subnet)}", attrs.to_json(),
                           lease=grant.id))
        if len(puts) == TXN_OPS:
            client.transaction(compare=[], success=puts, failure=[])
            puts = []
    if puts:
        client.transaction(compare=[], success=puts, failure=[])
    client.close()
    return lease_ids


def _churn(endpoint: str, network: str, peers: int, lease_ids: list[int], rate: float,
           seconds: float) -> list[tuple[str, str, float]]:
    """In the fabric namespace: `rate` lease changes a second (a new VtepMAC each), paced."""
    import pyetcd

    host, port = endpoint.split("//")[1].split(":")
    client = pyetcd.client(host, int(port))
    subnets = peer_subnets(IPv4Network(network), peers)
    writes = []
    start = time.time()
    for i in range(int(rate * seconds)):
        time.sleep(max(0.0, start + i / rate - time.time()))
        k = i % peers
        mac = peer_mac(k, generation=1 + i // peers)
        attrs = LeaseAttrs(IPv4Address(PUBLIC_BASE + k), backend_type="vxlan",
                           backend_data={"VNI": 1, "VtepMAC": mac})
        client.put(f"{PREFIX}/subnets/{subnet_key(subnets[k])}", attrs.to_json(),
                   lease=lease_ids[k])
        writes.append((str(subnets[k].network_address), mac, time.time()))
    client.close()
    return writes


def kernel_counts(pid: int) -> tuple[int, int]:
    """(permanent neighbours, /24 routes) on the vxlan device in `pid`'s namespace."""
    arp = Path(f"/proc/{pid}/net/arp").read_text().splitlines()[1:]
    neighbours = sum(1 for line in arp if line.split()[-1] == DEVICE and line.split()[2] == "0x6")
    routes = 0
    for line in Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        # a /24 (mask in the kernel's host-order hex): a peer's route, not the network's
        routes += fields[0] == DEVICE and fields[7] == "00FFFFFF"
    return neighbours, routes


def neighbour_macs(pid: int) -> dict[str, str]:
    return {f[0]: f[3] for line in Path(f"/proc/{pid}/net/arp").read_text().splitlines()[1:]
            if (f := line.split())[-1] == DEVICE}


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def _wait(what: str, done: Callable[[], bool], proc, timeout: float, log) -> float:
    start = time.monotonic()
    while not done():
        if proc.poll() is not None:
            raise RuntimeError(f"weft run exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic()


def measure(peers: int, rate: float = 100.0, seconds: float = 3.0,
            log: Callable[[str], None] = print, timeout: float = 120.0,
            packet_rounds: int = 5) -> dict:
    network = network_for(peers)
    every = list(network.subnets(new_prefix=24))
    first, last = every[0], every[-1]
    extra = {"SubnetMin": str(first.network_address), "SubnetMax": str(last.network_address)}
    with Lab(hosts=1) as lab:
        cluster = Cluster(lab, backend="vxlan", network=str(network), log=log)
        cluster.config = {"Network": str(network), **extra, "Backend": {"Type": "vxlan"}}
        cluster.start_etcd()
        log(f"[scale] filling etcd with {peers} leases in {network} ...")
        lease_ids = netns.call_in(lab.fabric, _fill, cluster.env["WEFT_ETCD_ENDPOINTS"],
                                  str(network), peers, timeout=600)
        subnet_file = cluster.subnet_file(0)
        log("[scale] starting weft run ...")
        t0 = time.monotonic()
        cluster.start_weft(0)
        proc = cluster.host(0).proc
        pid = proc.pid
        t_env = _wait("subnet.env", subnet_file.exists, proc, timeout, log)
        t_kernel = _wait(f"{peers} neighbours and routes",
                         lambda: min(kernel_counts(pid)) >= peers, proc, timeout, log)
        status = _wait_table(cluster, peers, proc, timeout)
        t_table = time.monotonic()
        neighbours, routes = kernel_counts(pid)
        rss, _ = rss_mb(pid)
        result = {
            "peers": peers, "network": str(network),
            "subnet_env_s": t_env - t0, "kernel_programmed_s": t_kernel - t0,
            "table_programmed_s": t_table - t0, "kernel_neighbours": neighbours,
            "kernel_routes": routes, "table_peers": len(status.get("peers", [])),
            "unprogrammed": len(status.get("unprogrammed", {})), "rss_mb": rss,
        }
        log(f"[scale] subnet.env {result['subnet_env_s']:.2f}s, kernel {neighbours} neighbours "
            f"{routes} routes at {result['kernel_programmed_s']:.2f}s, RSS {rss:.0f} MB")
        result["events"] = _events(lab, cluster, pid, network, peers, lease_ids, rate, seconds)
        result["rss_after_events_mb"], result["rss_peak_mb"] = rss_mb(pid)
        log(f"[scale] events: {result['events']}")
    result["per_packet"] = _per_packet(peers, packet_rounds)
    return result


def _wait_table(cluster: Cluster, peers: int, proc, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.status(0) or {}
        if len(status.get("peers", [])) >= peers and status.get("ready"):
            return status
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"peer table holds {len(status.get('peers', []))} of {peers}")
        time.sleep(0.05)


def _events(lab: Lab, cluster: Cluster, pid: int, network: IPv4Network, peers: int,
            lease_ids: list[int], rate: float, seconds: float) -> dict:
    writer = netns.spawn_in(lab.fabric, _churn, cluster.env["WEFT_ETCD_ENDPOINTS"], str(network),
                            peers, lease_ids, rate, seconds)
    seen: dict[tuple[str, str], float] = {}
    writes_end = time.time() + seconds
    deadline = writes_end + 30
    writes: list | None = None
    try:
        while time.time() < deadline:
            now = time.time()
            for ip, mac in neighbour_macs(pid).items():
                seen.setdefault((ip, mac), now)
            if writes is None and now > writes_end:
                writes = writer.result(30)
            if writes is not None and all((ip, mac) in seen for ip, mac, _ in writes):
                break
            time.sleep(0.005)
        if writes is None:
            writes = writer.result(30)
    finally:
        writer.kill()
    lags = [seen[(ip, mac)] - t for ip, mac, t in writes if (ip, mac) in seen]
    half = len(lags) // 2
    return {
        "written": len(writes), "applied": len(lags),
        "write_rate": len(writes) / max(writes[-1][2] - writes[0][2], 1e-9) if writes else 0,
        "lag_p50_ms": statistics.median(lags) * 1e3 if lags else None,
        "lag_p95_ms": sorted(lags)[int(0.95 * (len(lags) - 1))] * 1e3 if lags else None,
        "lag_max_ms": max(lags) * 1e3 if lags else None,
        # falling behind shows as lag growing through the run
        "lag_first_half_ms": statistics.median(lags[:half]) * 1e3 if half else None,
        "lag_second_half_ms": statistics.median(lags[half:]) * 1e3 if half else None,
    }


def _per_packet(peers: int, rounds: int) -> dict:
    """Interleaved rounds at 2 and at N peers (shared CPUs are noisy): median and best."""
    from weft.tools.lab.microbench import per_packet_ns

    runs: dict[int, list[float]] = {2: [], peers: []}
    for _ in range(rounds):
        for count in runs:
            runs[count].append(per_packet_ns(count, seconds=0.3)["ns_per_packet"])
    return {str(count): {"median_ns": statistics.median(v), "best_ns": min(v)}
            for count, v in runs.items()}


def format_table(r: dict) -> str:
    ev, pp = r["events"], r["per_packet"]
    two, many = pp["2"], pp[str(r["peers"])]
    rows = [
        ("measure", "weft", "target"),
        ("subnet.env written", f"{r['subnet_env_s']:.2f} s", "<= 2 s"),
        ("all peers in kernel", f"{r['kernel_programmed_s']:.2f} s "
         f"({r['kernel_neighbours']} neigh, {r['kernel_routes']} routes)", "<= 2 s"),
        ("all peers in table", f"{r['table_programmed_s']:.2f} s ({r['table_peers']} peers, "
         f"{r['unprogrammed']} unprogrammed)", "<= 2 s"),
        ("RSS with all peers", f"{r['rss_mb']:.0f} MB (peak {r['rss_peak_mb']:.0f})", "<= 150 MB"),
        ("fast path, 2 peers", f"{two['median_ns']:.0f} ns/pkt (best {two['best_ns']:.0f})", ""),
        (f"fast path, {r['peers']} peers", f"{many['median_ns']:.0f} ns/pkt "
         f"(best {many['best_ns']:.0f})", "flat"),
        ("lease events", f"{ev['applied']}/{ev['written']} applied at {ev['write_rate']:.0f}/s",
         "100/s"),
        ("event lag p50/p95/max", _ms(ev, "lag_p50_ms") + " / " + _ms(ev, "lag_p95_ms") + " / "
         + _ms(ev, "lag_max_ms"), ""),
        ("lag 1st half / 2nd half", _ms(ev, "lag_first_half_ms") + " / "
         + _ms(ev, "lag_second_half_ms"), "no growth"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.append(f"({r['peers']} leases in {r['network']}; times from `weft run` start)")
    return "\n".join(lines)


def _ms(d: dict, key: str) -> str:
    return "-" if d.get(key) is None else f"{d[key]:.0f} ms"


def run_scale(peers: int, as_json: bool = False, rate: float = 100.0, seconds: float = 3.0,
              log: Callable[[str], None] = print) -> int:
    result = measure(peers, rate=rate, seconds=seconds, log=log)
    print(json.dumps(result, indent=2) if as_json else format_table(result))
    return 0
