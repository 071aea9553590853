"""`weft bench`: pod-to-pod figures for weft's backends beside the kernel's VXLAN, in one run.

Each path gets a fresh two-host lab with one pod per host: the kernel's VXLAN programmed exactly
as flanneld programs it (the reference), weft vxlan, weft udp and host-gw. Measured per path:
ICMP echo RTT (median of many), a TCP stream and a UDP flood. TCP and UDP use iperf3 when the
system has it; otherwise Python probes, which top out near 10 Gbit/s on this kind of machine
(so ratios above that are compressed): the table says which tool measured.

By default the hosts' eth0 veths behave like NICs on a wire (checksums and segmentation done
before a packet crosses); `--veth-offloads` keeps veth's defaults, where the kernel's VXLAN hands
64 KiB GSO packets across namespaces whole, which no physical wire carries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
from collections.abc import Callable

from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

PATHS = ("kernel-vxlan", "weft-vxlan", "weft-udp", "host-gw")


def _cluster(lab: Lab, path: str) -> Cluster:
    if path == "kernel-vxlan":
        cluster = Cluster(lab, backend="vxlan")
        cluster.start(pods_per_host=1, flannel_hosts=(0, 1))
        return cluster
    backend = {"weft-vxlan": "vxlan", "weft-udp": "udp", "host-gw": "host-gw"}[path]
    cluster = Cluster(lab, backend=backend)
    cluster.start(pods_per_host=1)
    return cluster


def _iperf3(lab: Lab, src, dst, seconds: float, udp: bool) -> dict:
    server = lab.run(dst.ns, ["iperf3", "-s", "-1", "-B", str(dst.ip)],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        probe.wait_reachable(src.ns, str(dst.ip), timeout=5)
        argv = ["iperf3", "-c", str(dst.ip), "-t", str(seconds), "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "64"]
        out = lab.call(src.ns, argv, timeout=seconds + 30)
        report = json.loads(out.stdout)["end"]
    finally:
        server.kill()
    if udp:
        s = report["sum"]
        return {"pps": s["packets"] * (1 - s["lost_percent"] / 100) / s["seconds"],
                "loss": s["lost_percent"] / 100}
    return {"gbit_s": report["sum_received"]["bits_per_second"] / 1e9}


def _median_rtt_us(src, dst, count: int = 100) -> float | None:
    rtts = [r for r in probe.ping(src.ns, str(dst.ip), count=count, timeout=1.0) if r]
    return statistics.median(rtts) * 1e6 if rtts else None


@contextlib.contextmanager
def _all_on_one_cpu(cluster: Cluster):
    """Pin every weft thread and the pinger to CPU 0 for the duration.

    A ping through weft wakes four blocked threads (egress and ingress on both hosts). Woken
    from another CPU, each wake-up costs ~15 us on this kind of machine (a C pipe ping-pong
    measures it); on the CPU that ran the softirq it costs ~3 us. This shows that floor.
    """
    tasks = [int(tid) for h in cluster.hosts if h.proc is not None
             for tid in os.listdir(f"/proc/{h.proc.pid}/task")]
    saved = {tid: os.sched_getaffinity(tid) for tid in tasks}
    mine = os.sched_getaffinity(0)
    try:
        for tid in tasks:
            os.sched_setaffinity(tid, {0})
        os.sched_setaffinity(0, {0})
        yield
    finally:
        os.sched_setaffinity(0, mine)
        for tid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)


def measure(path: str, seconds: float, log: Callable[[str], None],
            wire_like: bool = True) -> dict:
    with Lab(hosts=2, wire_like=wire_like) as lab:
        cluster = _cluster(lab, path)
        src, dst = cluster.host(0).pods[0], cluster.host(1).pods[0]
        probe.wait_reachable(src.ns, str(dst.ip), timeout=10)
        result = {"path": path, "rtt_us": _median_rtt_us(src, dst)}
        with _all_on_one_cpu(cluster):
            result["rtt_one_cpu_us"] = _median_rtt_us(src, dst)
        if shutil.which("iperf3"):
            result["tool"] = "iperf3"
            result["tcp_gbit_s"] = _iperf3(lab, src, dst, seconds, udp=False)["gbit_s"]
            udp = _iperf3(lab, src, dst, seconds, udp=True)
        else:
            result["tool"] = "python"
            nbytes = int(min(seconds, 5) * 200 * 2**20)
            tcp = probe.tcp_transfer(src.ns, dst.ns, str(dst.ip), nbytes=nbytes, timeout=60)
            result["tcp_gbit_s"] = tcp["gbit_s"] if tcp["sha256_match"] else 0.0
            udp = probe.udp_flood(src.ns, dst.ns, str(dst.ip), size=64, seconds=min(seconds, 2))
        result["udp64_pps"], result["udp64_loss"] = udp["pps"], udp["loss"]
        log(f"  {path}: rtt {result['rtt_us']:.0f}us ({result['rtt_one_cpu_us']:.0f}us on one "
            f"CPU), tcp {result['tcp_gbit_s']:.2f} Gbit/s, "
            f"udp64 {result['udp64_pps'] / 1e3:.0f} kpps")
        return result


def format_table(results: list[dict]) -> str:
    ref = next((r for r in results if r["path"] == "kernel-vxlan"), None)

    def ratio(r: dict, key: str, inverse: bool = False) -> str:
        if not ref or not ref.get(key) or not r.get(key):
            return "-"
        value = ref[key] / r[key] if inverse else r[key] / ref[key]
        return f"{value:.2f}x"

    rows = [("path", "RTT us", "x ref", "RTT 1 CPU", "TCP Gbit/s", "x ref", "UDP64 kpps",
             "x ref", "loss")]
    for r in results:
        rows.append((r["path"], f"{r['rtt_us']:.0f}", ratio(r, "rtt_us", inverse=True),
                     f"{r['rtt_one_cpu_us']:.0f}",
                     f"{r['tcp_gbit_s']:.2f}", ratio(r, "tcp_gbit_s"),
                     f"{r['udp64_pps'] / 1e3:.0f}", ratio(r, "udp64_pps"),
                     f"{r['udp64_loss'] * 100:.1f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"(x ref: ratio to the kernel's VXLAN; RTT ratio is ref/path; RTT 1 CPU: "
                 f"every weft thread and the pinger on CPU 0; TCP/UDP measured with "
                 f"{results[0]['tool']})")
    return "\n".join(lines)


def run_bench(seconds: float = 5.0, as_json: bool = False, paths=PATHS,
              log: Callable[[str], None] = print, wire_like: bool = True) -> int:
    from weft.tools.lab import microbench

    if not shutil.which("iperf3"):
        log("[bench] iperf3 not found (Debian: apt-get install iperf3); TCP and UDP are "
            "measured with Python probes instead, which top out near 10 Gbit/s")
    log("[bench] fast path without IO (numba vs scapy) ...")
    micro = microbench.run(seconds=min(seconds, 1.0))
    log("[bench] offload kernels (TSO split, GRO coalesce) ...")
    offload = microbench.offload_rates()
    results = []
    for path in paths:
        log(f"[bench] {path} ...")
        results.append(measure(path, seconds, log, wire_like))
    if as_json:
        print(json.dumps({"paths": results, "fast_path": micro, "offload": offload}, indent=2))
    else:
        print(format_table(results))
        print()
        print(microbench.format_results(micro))
        print(microbench.format_offload(offload))
    return 0
