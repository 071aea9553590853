"""Soak: pods keep talking while other hosts join and leave; watch the daemons for leaks.

    python -m weft.tools.lab.soak --seconds 600 [--json soak.json]

Two long-lived weft hosts carry traffic between their pods the whole time: a ping every 0.2 s
and an iperf3 TCP stream (rate-limited, so the churn still gets CPU). Two more hosts churn: each
cycle one of them starts `weft run`, takes a lease and is seen as a peer, then stops, and its
lease is deleted from etcd (a stopped weft keeps its lease as flanneld does; deleting it stands
for the lease expiring). A sample after each join and after each leave has settled records per
long-lived daemon: RSS, open fds, threads, peers, and stale peers (programmed peers whose lease
is gone).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from weft.control.lease import parse_subnet_key
from weft.tools.lab import probe
from weft.tools.lab.cluster import PREFIX, Cluster
from weft.tools.lab.topology import Lab

STEADY = (0, 1)  # hosts running weft for the whole soak, with one pod each
CHURN = (2, 3)  # hosts that join and leave
TCP_RATE = "200M"  # iperf3 -b: a steady stream that leaves CPU for the churn
SETTLE_TIMEOUT = 20.0


def process_sample(pid: int) -> dict[str, int]:
    """RSS (KiB), open fds and threads of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return {"rss_kib": int(fields["VmRSS"][0]), "threads": int(fields["Threads"][0]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


class Soak:
    def __init__(self, lab: Lab, log=print) -> None:
        self.lab = lab
        self.log = log
        self.cluster = Cluster(lab, backend="vxlan", log=log)
        self.samples: list[dict[str, Any]] = []
        self.cycles = 0

    # -- set-up and churn ---------------------------------------------------------------------
    def start(self) -> None:
        cluster = self.cluster
        for index in CHURN:
            cluster.host(index).kind = "idle"
        cluster.start_etcd()
        for index in STEADY:
            cluster.start_weft(index)
        cluster.wait_leases()
        cluster.wait_synced()
        for index in STEADY:
            h = cluster.host(index)
            h.pods = self.lab.add_pods(index, h.subnet, count=1, mtu=h.mtu)

    def leases(self) -> set[str]:
        keys = self.lab.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "--keys-only")
        names = (k.rsplit("/", 1)[-1] for k in keys.split() if k.strip())
        return {str(parse_subnet_key(name)[0]) for name in names}

    def join(self, index: int) -> None:
        cluster = self.cluster
        cluster.subnet_file(index).unlink(missing_ok=True)
        cluster.start_weft(index)
        h = cluster.host(index)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while "FLANNEL_SUBNET=" not in _read(cluster.subnet_file(index)):
            if h.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"churn host {index} took no lease:\n"
                                   f"{cluster.host_log(index)[-2000:]}")
            time.sleep(0.05)
        for line in _read(cluster.subnet_file(index)).splitlines():
            if line.startswith("FLANNEL_SUBNET="):
                h.subnet = IPv4Interface(line.split("=", 1)[1]).network
        self._wait_peers(lambda peers: str(h.subnet) in peers, f"host {index} to be a peer")

    def leave(self, index: int) -> None:
        cluster = self.cluster
        h = cluster.host(index)
        cluster.stop_weft(index)
        self.lab.etcdctl("del", f"{PREFIX}/subnets/{h.subnet.network_address}-"
                                f"{h.subnet.prefixlen}")
        gone, h.subnet, h.kind = str(h.subnet), None, "idle"
        self._wait_peers(lambda peers: gone not in peers, f"{gone} to be removed")

    def _wait_peers(self, done, what: str) -> None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not all(done(self.peers(i)) for i in STEADY):
            if time.monotonic() > deadline:
                self.log(f"[soak] waited {SETTLE_TIMEOUT:g}s for {what}; going on")
                return
            time.sleep(0.1)

    def peers(self, index: int) -> set[str]:
        status = self.cluster.status(index) or {}
        return {p["subnet"] for p in status.get("peers", [])}

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, elapsed: float, phase: str) -> None:
        leases = self.leases()
        for index in STEADY:
            h = self.cluster.host(index)
            row = {"t": round(elapsed, 1), "host": index, "cycle": self.cycles, "phase": phase,
                   **process_sample(h.proc.pid)}
            peers = self.peers(index)
            row["peers"] = len(peers)
            row["stale_peers"] = len(peers - leases)
            self.samples.append(row)

    def run(self, seconds: float) -> dict[str, Any]:
        steady = [self.cluster.host(i) for i in STEADY]
        src, dst = steady[0].pods[0], steady[1].pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=20)
        traffic = _Traffic(self.lab, src, dst, seconds)
        traffic.start()
        start = time.monotonic()
        time.sleep(1.0)
        self.sample(time.monotonic() - start, "start")  # baseline, with traffic flowing
        while time.monotonic() - start < seconds - 1:
            index = CHURN[self.cycles % len(CHURN)]
            self.join(index)
            time.sleep(1.0)
            self.sample(time.monotonic() - start, "joined")
            self.leave(index)
            self.cycles += 1
            time.sleep(1.0)
            self.sample(time.monotonic() - start, "left")
        result = traffic.finish()
        return {"seconds": seconds, "cycles": self.cycles, "samples": self.samples, **result}


