"""weft's CNI plugin on lab hosts running weft (vxlan), delegating to Debian's real bridge and
host-local plugins, invoked exactly as a container runtime invokes it: the CNI_* environment,
the conf on stdin, CNI_PATH with the installed bin dir and /usr/lib/cni."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from weft.cni.errors import CniError
from weft.cni.invoke import exec_plugin
from weft.cni.runtime import BASE_ENV, Runtime
from weft.tools.lab import netns, probe
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.demo import cni_runtime, reference_plugin_dir
from weft.tools.lab.topology import Lab, cni_host_veth, cni_pod_ip

PLUGIN_DIR = reference_plugin_dir()
pytestmark = pytest.mark.skipif(PLUGIN_DIR is None, reason="CNI reference plugins not installed "
                                                           "(containernetworking-plugins)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Lab(hosts=2) as lab:
        cluster = Cluster(lab, backend="vxlan")
        cluster.start_etcd()
        for h in cluster.hosts:
            cluster.start_weft(h.index)
        cluster.wait_leases()
        cluster.wait_synced()
        cluster.runtimes = [cni_runtime(cluster, h.index, [PLUGIN_DIR]) for h in cluster.hosts]
        yield cluster
    assert netns.list_prefixed(lab.prefix) == []
    assert not os.path.exists(lab.tmpdir)


def ipam_dir(cluster: Cluster, host: int) -> str:
    return str(cluster.dir / "cni" / f"h{host}" / "ipam" / "cbr0")


def links(ns: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def test_pods_added_by_cni_reach_each_other_across_hosts(cluster: Cluster) -> None:
    lab = cluster.lab
    for h in cluster.hosts:
        h.pods = lab.add_pods(h.index, h.subnet, count=2, cni=cluster.runtimes[h.index])
        assert all(pod.ip in h.subnet and pod.ip != h.subnet[1] for pod in h.pods)
    failures = []
    for src in cluster.pods():
        for dst in cluster.pods():
            if src.host != dst.host and not any(probe.ping(src.ns, str(dst.ip), count=2)):
                failures.append((str(src.ip), str(dst.ip)))
    assert failures == [], cluster.host_log(0)[-2000:]


def test_pod_gets_weft_s_mtu_and_a_route_to_the_network_via_cni0(cluster: Cluster) -> None:
    h = cluster.hosts[0]
    pod = cluster.lab.add_pods(h.index, h.subnet, count=1, cni=cluster.runtimes[0])[0]
    with IPRoute(netns=pod.ns) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        assert ipr.get_links(eth0)[0].get_attr("IFLA_MTU") == h.mtu
        gateways = {r.get_attr("RTA_GATEWAY") for r in ipr.get_routes(family=2)}
    assert str(h.subnet[1]) in gateways


def test_del_removes_the_interface_and_releases_the_address(cluster: Cluster) -> None:
    lab, runtime = cluster.lab, cluster.runtimes[1]
    h = cluster.hosts[1]
    pod = lab.add_pods(h.index, h.subnet, count=1, cni=runtime)[0]
    lease_file = os.path.join(ipam_dir(cluster, 1), str(pod.ip))
    saved = cluster.dir / "cni" / "h1" / "weft" / pod.ns
    assert os.path.exists(lease_file) and saved.exists()
    assert "eth0" in links(pod.ns) and pod.veth in links(h.ns)
    netns.call_in(h.ns, runtime.delete, pod.ns, f"{netns.NETNS_DIR}/{pod.ns}", "eth0",
                  lab.cni_results[pod.ns])
    assert "eth0" not in links(pod.ns) and pod.veth not in links(h.ns)
    assert not os.path.exists(lease_file) and not saved.exists()
    # DEL again (runtimes retry): the container is unknown now, and that is success.
    netns.call_in(h.ns, runtime.delete, pod.ns, f"{netns.NETNS_DIR}/{pod.ns}", "eth0",
                  lab.cni_results[pod.ns])


def test_twenty_concurrent_adds_get_twenty_distinct_addresses(cluster: Cluster) -> None:
    runtime, h = cluster.runtimes[1], cluster.hosts[1]
    names = [f"{h.ns}c{j}" for j in range(20)]
    for name in names:
        netns.create(name)
    try:
        calls = [netns.spawn_in(h.ns, runtime.add, name, f"{netns.NETNS_DIR}/{name}")
                 for name in names]
        results = [call.result(timeout=120) for call in calls]
        ips = [cni_pod_ip(r) for r in results]
        assert len(set(ips)) == 20 and all(ip in h.subnet for ip in ips)
        assert len({cni_host_veth(r) for r in results}) == 20
        for name, result in zip(names, results, strict=True):
            netns.call_in(h.ns, runtime.delete, name, f"{netns.NETNS_DIR}/{name}", "eth0", result)
        assert set(os.listdir(ipam_dir(cluster, 1))) & {str(ip) for ip in ips} == set()
    finally:
        for name in names:
            netns.remove(name)


def _check_error(cluster: Cluster, runtime: Runtime, pod_ns: str) -> CniError | None:
    try:
        netns.call_in(cluster.hosts[0].ns, runtime.check, pod_ns,
                      f"{netns.NETNS_DIR}/{pod_ns}", cluster.lab.cni_results[pod_ns])
    except CniError as err:
        return err
    return None


def test_check_reaches_the_bridge_plugin_s_checks(cluster: Cluster) -> None:
    lab, h = cluster.lab, cluster.hosts[0]
    runtime = _with_version(cluster.runtimes[0], "1.0.0")
    pod = lab.add_pods(h.index, h.subnet, count=1, cni=runtime)[0]
    err = _check_error(cluster, runtime, pod.ns)
    # bridge before v1.3.0 (Debian ships 1.1.1) fails CHECK on any route without a gateway,
    # as flannel's network route is: containernetworking/plugins#886, fixed by #887. Routes
    # are its last check, so interface and addresses have passed when that is the error.
    known_bug = f"Expected Route {{Dst:{{IP:{cluster.network.network_address} "
    assert err is None or known_bug in err.msg, err and err.msg
    with IPRoute(netns=pod.ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname="eth0")[0])
    err = _check_error(cluster, runtime, pod.ns)
    assert err is not None and known_bug not in err.msg, "CHECK missed the pod's lost eth0"


def _with_version(runtime: Runtime, version: str) -> Runtime:
    return Runtime({**runtime.conflist, "cniVersion": version}, runtime.cni_path, runtime.env)


def _plugin_conf(cluster: Cluster, host: int, **over) -> dict:
    conf = {**cluster.runtimes[host].conflist["plugins"][0], "name": "cbr0",
            "cniVersion": "1.0.0", **over}
    return conf


def _env(cluster: Cluster, command: str, container: str) -> dict:
    return {**BASE_ENV, "CNI_COMMAND": command, "CNI_CONTAINERID": container,
            "CNI_NETNS": f"{netns.NETNS_DIR}/{container}", "CNI_IFNAME": "eth0", "CNI_ARGS": "",
            "CNI_PATH": os.pathsep.join(cluster.runtimes[0].cni_path)}


def _exec_raw(argv: list[str], stdin: str, env: dict) -> tuple[int, str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, proc.stdout


def _plugin_error(cluster: Cluster, conf: dict) -> CniError:
    name = f"{cluster.hosts[0].ns}err"
    netns.create(name)
    try:
        with pytest.raises(CniError) as info:
            netns.call_in(cluster.hosts[0].ns, exec_plugin, _installed(cluster), conf,
                          _env(cluster, "ADD", name))
    finally:
        netns.remove(name)
    return info.value


def _installed(cluster: Cluster) -> str:
    return str(cluster.dir / "cni" / "bin" / "weft")


def _answer_once(ip: str, port: int, timeout: float) -> str:
    """In a pod: accept one connection, say who we are, return the client's address."""
    with probe.listening_socket(ip, port, timeout) as lsock:
        conn, peer = lsock.accept()
        with conn:
            conn.sendall(f"pod {ip}".encode())
    return peer[0]


