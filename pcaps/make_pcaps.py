"""Rebuild pcaps/: lab captures (root), crafted adversarial inputs and the expected outputs.

    sudo python pcaps/make_pcaps.py            # everything: lab captures, then goldens
    python pcaps/make_pcaps.py goldens         # only adversarial inputs + expected outputs

See pcaps/README.md for what each file is. Expected outputs are written by `weft replay`
itself (weft.tools.replay.cmd_replay through its argparse parser), so they are what the tool says;
the adversarial records carry the reason each one was built to hit and the script refuses to
write goldens that disagree.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from weft.control.registry import load_snapshot
from weft.packet.checksum import inet_checksum
from weft.packet.encap import ENCAPS
from weft.packet.outer import find_datagram
from weft.tools.pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, PcapOut, read_records
from weft.tools.replay import ip_offset, run_replay

HERE = Path(__file__).resolve().parent

BACKENDS = {kind: (encap.device_name(), encap.default_port) for kind, encap in ENCAPS.items()}
PACKET_OUTGOING = 4  # sll_pkttype of a packet the kernel transmits on the device
CAPTURE_SECONDS = 10.0
MAX_PACKETS = 40
ROGUE_IP = "192.0.2.99"  # on the fabric, holds no lease
ETH_WRAP = bytes.fromhex("020000000001020000000002") + b"\x08\x00"


# ---- lab captures (root) ------------------------------------------------------------------


def _capture(ifname: str, seconds: float) -> list[tuple[float, int, bytes]]:
    """AF_PACKET capture on one device, run inside a host namespace: (time, pkttype, bytes)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sock.bind((ifname, 0))
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.05)[0]:
            data, addr = sock.recvfrom(65535)
            out.append((time.time(), addr[2], data))
    sock.close()
    return out