class _Traffic:
    """A ping every 0.2 s and a rate-limited iperf3 TCP stream, pod to pod, for `seconds`."""

    def __init__(self, lab: Lab, src, dst, seconds: float) -> None:
        self.lab, self.src, self.dst, self.seconds = lab, src, dst, seconds
        self.pings: list = []
        self._ping_thread = threading.Thread(target=self._ping, daemon=True)
        self._server = self._client = None

    def _ping(self) -> None:
        count = max(int(self.seconds / 0.2) - 5, 1)
        self.pings = probe.ping_detail(self.src.ns, str(self.dst.ip), count=count, timeout=1.0,
                                       interval=0.2)

    def start(self) -> None:
        self._server = self.lab.run(self.dst.ns, ["iperf3", "-s", "-1", "-B", str(self.dst.ip)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        self._client = self.lab.run(self.src.ns, ["iperf3", "-c", str(self.dst.ip), "-t",
                                                  str(int(self.seconds)), "-b", TCP_RATE, "-J"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._ping_thread.start()

    def finish(self) -> dict[str, Any]:
        out, err = self._client.communicate(timeout=self.seconds + 60)
        self._server.wait(timeout=10)
        self._ping_thread.join(timeout=self.seconds + 60)
        try:
            end = json.loads(out)["end"]
            tcp = {"tcp_gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
                   "tcp_retransmits": end["sum_sent"].get("retransmits", 0)}
        except (ValueError, KeyError):
            tcp = {"tcp_gbit_s": 0.0, "tcp_error": (err or out)[-500:]}
        answered = sum(p.ok for p in self.pings)
        return {"pings_sent": len(self.pings), "pings_answered": answered, **tcp}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per steady host: first and last sample and the extremes, for the verdict and the test."""
    out = {}
    for index in STEADY:
        rows = [r for r in result["samples"] if r["host"] == index]
        first, last = rows[0], rows[-1]
        out[index] = {
            "rss_kib": (first["rss_kib"], last["rss_kib"], max(r["rss_kib"] for r in rows)),
            "fds": (first["fds"], last["fds"], max(r["fds"] for r in rows)),
            "threads": (first["threads"], last["threads"], max(r["threads"] for r in rows)),
            "stale_peers_max": max(r["stale_peers"] for r in rows),
            "stale_peers_last": last["stale_peers"],
        }
    return out


def format_table(result: dict[str, Any]) -> str:
    head = ("t s", "cycle", "phase", "host", "RSS MiB", "fds", "threads", "peers", "stale")
    rows = [head] + [(f"{r['t']:.0f}", str(r["cycle"]), r["phase"], str(r["host"]),
                      f"{r['rss_kib'] / 1024:.1f}", str(r["fds"]), str(r["threads"]),
                      str(r["peers"]), str(r["stale_peers"])) for r in result["samples"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"{result['cycles']} join/leave cycles in {result['seconds']:g}s; pings "
                 f"{result['pings_answered']}/{result['pings_sent']} answered; TCP "
                 f"{result['tcp_gbit_s']:.2f} Gbit/s (limit {TCP_RATE}bit/s), "
                 f"{result.get('tcp_retransmits', '?')} retransmits")
    for index, s in summarize(result).items():
        lines.append(f"host {index}: RSS {s['rss_kib'][0] / 1024:.1f} -> "
                     f"{s['rss_kib'][1] / 1024:.1f} MiB (max {s['rss_kib'][2] / 1024:.1f}), "
                     f"fds {s['fds'][0]} -> {s['fds'][1]} (max {s['fds'][2]}), threads "
                     f"{s['threads'][0]} -> {s['threads'][1]} (max {s['threads'][2]}), stale "
                     f"peers max {s['stale_peers_max']}, at the end {s['stale_peers_last']}")
    return "\n".join(lines)


def run_soak(seconds: float, log=print) -> dict[str, Any]:
    with Lab(hosts=len(STEADY) + len(CHURN)) as lab:
        soak = Soak(lab, log=log)
        soak.start()
        return soak.run(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weft.tools.lab.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--json", metavar="PATH", help="also write the samples as JSON")
    args = parser.parse_args(argv)
    result = run_soak(args.seconds, log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
