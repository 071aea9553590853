"""One `weft run` against 1,000 other hosts' leases: every peer ends up programmed.

The kernel's neighbours and routes on weft.1 and the peer table must all hold every peer (the
batched netlink path and the paged listing at a size where a per-call path would take tens of
seconds). Timings are reported by `weft bench --scale N`, not asserted here.
"""

import time

from weft.tools.lab import netns, scale
from weft.tools.lab.cluster import Cluster
from weft.tools.lab.topology import Lab

PEERS = 1000


def test_every_one_of_1000_peers_is_programmed():
    network = scale.network_for(PEERS)
    every = list(network.subnets(new_prefix=24))
    with Lab(hosts=1) as lab:
        cluster = Cluster(lab, backend="vxlan", network=str(network))
        cluster.config = {"Network": str(network), "SubnetMin": str(every[0].network_address),
                          "SubnetMax": str(every[-1].network_address),
                          "Backend": {"Type": "vxlan"}}
        cluster.start_etcd()
        netns.call_in(lab.fabric, scale._fill, cluster.env["WEFT_ETCD_ENDPOINTS"], str(network),
                      PEERS, timeout=300)
        cluster.start_weft(0)
        proc = cluster.host(0).proc
        deadline = time.monotonic() + 120
        status: dict = {}
        while time.monotonic() < deadline and proc.poll() is None:
            status = cluster.status(0) or {}
            if status.get("ready") and len(status.get("peers", [])) >= PEERS:
                break
            time.sleep(0.2)
        assert proc.poll() is None, cluster.host_log(0)[-3000:]
        assert len(status.get("peers", [])) == PEERS, cluster.host_log(0)[-3000:]
        assert status.get("unprogrammed") == {}
        neighbours, routes = scale.kernel_counts(proc.pid)
        assert (neighbours, routes) == (PEERS, PEERS)
        # what the kernel holds is each lease's: MAC per subnet as written
        macs = scale.neighbour_macs(proc.pid)
        for k, subnet in enumerate(scale.peer_subnets(network, PEERS)):
            assert macs[str(subnet.network_address)] == scale.peer_mac(k)
        table = {p["subnet"]: p for p in status["peers"]}
        first = scale.peer_subnets(network, PEERS)[0]
        assert table[str(first)]["vtep_mac"] == scale.peer_mac(0)
        assert table[str(first)]["public_ip"] == "198.18.0.1"
        assert cluster.stop_weft(0) == 0
