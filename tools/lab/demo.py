"""`weft demo`: a few hosts and pods on this machine, weft carrying traffic between them.

Builds the lab (fabric namespace with etcd, host namespaces, pod namespaces), runs `weft run` on
every host, then pings every pod from every pod (ICMP sent from Python inside the pod
namespaces) and prints the reachability matrix. Exit 0 only if every pair answered.
With cni=True the pods are made by weft's CNI plugin (conflist installed per host under the
lab's temp dir, delegating to the reference bridge and host-local plugins), as a container
runtime would make them.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from weft.cni.install import install
from weft.cni.runtime import Runtime
from weft.drivers import compile_job
from weft.tools.lab import probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

# Where distributions put the reference plugins (Debian: /usr/lib/cni; upstream: /opt/cni/bin).
REFERENCE_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
REFERENCE_PLUGINS = ("bridge", "host-local", "portmap")


def reference_plugin_dir() -> str | None:
    """The first directory holding bridge, host-local and portmap, None if none does."""
    for directory in REFERENCE_PLUGIN_DIRS:
        if all(os.access(os.path.join(directory, p), os.X_OK) for p in REFERENCE_PLUGINS):
            return directory
    return None


def cni_runtime(cluster: Cluster, host: int, plugin_dirs: Sequence[str],
                name: str = "weft") -> Runtime:
    """Install weft's conflist and plugin for `host` under the lab's temp dir (subnet file,
    delegate store and host-local's leases all per host there); the runtime that uses it."""
    base = cluster.dir / "cni"
    host_dir = base / f"h{host}"
    extra = {"subnetFile": str(cluster.subnet_file(host)), "dataDir": str(host_dir / "weft"),
             "ipam": {"type": "host-local", "dataDir": str(host_dir / "ipam")}}
    # force: the lab's runtime runs this checkout's plugin on purpose, whoever owns it (a
    # checkout in a user's home, run as root); the ownership check guards host installs.
    conf, _ = install(str(host_dir / "net.d"), str(base / "bin"), name=name, extra=extra,
                      force=True, warn=lambda _finding: None)
    return Runtime.from_file(conf, [str(base / "bin"), *plugin_dirs])


def reachability(cluster: Cluster, count: int = 3) -> dict[tuple[str, str], float | None]:
    """Median RTT in seconds for every ordered pod pair (None: no answer)."""
    pods = cluster.pods()
    results: dict[tuple[str, str], float | None] = {}
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            rtts = [r for r in probe.ping(src.ns, str(dst.ip), count=count, timeout=1.0) if r]
            results[(src.ns, dst.ns)] = statistics.median(rtts) if rtts else None
    return results


def format_matrix(cluster: Cluster, results: dict[tuple[str, str], float | None]) -> str:
    pods = cluster.pods()
    labels = {pod.ns: f"{pod.ip}" for pod in pods}
    width = max(len(v) for v in labels.values()) + 2
    lines = ["from \\ to".ljust(width) + "".join(labels[p.ns].rjust(width) for p in pods)]
    for src in pods:
        cells = []
        for dst in pods:
            if src is dst:
                cells.append("-".rjust(width))
                continue
            rtt = results[(src.ns, dst.ns)]
            cells.append(("FAIL" if rtt is None else f"{rtt * 1e6:.0f}us").rjust(width))
        lines.append(labels[src.ns].ljust(width) + "".join(cells))
    return "\n".join(lines)


def compile_data_path(out: Callable[[str], None], progress_every: float = 10.0) -> bool:
    """Compile the data path once, before any host starts, saying how it goes (no timeout:
    a cold compile on 2 cores takes about a minute, and it is not the hosts' to wait for)."""
    if compile_job.is_compiled():
        return True
    out("[compile] compiling the data path for this version: first run only, about a minute "
        "on 2 cores")
    job = compile_job.CompileJob(report=lambda line: out(f"[compile] {line}"))
    while not job.wait(compile_job.LOOPS, timeout=progress_every):
        if job.error:
            break
        out(f"[compile] still compiling ({time.monotonic() - job.started:.0f} s)")
    if job.error:
        out(f"[compile] FAILED: {job.error}")
        return False
    out(f"[compile] done in {job.seconds or 0.0:.0f} s")
    return True


def run_demo(hosts: int = 3, pods: int = 2, backend: str = "vxlan",
             out: Callable[[str], None] = print, cni: bool = False) -> int:
    started = time.time()
    plugin_dir = reference_plugin_dir() if cni else None
    if cni and plugin_dir is None:
        out(f"[cni] reference plugins ({', '.join(REFERENCE_PLUGINS)}) not found in "
            f"{' or '.join(REFERENCE_PLUGIN_DIRS)}; building the pods directly "
            f"(Debian: apt-get install containernetworking-plugins)")
    if backend != "host-gw" and not compile_data_path(out):
        return 1
    with Lab(hosts=hosts) as lab:
        out(f"[lab] fabric {lab.fabric}, hosts {', '.join(lab.hosts)}")
        cluster = Cluster(lab, backend=backend)
        cluster.start_etcd()
        out(f"[etcd] {lab.etcd_endpoint}, network {cluster.network}, backend {backend}")
        for h in cluster.hosts:
            cluster.start_weft(h.index)
        cluster.wait_leases()
        for h in cluster.hosts:
            out(f"[weft] {h.ns} {h.public_ip}: lease {h.subnet}, MTU {h.mtu}")
        cluster.wait_synced()
        out("[weft] every host has every other host as a peer")
        if plugin_dir is None:
            cluster.add_pods(pods)
        else:
            for h in cluster.hosts:
                runtime = cni_runtime(cluster, h.index, [plugin_dir])
                h.pods = lab.add_pods(h.index, h.subnet, count=pods, cni=runtime)
            out(f"[cni] pods added by weft's CNI plugin through {plugin_dir} "
                f"(bridge, host-local, portmap)")
        out(f"[pods] {len(cluster.pods())} pods: "
            + ", ".join(f"{p.ip}" for p in cluster.pods()))
        results = reachability(cluster)
        out("")
        out("Reachability (median ICMP echo RTT, pod to pod):")
        out(format_matrix(cluster, results))
        failed = [pair for pair, rtt in results.items() if rtt is None]
        out("")
        if failed:
            out(f"FAILED: {len(failed)} of {len(results)} pairs did not answer")
            for h in cluster.hosts:
                out(f"--- log of {h.ns} ---\n{cluster.host_log(h.index)[-2000:]}")
        else:
            out(f"OK: all {len(results)} pod pairs answered "
                f"({time.time() - started:.1f}s, removing the lab)")
        for h in cluster.hosts:
            cluster.stop_weft(h.index)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_demo())