def _udp_probe(dst: str, port: int, count: int) -> None:
    """A few datagrams to a closed port: the ICMP port unreachable comes back over the overlay."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(f"weft replay probe {i}".encode(), (dst, port))
            time.sleep(0.05)


def _traffic(cluster) -> None:
    from weft.tools.lab import netns, probe

    h0, h1, h2 = (cluster.hosts[i].pods[0] for i in range(3))
    probe.ping(h0.ns, str(h1.ip), count=3)
    probe.ping(h1.ns, str(h0.ip), count=2)
    probe.ping(h0.ns, str(h2.ip), count=1)
    probe.tcp_transfer(h0.ns, h1.ns, str(h1.ip), nbytes=1000, timeout=10)
    netns.call_in(h0.ns, _udp_probe, str(h2.ip), 9999, 2)


def _write(path: Path, linktype: int, packets: list[tuple[float, int, bytes]]) -> None:
    with PcapOut(path, linktype) as out:
        for stamp, _, data in packets[:MAX_PACKETS]:
            sec = int(stamp)
            out.write(data, sec, int(round((stamp - sec) * 1e6)) % 1_000_000)
    print(f"  {path.relative_to(HERE)}: {min(len(packets), MAX_PACKETS)} packets")


def _is_tunnel(data: bytes, port: int) -> bool:
    off = ip_offset(data, LINKTYPE_ETHERNET)
    dgram = find_datagram(data, off) if off is not None else None
    return dgram is not None and dgram.dport == port


def capture_backend(backend: str) -> None:
    from weft.tools.lab import netns
    from weft.tools.lab.cluster import Cluster
    from weft.tools.lab.topology import Lab

    device, port = BACKENDS[backend]
    out = HERE / backend
    out.mkdir(exist_ok=True)
    with Lab(hosts=3) as lab:
        cluster = Cluster(lab, backend=backend)
        cluster.start(pods_per_host=1)
        leases = cluster.weft_cli(0, "leases", "--json")
        if leases.returncode != 0:
            raise RuntimeError(f"weft leases --json: {leases.stderr}")
        snapshot = json.loads(leases.stdout)
        (out / "leases.json").write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
        ns = cluster.hosts[0].ns
        tap = netns.spawn_in(ns, _capture, device, CAPTURE_SECONDS)
        eth = netns.spawn_in(ns, _capture, "eth0", CAPTURE_SECONDS)
        time.sleep(0.5)  # the capture sockets are bound before any traffic flows
        _traffic(cluster)
        on_device, on_eth = tap.result(60), eth.result(60)
        manifest = {"backend": backend, "as": str(cluster.hosts[0].subnet),
                    "device": device, "port": port}
    dev_link = LINKTYPE_ETHERNET if backend == "vxlan" else LINKTYPE_RAW
    tunnel = [p for p in on_eth if _is_tunnel(p[2], port)]
    _write(out / "egress.pcap", dev_link, [p for p in on_device if p[1] == PACKET_OUTGOING])
    _write(out / "arrived.pcap", dev_link, [p for p in on_device if p[1] != PACKET_OUTGOING])
    _write(out / "fabric.pcap", LINKTYPE_ETHERNET, [p for p in tunnel if p[1] != PACKET_OUTGOING])
    _write(out / "fabric-out.pcap", LINKTYPE_ETHERNET,
           [p for p in tunnel if p[1] == PACKET_OUTGOING])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


# ---- crafted inputs -----------------------------------------------------------------------


def _ip_csum(ip: bytearray) -> None:
    ihl = (ip[0] & 0x0F) * 4
    ip[10:12] = b"\0\0"
    ip[10:12] = struct.pack("!H", inet_checksum(bytes(ip[:ihl])))


def _set_ip(frame: bytes, off: int, field: int, value: str) -> bytes:
    """frame with the IPv4 address at off+field replaced and the header checksum redone."""
    b = bytearray(frame)
    b[off + field: off + field + 4] = IPv4Address(value).packed
    ip = bytearray(b[off:])
    _ip_csum(ip)
    b[off:] = ip
    return bytes(b)


def _first_ingress(backend: str) -> bytes:
    return read_records(HERE / backend / "fabric.pcap")[0].data


def _first_ipv4_egress(backend: str) -> bytes:
    for rec in read_records(HERE / backend / "egress.pcap"):
        off = 14 if backend == "vxlan" else 0
        if len(rec.data) > off + 20 and rec.data[off] == 0x45 and rec.data[off + 9] == 1:
            return rec.data
    raise RuntimeError(f"{backend}/egress.pcap holds no ICMP packet to craft from")


def _subnets(backend: str) -> tuple[IPv4Network, list[IPv4Network], IPv4Network]:
    """(our subnet, the peers' subnets, an unleased subnet of the network)."""
    manifest = json.loads((HERE / backend / "manifest.json").read_text())
    snap = load_snapshot(HERE / backend / "leases.json")
    ours = IPv4Network(manifest["as"])
    leased = {lease.subnet for lease in snap.leases}
    assert snap.config.network is not None
    free = next(s for s in snap.config.network.subnets(new_prefix=snap.config.subnet_len)
                if s not in leased and s.network_address != snap.config.network.network_address)
    return ours, sorted(leased - {ours}), free


def adversarial(backend: str) -> list[tuple[str, bytes, int | None]]:
    """(expected reason, frame, wire length if truncated) for backend's adversarial.pcap."""
    p = _first_ingress(backend)  # Ethernet / IPv4 / UDP / (VXLAN / Ethernet /) IPv4
    e = _first_ipv4_egress(backend)
    ours, peers, free = _subnets(backend)
    vx = 14 + 20 + 8  # VXLAN header (vxlan) or inner IPv4 (udp) in p
    inner = vx + 8 + 14 if backend == "vxlan" else vx
    src_host = IPv4Address(struct.unpack_from("!I", p, inner + 12)[0])
    other = next(s for s in peers if src_host not in s)
    cases: list[tuple[str, bytes, int | None]] = [("ok", p, None), ("truncated", p[:60], len(p))]
    cases.append(("unknown_sender", _set_ip(p, 14, 12, ROGUE_IP), None))
    cases.append(("spoofed_inner_src", _set_ip(p, inner, 12, str(other[7])), None))
    cases.append(("not_for_us", _set_ip(p, inner, 16, str(other[7])), None))
    bad_udp = bytearray(p)
    bad_udp[14 + 24: 14 + 26] = struct.pack("!H", 4)  # UDP length below its own header
    cases.append(("bad_udp", bytes(bad_udp), None))
    cases.append(("truncated", b"\x01\x02\x03\x04\x05\x06\x07", None))  # garbage: 7 bytes
    if backend == "vxlan":
        for reason, flags, vni_shift in (("wrong_vni", 0x08, 1), ("bad_vxlan_flags", 0x00, 0),
                                         ("ok", 0xFF, 0)):  # 0xff: reserved bits ignored
            b = bytearray(p)
            b[vx] = flags
            if flags == 0xFF:
                b[vx + 1: vx + 4] = b"\xff\xff\xff"
                b[vx + 7] = 0xFF
            vni = (struct.unpack_from("!I", b, vx + 4)[0] >> 8) + vni_shift
            b[vx + 4: vx + 7] = vni.to_bytes(3, "big")
            cases.append((reason, bytes(b), None))
        cases.append(("icmp_error_sent", _set_ip(e, 14, 16, str(free[9])), None))
        mac = e[6:12]  # the kernel's TAP MAC asks for a peer's gateway address
        arp = (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
               + mac + ours[0].packed + bytes(6) + peers[0][0].packed)
        cases.append(("arp_replied", arp, None))
        cases.append(("unknown_ethertype", e[:12] + b"\x88\xb5" + e[14:], None))
    else:
        ttl1 = bytearray(p)
        ttl1[inner + 8] = 1
        ip = bytearray(ttl1[inner:])
        _ip_csum(ip)
        cases.append(("ttl_exceeded", bytes(ttl1[:inner] + ip), None))
        eth = ETH_WRAP  # one link type per file: TUN packets ride in an Ethernet header
        cases.append(("icmp_error_sent", eth + _set_ip(e, 0, 16, str(free[9])), None))
        e_ttl = bytearray(e)
        e_ttl[8] = 1
        _ip_csum(e_ttl)
        cases.append(("icmp_error_sent", eth + bytes(e_ttl), None))
        cases.append(("local_dst", eth + _set_ip(e, 0, 16, str(ours[9])), None))
    return cases


def write_adversarial(backend: str) -> list[str]:
    cases = adversarial(backend)
    with PcapOut(HERE / backend / "adversarial.pcap", LINKTYPE_ETHERNET) as out:
        for i, (_, data, wirelen) in enumerate(cases):
            out.write(data, 1_700_000_000 + i, 0, wirelen)
    return [reason for reason, _, _ in cases]


def write_bad() -> None:
    bad = HERE / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "not-a-pcap.pcap").write_text("this is a text file, not a capture\n")
    with PcapOut(bad / "unknown-linktype.pcap", 147) as out:  # LINKTYPE_USER0
        out.write(b"\x45" + bytes(40), 1_700_000_000, 0)
    with open(bad / "cut-record.pcap", "wb") as f:  # the last record header claims 1 MB
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        f.write(struct.pack("<IIII", 1_700_000_000, 0, 1_000_000, 1_000_000) + b"\xaa" * 30)


