"""Status snapshots for the observe tests (import it as `status_samples`): one with every section
filled, one of a daemon still waiting, and the pieces to vary them with dataclasses.replace."""

from __future__ import annotations

from weft.status import (
    BackendStatus,
    DaemonStatus,
    DatapathStatus,
    DirectionCounters,
    EtcdStatus,
    IptablesStatus,
    KeeperStatus,
    LeaseStatus,
    PeerStatus,
    PeerSyncStatus,
    Refusal,
    RejectionsStatus,
    RepairStatus,
    TraceStatus,
    TrafficCounters,
)

ETCD_UP = EtcdStatus(up=True, down_since=None, down_for=None, retries=0, last_error=None,
                     outages=0, watch="connected", watch_restarts=0)
ETCD_DOWN = EtcdStatus(up=False, down_since=1_700_000_000.0, down_for=12.3, retries=7,
                       last_error="UNAVAILABLE: connection refused", outages=1,
                       watch="reconnecting", watch_restarts=2)
NO_REJECTIONS = RejectionsStatus(total={}, current={})
LEASE = LeaseStatus(subnet="10.1.15.0/24", public_ip="192.0.2.11", backend="vxlan",
                    expires_in=86000.0)


def direction(packets: int, size: int) -> DirectionCounters:
    return DirectionCounters(packets=packets, bytes=size, forwarded=packets,
                             forwarded_bytes=size, slow=0, dropped=0, checksums_completed=0)


COUNTERS = TrafficCounters(egress=direction(10, 1500), ingress=direction(7, 700),
                           drops={"wrong_vni": 3, "unknown_sender": 1, "ttl_exceeded": 0},
                           slow_path={"arp_replied": 4})
VXLAN = BackendStatus(
    kind="vxlan", device="weft.1",
    peers=(PeerStatus(subnet="10.1.16.0/24", public_ip="192.0.2.12",
                      vtep_mac="aa:bb:cc:dd:ee:01"),
           PeerStatus(subnet="10.1.2.0/24", public_ip="192.0.2.13",
                      vtep_mac="aa:bb:cc:dd:ee:02")),
    unprogrammed={"10.1.40.0/24": "backend type udp"},
    counters=COUNTERS,
    datapath=DatapathStatus(mode="plain", details={"batch": 64, "io": "recvmmsg"}),
    trace=TraceStatus(subscribers=0, dropped=0),
    repair=RepairStatus(repairs={"route": 3, "device": 1},
                        failing={"route 10.1.8.0/24 via 192.0.2.11 dev #2": "unreachable"}))

# A daemon with every section: each metric family has something to say.
FULL = DaemonStatus(
    ready=True, lease=LEASE, etcd=ETCD_UP,
    leases_rejected=RejectionsStatus(
        total={"public_ip": 2},
        current={"10.1.9.0-24": Refusal("public_ip", "PublicIP 127.0.0.1 is loopback")}),
    lease_keeper=KeeperStatus(renewals=4, checks=9, renew_failures=3, renew_failing_since=None,
                              recreated=1, next_renewal=1_700_000_100.0),
    peer_sync=PeerSyncStatus(pending_removal=("10.1.16.0/24",), deferred=1, cancelled=5,
                             grace=10.0),
    backend=VXLAN,
    clients={"control": {"accepted": 3, "too_long": 1}},
    iptables=IptablesStatus(chains=("nat/WEFT-POSTRTG",), applied=True, resyncs=3))

# A daemon still waiting for its config: no lease, no backend, nothing but the store.
WAITING = DaemonStatus(ready=False, lease=None, etcd=ETCD_UP, leases_rejected=NO_REJECTIONS)

# A dual-stack host-gw daemon (EnableIPv6): our lease's IPv6 half, one peer routed over both
# families and one IPv4-only peer (an older flanneld or weft), an IPv6 route put back once.
HOSTGW_DUAL = BackendStatus(
    kind="host-gw",
    peers=(PeerStatus(subnet="10.1.16.0/24", public_ip="192.0.2.12",
                      ipv6_subnet="fd10:0:0:10::/64", public_ipv6="fd00::12"),
           PeerStatus(subnet="10.1.2.0/24", public_ip="192.0.2.13")),
    datapath=DatapathStatus(mode="kernel routes"),
    repair=RepairStatus(repairs={"route": 1, "route_ipv6": 2}))
DUAL = DaemonStatus(
    ready=True, etcd=ETCD_UP, leases_rejected=NO_REJECTIONS, backend=HOSTGW_DUAL,
    lease=LeaseStatus(subnet="10.1.15.0/24", public_ip="192.0.2.11", backend="host-gw",
                      expires_in=86000.0, ipv6_subnet="fd10:0:0:f::/64",
                      public_ipv6="fd00::11"))
