"""Fuzz: 100 000 random and mutated inputs per kernel. No exception, no write outside the packet's
own bytes and headroom, exactly one counted reason per input, and the twin agrees on a sample."""

import struct
from ipaddress import IPv4Address, IPv4Network

import numba
import numpy as np
import pytest
from kernel_runs import run_udp_egress, run_udp_ingress, run_vxlan_egress, run_vxlan_ingress
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

from weft.packet import fastpath_twin as packet
from weft.packet.batch import HEADROOM, Batch
from weft.packet.counters import (
    PATH_UDP_EGRESS,
    PATH_UDP_INGRESS,
    PATH_VXLAN_EGRESS,
    PATH_VXLAN_INGRESS,
    REASON_SLOTS,
    SLOT_IP_ID,
    new_counters,
)
from weft.packet.headers import VXLAN_ENCAP
from weft.packet.reasons import Verdict
from weft.packet.table import DatapathConfig, PeerTable

FRAMES = 4_096 if numba.config.DISABLE_JIT else 100_000
BATCH = 1024
ROW = 2048
SAMPLE = 512  # rows per kernel also checked against the twin
NET = IPv4Network("10.1.0.0/16")
LOCAL, PEER, PEER2 = "192.0.2.1", "192.0.2.2", "192.0.2.3"
LOCAL_MAC = "02:00:00:00:00:01"
SENDERS = np.array([int(IPv4Address(PEER)), int(IPv4Address(PEER2)), 0x0A0A0A0A, 0],
                   dtype=np.uint32)


def world() -> tuple[DatapathConfig, PeerTable]:
    cfg = DatapathConfig(NET, 24, vni=1, port=8472, mtu=1450)
    cfg.set_local(IPv4Network("10.1.15.0/24"), IPv4Address(LOCAL), bytes.fromhex("020000000001"))
    table = PeerTable(NET, 24)
    table.set_peer(IPv4Network("10.1.16.0/24"), IPv4Address(PEER), b"\x7e\x81\x33\x71\xe9\x51")
    table.set_peer(IPv4Network("10.1.17.0/24"), IPv4Address(PEER2), b"\x7e" + bytes(5))
    table.set_peer(IPv4Network("10.1.18.0/24"), IPv4Address(PEER), None)
    return cfg, table


def inner_packets() -> list[bytes]:
    """Valid IPv4 packets in both directions, the seeds every mutation starts from."""
    out = []
    for src, dst in (("10.1.15.2", "10.1.16.3"), ("10.1.16.3", "10.1.15.2"),
                     ("10.1.17.9", "10.1.15.7"), ("10.1.15.2", "10.1.18.1")):
        out += [
            bytes(IP(src=src, dst=dst) / TCP(sport=1000, dport=80) / (b"x" * 20)),
            bytes(IP(src=src, dst=dst, flags="DF", ttl=2) / UDP(sport=53, dport=53) / bytes(1400)),
            bytes(IP(src=src, dst=dst, options=b"\x01" * 4, flags="MF", frag=3) / ICMP()),
        ]
    return out


def seeds() -> dict[str, list[bytes]]:
    inner = inner_packets()
    frames = [bytes(Ether(dst="7e:81:33:71:e9:51", src=LOCAL_MAC, type=0x0800)) + p for p in inner]
    frames += [bytes(Ether(dst=LOCAL_MAC, src="7e:81:33:71:e9:51", type=0x0800)) + p for p in inner]
    frames += [bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP())]
    vxlan = [struct.pack("!B3xI", flags, 1 << 8) + f for f in frames for flags in (0x08, 0x0C)]
    return {"vxlan_egress": frames, "vxlan_ingress": vxlan, "udp_egress": inner,
            "udp_ingress": inner}


KERNELS = {
    "vxlan_egress": (run_vxlan_egress, PATH_VXLAN_EGRESS),
    "vxlan_ingress": (run_vxlan_ingress, PATH_VXLAN_INGRESS),
    "udp_egress": (run_udp_egress, PATH_UDP_EGRESS),
    "udp_ingress": (run_udp_ingress, PATH_UDP_INGRESS),
}
# Offsets of the length, version/IHL, flags, TTL and address bytes of each input kind.
HOT = {
    "vxlan_egress": [0, 12, 13, 14, 16, 17, 20, 22, 30, 33],
    "vxlan_ingress": [0, 4, 6, 8, 20, 21, 22, 24, 25, 30, 34, 41],
    "udp_egress": [0, 2, 3, 6, 8, 10, 16, 19],
    "udp_ingress": [0, 2, 3, 6, 8, 12, 15, 16, 19],
}


