"""Fast path without IO: frames/s through encapsulation and decapsulation, numba vs scapy.

The numba side runs the daemon's Pipeline over a full Batch again and again (the buffers are
reloaded in place: lengths reset, nothing allocated per packet). The scapy side does the same
work the way a scapy-only switch would: dissect the frame, build outer IP/UDP/VXLAN around it,
and for decap dissect the datagram and take the inner frame out.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Network

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from weft.backends.defaults import VXLAN_PORT
from weft.packet.fastpath import Batch
from weft.packet.pipeline import Pipeline

LOCAL, PEER = IPv4Network("10.1.1.0/24"), IPv4Network("10.1.2.0/24")
MAC_LOCAL, MAC_PEER = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def _pipeline() -> Pipeline:
    pipeline = Pipeline("vxlan", IPv4Network("10.1.0.0/16"), 24)
    pipeline.set_local(LOCAL, IPv4Address("192.0.2.1"), MAC_LOCAL)
    pipeline.table.set_peer(PEER, IPv4Address("192.0.2.2"), MAC_PEER)
    return pipeline


def _frames(size: int) -> tuple[bytes, bytes]:
    """An egress frame of `size` bytes and the VXLAN payload a peer would send us."""
    pad = max(size - 14 - 20 - 8, 0)
    egress = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(
        src="10.1.1.2", dst="10.1.2.2") / UDP(sport=1234, dport=5678) / Raw(b"x" * pad)
    inner = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(
        src="10.1.2.2", dst="10.1.1.2") / UDP(sport=5678, dport=1234) / Raw(b"x" * pad)
    return bytes(egress), bytes(VXLAN(flags=0x08, vni=1) / inner)


def numba_rate(size: int, seconds: float = 1.0, batch_size: int = 64) -> tuple[float, float]:
    pipeline = _pipeline()
    egress, ingress = _frames(size)
    rates = []
    for frame, step, src in ((egress, pipeline.egress, 0),
                             (ingress, pipeline.ingress, int(IPv4Address("192.0.2.2")))):
        batch = Batch(batch_size)
        for i in range(batch_size):
            batch.load(i, frame, src)
        step(batch, batch_size)  # compile / load from cache outside the timing
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                # egress rewrites MACs in place and decap only moves offsets: the same input
                # bytes stay valid, only lengths need resetting
                batch.lens[:] = len(frame)
                step(batch, batch_size)
            done += 100 * batch_size
        rates.append(done / (time.perf_counter() - start))
    return rates[0], rates[1]


def scapy_rate(size: int, seconds: float = 1.0) -> tuple[float, float]:
    egress, ingress = _frames(size)
    rates = []
    for work in (_scapy_encap, _scapy_decap):
        data = egress if work is _scapy_encap else ingress
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            work(data)
            done += 1
        rates.append(done / (time.perf_counter() - start))
    return rates[0], rates[1]


def _scapy_encap(frame: bytes) -> bytes:
    inner = Ether(frame)
    inner.dst = "02:00:00:00:00:02"
    outer = IP(src="192.0.2.1", dst="192.0.2.2", ttl=64) / UDP(sport=49152, dport=VXLAN_PORT,
                                                               chksum=0)
    return bytes(outer / VXLAN(flags=0x08, vni=1) / inner)


def _scapy_decap(payload: bytes) -> bytes:
    vxlan = VXLAN(payload)
    if vxlan.vni != 1 or not vxlan.flags & 0x08:
        return b""
    return bytes(vxlan.payload)


def run(sizes=(64, 1400), seconds: float = 1.0) -> list[dict]:
    results = []
    for size in sizes:
        n_enc, n_dec = numba_rate(size, seconds)
        s_enc, s_dec = scapy_rate(size, seconds)
        results.append({"size": size, "numba_encap_fps": n_enc, "numba_decap_fps": n_dec,
                        "scapy_encap_fps": s_enc, "scapy_decap_fps": s_dec,
                        "encap_ratio": n_enc / s_enc, "decap_ratio": n_dec / s_dec})
    return results


def format_results(results: list[dict]) -> str:
    lines = ["frame  numba encap  scapy encap   ratio  numba decap  scapy decap   ratio"]
    for r in results:
        lines.append(f"{r['size']:>5}  {r['numba_encap_fps'] / 1e6:8.2f} M/s  "
                     f"{r['scapy_encap_fps'] / 1e3:8.1f} k/s  {r['encap_ratio']:5.0f}x  "
                     f"{r['numba_decap_fps'] / 1e6:8.2f} M/s  "
                     f"{r['scapy_decap_fps'] / 1e3:8.1f} k/s  {r['decap_ratio']:5.0f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_results(run()))