def _ask(ip: str, port: int, timeout: float) -> bytes:
    """On a host: connect (the pod's server may still be starting) and read the answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((ip, port), timeout=timeout) as sock:
                return sock.recv(100)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _refused(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_portmap_from_the_conflist_publishes_a_pod_port_on_its_host(cluster: Cluster) -> None:
    """The conflist `weft cni install` writes chains Debian's portmap after weft: a runtime's
    portMappings reach it as runtimeConfig, another host reaches the pod through host 1's
    address, and DEL takes the mapping away again."""
    runtime, h, other = cluster.runtimes[1], cluster.hosts[1], cluster.hosts[0]
    assert [p["type"] for p in runtime.conflist["plugins"]] == ["weft", "portmap"]
    mappings = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    name = f"{h.ns}pm"
    path = f"{netns.NETNS_DIR}/{name}"
    netns.create(name)
    try:
        result = netns.call_in(h.ns, runtime.add, name, path, "eth0", mappings)
        pod_ip = result["ips"][0]["address"].split("/")[0]
        server = netns.spawn_in(name, _answer_once, pod_ip, 80, 20.0)
        reply = netns.call_in(other.ns, _ask, h.public_ip, 8080, 10.0)
        client = server.result(timeout=20)
        assert reply == f"pod {pod_ip}".encode()
        assert client == other.public_ip  # DNAT only: the pod sees who asked
        netns.call_in(h.ns, runtime.delete, name, path, "eth0", result, mappings)
        assert netns.call_in(other.ns, _refused, h.public_ip, 8080)
    finally:
        netns.remove(name)


def test_missing_subnet_env_is_try_again_later(cluster: Cluster) -> None:
    err = _plugin_error(cluster, _plugin_conf(cluster, 0, subnetFile="/nonexistent/subnet.env"))
    assert err.code == 11 and "/nonexistent/subnet.env" in err.msg


def test_bad_conf_is_invalid_network_config(cluster: Cluster) -> None:
    err = _plugin_error(cluster, _plugin_conf(cluster, 0, delegate={"ipam": {}}))
    assert err.code == 7 and "ipam" in err.msg


def test_unknown_version_is_incompatible(cluster: Cluster) -> None:
    err = _plugin_error(cluster, _plugin_conf(cluster, 0, cniVersion="0.2.0"))
    assert err.code == 1 and "1.0.0" in err.msg


def test_undecodable_conf_is_a_decoding_failure(cluster: Cluster) -> None:
    code, out = netns.call_in(cluster.hosts[0].ns, _exec_raw, [_installed(cluster)],
                              "{\"cniVersion\": ", _env(cluster, "ADD", "nothing"))
    assert code == 1 and json.loads(out)["code"] == 6


def test_demo_with_cni_builds_pods_through_the_plugin_and_all_pairs_answer() -> None:
    from weft.tools.lab.demo import run_demo

    lines: list[str] = []
    assert run_demo(hosts=2, pods=1, cni=True, out=lines.append) == 0, "\n".join(lines)
    assert any(line.startswith("[cni] pods added by weft's CNI plugin") for line in lines)
