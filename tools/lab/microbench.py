"""Fast path without IO: frames/s through encapsulation and decapsulation, numba vs scapy.

The numba side runs the daemon's Pipeline over a full Batch again and again (the buffers are
reloaded in place: lengths reset, nothing allocated per packet). The scapy side does the same
work the way a scapy-only switch would: dissect the frame, build outer IP/UDP/VXLAN around it,
and for decap dissect the datagram and take the inner frame out.

offload_rates: the TSO split and GRO coalesce kernels on one 64 KiB TCP super-frame, as the
offload datapath meets it from a TAP (Ethernet) and a TUN (bare IPv4).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

import numpy as np
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from weft.packet import encap, offload
from weft.packet.batch import HEADROOM, Batch
from weft.packet.offload.vnet_hdr import GSO_TCPV4, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr
from weft.packet.pipeline import Pipeline
from weft.tools.lab.scale import network_for

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
    outer = (IP(src="192.0.2.1", dst="192.0.2.2", ttl=64)
             / UDP(sport=49152, dport=encap.VXLAN.default_port, chksum=0))
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


def per_packet_ns(peers: int, seconds: float = 0.5, batch_size: int = 64,
                  frames: int = 4096) -> dict:
    """Egress fast-path time per packet with `peers` peers, destinations cycling over all of them.

    At least one frame per peer, so successive batches hit every table entry; the lookup is one
    shift and one array read by subnet number, so the figure should not grow with the number of
    peers. The same number of frames (`frames`, in batches) for every peer count, so that only
    the table differs and not how much packet memory the loop walks through.
    """
    network = network_for(peers)
    subnets = network.subnets(new_prefix=24)
    local = next(subnets)
    pipeline = Pipeline("vxlan", network, 24)
    pipeline.set_local(local, IPv4Address("192.0.2.1"), MAC_LOCAL)
    targets = []
    for k in range(peers):
        subnet = next(subnets)
        mac = MAC_PEER[:4] + k.to_bytes(2, "big")
        pipeline.table.set_peer(subnet, IPv4Address(int(IPv4Address("198.18.0.1")) + k), mac)
        targets.append((subnet, mac))
    rows = max(peers, frames, batch_size)
    rows += -rows % batch_size
    batches, size = [], 0
    for start in range(0, rows, batch_size):
        batch = Batch(batch_size, bufsize=HEADROOM + 256)
        for i in range(batch_size):
            subnet, mac = targets[(start + i) % peers]
            frame = bytes(Ether(src=_mac(MAC_LOCAL), dst=_mac(mac)) / IP(
                src=str(local[2]), dst=str(subnet[2])) / UDP(sport=1234, dport=5678) / Raw(
                b"x" * 22))
            batch.load(i, frame)
            size = len(frame)
        batches.append(batch)
    forwarded = sum(pipeline.egress(batch, batch_size) for batch in batches)  # compile/load
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in batches:
            batch.lens[:] = size  # egress only rewrites MACs and fills the headroom
            pipeline.egress(batch, batch_size)
        done += len(batches) * batch_size
    elapsed = time.perf_counter() - start
    return {"peers": peers, "ns_per_packet": elapsed / done * 1e9, "frames": rows,
            "forwarded_first_pass": forwarded, "network": str(network)}


def _mac(raw: bytes) -> str:
    return raw.hex(":")


# ---- offload kernels: TSO split, GRO coalesce ------------------------------------------------

MSS = 1448
TCP_OPTIONS = 12  # NOP, NOP, timestamps: what Linux sends on an established flow


def tso_super_frame(l3_off: int, payload: int = 0xFFFF - 20 - 20 - TCP_OPTIONS) -> bytes:
    """virtio_net_hdr + a TSO super-frame as a TAP (l3_off 14) or TUN (0) hands it over: one
    TCP/IPv4 packet of `payload` bytes, its checksum left partial (NEEDS_CSUM) as the stack
    leaves it for the NIC."""
    data = bytes((i * 7) & 0xFF for i in range(payload))
    tcp_len = 20 + TCP_OPTIONS + len(data)
    src, dst = IPv4Address("10.1.15.2").packed, IPv4Address("10.1.16.3").packed
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 100, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _ones_complement(ip)) + ip[12:]
    pseudo = ~_ones_complement(src + dst + struct.pack("!HH", 6, tcp_len)) & 0xFFFF
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 4242, (5 + TCP_OPTIONS // 4) << 4, 0x10,
                      501, pseudo, 0) + b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)
    eth = bytes.fromhex("020000000002" "020000000001" "0800") if l3_off else b""
    hdr = VnetHdr(VNET_F_NEEDS_CSUM, GSO_TCPV4, l3_off + 20 + len(tcp), MSS, l3_off + 20,
                  16).pack()
    return hdr + eth + ip + tcp + data


def _ones_complement(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def offload_rates(reps: int = 7, calls: int = 200) -> list[dict]:
    """Split and coalesce of one 64 KiB super-frame, TAP and TUN: best-of-`reps` mean seconds
    per call (the machine may be shared) and the TCP payload rate that means."""
    results = []
    for l3_off in (14, 0):
        frame = tso_super_frame(l3_off)
        src = np.frombuffer(frame, np.uint8).copy()
        bufs = np.zeros((64, 2048), np.uint8)
        lens = np.zeros(64, np.int32)
        segments = offload.split_super(src, len(frame), l3_off, bufs, lens, 0)
        if segments <= 0:
            raise RuntimeError(f"split_super refused the bench frame: {segments}")
        out, out_lens = offload.new_units(64)
        off, verdict = np.full(64, HEADROOM, np.int32), np.zeros(64, np.uint8)
        split = _best(offload.split_super, (src, len(frame), l3_off, bufs, lens, 0), reps, calls)
        merge = _best(offload.coalesce, (bufs, off, lens, verdict, segments, l3_off, out,
                                         out_lens), reps, calls)
        payload_bits = 8 * (len(frame) - VNET_HDR_LEN - l3_off - 20 - 20 - TCP_OPTIONS)
        results.append({"device": "tap" if l3_off else "tun", "segments": int(segments),
                        "split_us": split * 1e6, "split_gbit_s": payload_bits / split / 1e9,
                        "coalesce_us": merge * 1e6,
                        "coalesce_gbit_s": payload_bits / merge / 1e9})
    return results


def _best(kernel: Callable[..., object], args: tuple, reps: int, calls: int) -> float:
    kernel(*args)  # compile or load from the cache outside the timing
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            kernel(*args)
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def format_offload(results: list[dict]) -> str:
    lines = ["offload (one 64 KiB TCP super-frame)   split            coalesce"]
    for r in results:
        lines.append(f"  {r['device']}: {r['segments']} segments        "
                     f"{r['split_us']:7.1f} us {r['split_gbit_s']:5.1f} Gbit/s  "
                     f"{r['coalesce_us']:7.1f} us {r['coalesce_gbit_s']:5.1f} Gbit/s")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_results(run()))
    print(format_offload(offload_rates()))