# ---- expected outputs ----------------------------------------------------------------------


def goldens(backend: str) -> None:
    manifest_path = HERE / backend / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["adversarial"] = write_adversarial(backend)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    expected = HERE / backend / "expected"
    expected.mkdir(exist_ok=True)
    for name in ("egress", "fabric", "adversarial"):
        code, out = run_replay([str(HERE / backend / f"{name}.pcap"), "--leases",
                                str(HERE / backend / "leases.json"), "--as", manifest["as"],
                                "--json", "--out", str(expected / f"{name}.out.pcap")])
        assert code == 0, (backend, name, code)
        (expected / f"{name}.json").write_text(out)
        if name == "adversarial":
            got = [json.loads(line)["reason"] for line in out.splitlines()]
            assert got == manifest["adversarial"], (backend, got, manifest["adversarial"])
        print(f"  {backend}/expected/{name}: {len(out.splitlines())} records")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", choices=("all", "capture", "goldens"), default="all")
    parser.add_argument("--backend", choices=sorted(BACKENDS), action="append")
    args = parser.parse_args()
    backends = args.backend or sorted(BACKENDS)
    if args.step in ("all", "capture"):
        for backend in backends:
            print(f"capturing {backend} in a 3-host lab")
            capture_backend(backend)
    if args.step in ("all", "goldens"):
        write_bad()
        for backend in backends:
            goldens(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