def fill_batch(rng: np.random.Generator, batch: Batch, kind: str, pool: list[bytes]) -> None:
    """Write BATCH mutated or random inputs into `batch` (vectorised: generation stays cheap)."""
    n, cap = batch.size, batch.capacity
    width = max(map(len, pool))
    tmpl = np.zeros((len(pool), width), dtype=np.uint8)
    for k, p in enumerate(pool):
        tmpl[k, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    tlen = np.array([len(p) for p in pool])
    pick = rng.integers(0, len(pool), size=n)
    bufs, rows = batch.bufs, np.arange(n)
    bufs[:] = 0xA5  # sentinel: the test checks nothing outside the packet is written
    bufs[:, HEADROOM : HEADROOM + width] = tmpl[pick]
    lens = tlen[pick].copy()
    mode = rng.integers(0, 8, size=n)
    # 0: untouched. 1: truncated. 2: bit flips. 3: hot header bytes smashed.
    trunc = mode == 1
    lens[trunc] = (lens[trunc] * rng.random(trunc.sum())).astype(np.int64)
    for _ in range(4):
        flip = (mode == 2) | ((mode == 3) & (rng.random(n) < 0.3))
        pos = (rng.random(n) * np.maximum(lens, 1)).astype(np.int64)
        bufs[rows[flip], HEADROOM + pos[flip]] ^= (1 << rng.integers(0, 8, size=n))[flip].astype(
            np.uint8)
    hot = np.array(HOT[kind])
    smash = mode == 3
    where = hot[rng.integers(0, len(hot), size=n)]
    bufs[rows[smash], HEADROOM + where[smash]] = rng.integers(0, 256, size=smash.sum())
    # 4: random bytes of random length. 5: length field beyond the row or negative.
    # 6: length longer than the packet (trailing sentinel bytes). 7: empty or tiny.
    rand = mode == 4
    bufs[rows[rand], HEADROOM:] = rng.integers(0, 256, size=(rand.sum(), cap), dtype=np.uint8)
    lens[rand] = rng.integers(0, 200, size=rand.sum())
    wild = mode == 5
    lens[wild] = rng.choice([-(2**31), -1, cap + 1, 2**31 - 1, cap], size=wild.sum())
    longer = mode == 6
    lens[longer] = np.minimum(lens[longer] + rng.integers(1, 64, size=longer.sum()), cap)
    tiny = mode == 7
    lens[tiny] = rng.integers(0, 43, size=tiny.sum())
    batch.lens[:] = lens
    batch.src_ip[:] = SENDERS[rng.integers(0, len(SENDERS), size=n)]


def twin(kind: str, data: bytes, src: int, cfg: DatapathConfig, table: PeerTable,
         ip_id: int) -> packet.StepResult:
    if kind == "vxlan_egress":
        return packet.vxlan_egress(data, cfg.cfg, table, ip_id)
    if kind == "vxlan_ingress":
        return packet.vxlan_ingress(data, src, cfg.cfg, table)
    if kind == "udp_egress":
        return packet.udp_egress(data, cfg.cfg, table)
    return packet.udp_ingress(data, src, cfg.cfg, table)


@pytest.mark.parametrize("kind", list(KERNELS))
def test_fuzz_kernel(kind: str) -> None:
    rng = np.random.default_rng(0xF1A77E1 + list(KERNELS).index(kind))
    cfg, table = world()
    run, path = KERNELS[kind]
    pool = seeds()[kind]
    other = [p for k, v in seeds().items() if k != kind for p in v]
    batch = Batch(BATCH, ROW)
    counters = new_counters()
    cols = np.arange(ROW)
    done, checked = 0, 0
    while done < FRAMES:
        n = min(BATCH, FRAMES - done)
        fill_batch(rng, batch, kind, pool if rng.random() < 0.8 else pool + other)
        before = batch.bufs.copy()
        ip_id = int(counters[path, SLOT_IP_ID])
        run(batch, n, cfg.cfg, table, counters)
        done += n

        lens = batch.lens[:n].astype(np.int64)
        valid = (lens >= 0) & (lens <= batch.capacity)
        end = HEADROOM + np.where(valid, lens, 0)
        allowed = (cols >= HEADROOM - VXLAN_ENCAP) & (cols < end[:, None])
        assert (batch.bufs[:n][~allowed] == before[:n][~allowed]).all()
        assert (batch.verdict[:n] <= Verdict.SLOW).all()
        off, olen = batch.out_off[:n].astype(np.int64), batch.out_len[:n].astype(np.int64)
        assert (off >= 0).all() and (olen >= 0).all() and (off + olen <= ROW).all()

        if checked < SAMPLE:
            for i in np.flatnonzero(valid)[: SAMPLE - checked]:
                data = before[i, HEADROOM : HEADROOM + lens[i]].tobytes()
                fwd_before = int((batch.verdict[:i] == Verdict.FORWARD).sum())
                want = twin(kind, data, int(batch.src_ip[i]), cfg, table, ip_id + fwd_before)
                got = (batch.verdict[i], batch.reason[i], batch.output(i), batch.dst_ip[i])
                assert got == (want.verdict, want.reason, want.out, want.dst_ip), (kind, i, data)
                checked += 1
    assert counters[path, :REASON_SLOTS].sum() == FRAMES
    assert counters[:, :REASON_SLOTS].sum() == FRAMES  # other rows untouched
    # The mutations must reach deep enough for both outcomes to appear.
    assert counters[path, 0] > 0 and counters[path, 1:REASON_SLOTS].sum() > 0
