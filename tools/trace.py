"""`weft trace`: follow one packet through the pipeline (offline), or watch a daemon's (live).

Offline, in the manner of `ovs-appctl ofproto/trace`: the host holding `--as SUBNET` in a lease
snapshot is rebuilt (tools/offline.py), the packet is parsed into a flow key, classified, looked up
in the peer table, and every header field the step writes is listed from the pure-Python twin
(weft.packet.fastpath_twin). The real numba kernel runs on the same bytes through the Pipeline; a
mismatch is printed as a loud warning (it is a bug). SLOW verdicts go through the scapy slow path.
The packet argument (scapy expression, hex or pcap record) is read by tools/trace_input.py.

Live, in the manner of `cilium monitor`: one line per packet event streamed from the daemon's
TraceHub over the control socket (filter syntax in switch/observe/tracehub.py).

`--write FILE.pcap` writes LINKTYPE_ETHERNET (1), readable by tcpdump, tshark and scapy. Each
event gives its input packet, then its output if it was forwarded, so inner and outer views sit
side by side. What has no Ethernet header on the wire side (TUN packets, the outer IPv4 the
kernel adds) gets a zero-MAC one; outer IPv4/UDP headers the socket layer adds or strips
(ingress payloads, udp-backend datagrams) are rebuilt from the peer and our PublicIP:port.
tshark decodes VXLAN on 8472 with `-d udp.port==8472,vxlan`, tcpdump with `-T vxlan`.
"""

from __future__ import annotations

import struct
import sys
import time
from ipaddress import IPv4Address
from typing import Any

from weft.control.lease import subnet_key
from weft.control.registry import DEFAULT_PREFIX, RegistryError, load_snapshot
from weft.observe.control_socket import ControlError, control_stream
from weft.observe.tracehub import FilterError, event_frames, parse_filter
from weft.packet import fastpath_twin
from weft.packet.batch import Batch
from weft.packet.counters import SLOT_IP_ID
from weft.packet.reasons import Reason, Verdict, reason_name
from weft.packet.slowpath import describe
from weft.packet.table import CFG_LOCAL_INDEX, CFG_PORT, CFG_VNI
from weft.tools.offline import OfflineError, OfflineHost, host_from_snapshot
from weft.tools.trace_input import TraceInput, TraceInputError, read_input

EXIT_FAILURE, EXIT_USAGE = 1, 2

WHY = {  # what each reason means to somebody reading a trace
    Reason.OK: "handled by the fast path",
    Reason.TRUNCATED: "shorter than the headers it claims",
    Reason.NOT_IPV4: "not IPv4 where IPv4 is expected",
    Reason.BAD_IP_HEADER: "IPv4 version/IHL/total length inconsistent",
    Reason.BAD_VXLAN_FLAGS: "VXLAN I flag (0x08) not set",
    Reason.WRONG_VNI: "VXLAN VNI is not ours",
    Reason.UNKNOWN_SENDER: "outer source is no peer's PublicIP",
    Reason.SPOOFED_INNER_SRC: "inner source is outside the sending peer's subnets",
    Reason.NOT_FOR_US: "inner destination is outside our subnet",
    Reason.NO_ROUTE: "destination in the network but no lease covers it",
    Reason.OUTSIDE_NETWORK: "destination outside the cluster network",
    Reason.TTL_EXCEEDED: "TTL would reach 0",
    Reason.FRAG_NEEDED: "DF set and larger than the overlay MTU",
    Reason.ARP: "ARP from the host kernel, answered by the slow path",
    Reason.IPV6: "IPv6 (neighbour solicitations answered, the rest dropped)",
    Reason.BROADCAST: "broadcast frame, nothing to unicast to",
    Reason.MULTICAST: "multicast frame, nothing to unicast to",
    Reason.WRONG_INNER_MAC: "inner destination MAC is not our VtepMAC",
    Reason.LOCAL_DST: "addressed to our own subnet",
    Reason.UNKNOWN_ETHERTYPE: "ethertype the overlay does not carry",
    Reason.PEER_LOOKUP_MISS: "the peer's lease has no VtepMAC",
}


# ---- offline ----------------------------------------------------------------------------------


def device_of(host: OfflineHost) -> str:
    pl = host.pipeline
    return f"{pl.encap.device_label} {pl.encap.device_name(int(pl.dpcfg.cfg[CFG_VNI]))}"


def host_info(host: OfflineHost) -> dict:
    pl, lease = host.pipeline, host.lease
    return {"subnet": str(lease.subnet), "public_ip": str(lease.attrs.public_ip),
            "vtep_mac": lease.attrs.vtep_mac, "backend": pl.kind, "network": str(pl.network),
            "vni": int(pl.cfg[CFG_VNI]) if pl.encap.has_vni else None,
            "port": int(pl.cfg[CFG_PORT]),
            "mtu": pl.mtu, "device": device_of(host), "revision": host.snapshot.revision}


def flow_key(data: bytes, inp: TraceInput, host: OfflineHost) -> dict[str, Any]:
    """The parsed flow, with OVS field names (tun_*, dl_*, nw_*, tp_*)."""
    encap = host.pipeline.encap
    key: dict[str, Any] = {}
    if inp.direction == "ingress":
        key["in_port"] = f"udp socket :{int(host.pipeline.cfg[CFG_PORT])} (ingress)"
        key["tun_src"] = str(IPv4Address(inp.src_ip))
        key["tun_dst"] = str(host.lease.attrs.public_ip)
        if encap.has_vni and len(data) >= encap.header_len:  # VXLAN's flags, VNI
            key["tun_flags"] = f"0x{data[0]:02x}"
            key["tun_id"] = int.from_bytes(data[4:7], "big")
            data = encap.inner(data)
    else:
        key["in_port"] = f"{device_of(host)} (egress)"
    ethertype = 0x0800
    if encap.tap:
        if len(data) < 14:
            return {**key, "truncated": len(data)}
        ethertype = int.from_bytes(data[12:14], "big")
        key.update(dl_src=data[6:12].hex(":"), dl_dst=data[0:6].hex(":"),
                   dl_type=f"0x{ethertype:04x}")
        data = data[14:]
    if ethertype == 0x0806 and len(data) >= 28:
        key.update(arp_op=int.from_bytes(data[6:8], "big"),
                   arp_spa=str(IPv4Address(data[14:18])), arp_tpa=str(IPv4Address(data[24:28])))
    elif ethertype == 0x0800 and len(data) >= 20 and data[0] >> 4 == 4:
        proto = data[9]
        key.update(nw_src=str(IPv4Address(data[12:16])), nw_dst=str(IPv4Address(data[16:20])),
                   nw_proto=proto, nw_tos=data[1], nw_ttl=data[8],
                   nw_frag="no" if not int.from_bytes(data[6:8], "big") & 0x3FFF else "yes",
                   ip_len=int.from_bytes(data[2:4], "big"), ip_df="yes" if data[6] & 0x40 else "no")
        l4 = data[(data[0] & 15) * 4:]
        if proto in (6, 17) and len(l4) >= 4:
            key.update(tp_src=int.from_bytes(l4[0:2], "big"), tp_dst=int.from_bytes(l4[2:4], "big"))
        elif proto == 1 and len(l4) >= 2:
            key.update(icmp_type=l4[0], icmp_code=l4[1])
    return key


def _lease_view(host: OfflineHost, idx: int) -> dict:
    table = host.pipeline.table
    subnet = table.subnet_at(idx)
    view: dict[str, Any] = {"subnet_index": idx, "subnet": str(subnet)}
    if idx == int(host.pipeline.cfg[CFG_LOCAL_INDEX]):
        return {**view, "result": "local subnet (our own lease)"}
    lease = host.snapshot.lease_for(subnet)
    if lease is not None:
        view.update(lease=f"{DEFAULT_PREFIX}/subnets/{subnet_key(subnet)}",
                    public_ip=str(lease.attrs.public_ip), vtep_mac=lease.attrs.vtep_mac,
                    backend=lease.attrs.effective_backend)
    if table.present[idx]:
        view["result"] = "peer"
    elif lease is not None:
        view["result"] = f"lease of backend {lease.attrs.effective_backend}: not in our table"
    else:
        view["result"] = "no lease"
    return view


def lookups(flow: dict, inp: TraceInput, host: OfflineHost) -> list[dict]:
    pl = host.pipeline
    out: list[dict] = []

    def by_address(what: str, field: str) -> None:
        ip = int(IPv4Address(flow[field]))
        idx = fastpath_twin.subnet_index(ip, pl.cfg, pl.table)
        entry = {"table": what, "match": f"{field}={flow[field]}"}
        out.append({**entry, **(_lease_view(host, idx) if idx >= 0 else
                                {"result": f"outside the network {pl.network}"})})

    if inp.direction == "ingress":
        held = [str(s) for s, ip, _ in pl.table.peers() if int(ip) == inp.src_ip]
        out.append({"table": "senders", "match": f"tun_src={flow['tun_src']}",
                    "result": "known peer" if pl.table.has_sender(inp.src_ip) else "unknown",
                    "subnets": held})
        if "nw_src" in flow:
            by_address("inner source", "nw_src")
            by_address("inner destination", "nw_dst")
    elif "nw_dst" in flow:
        by_address("peers", "nw_dst")
    return out


def _run_twin(pl, data: bytes, inp: TraceInput) -> fastpath_twin.StepResult:
    steps = fastpath_twin.TWIN_STEPS[pl.encap]
    if inp.direction == "egress":  # the IP ID the kernel would give next
        return steps.egress(data, pl.cfg, pl.table, int(pl.counters[pl.path_egress, SLOT_IP_ID]))
    return steps.ingress(data, inp.src_ip, pl.cfg, pl.table)


def _run_kernel(pl, data: bytes, inp: TraceInput) -> tuple[int, int, bytes, int]:
    batch = Batch(1)
    batch.load(0, data, inp.src_ip)
    (pl.egress if inp.direction == "egress" else pl.ingress)(batch, 1)
    return int(batch.verdict[0]), int(batch.reason[0]), batch.output(0), int(batch.dst_ip[0])


def _compare(twin: fastpath_twin.StepResult, kernel: tuple[int, int, bytes, int]) -> dict:
    verdict, reason, out, dst = kernel
    diffs = []
    if verdict != twin.verdict or reason != twin.reason:
        diffs.append(f"verdict/reason: twin {twin.verdict.name.lower()}/{twin.reason.name.lower()}"
                     f", kernel {Verdict(verdict).name.lower()}/{reason_name(reason)}")
    if out != twin.out:
        first = next((i for i, (a, b) in enumerate(zip(out, twin.out, strict=False)) if a != b),
                     min(len(out), len(twin.out)))
        diffs.append(f"output bytes: twin {len(twin.out)}, kernel {len(out)}, first difference "
                     f"at byte {first}")
    if twin.verdict == Verdict.FORWARD and twin.dst_ip and dst != twin.dst_ip:
        diffs.append(f"peer: twin {IPv4Address(twin.dst_ip)}, kernel {IPv4Address(dst)}")
    return {"agree": not diffs, "differences": diffs,
            "kernel": {"verdict": Verdict(verdict).name.lower(), "reason": reason_name(reason),
                       "out_len": len(out)}}


def _actions(pl, direction: str, step: fastpath_twin.StepResult) -> list[dict]:
    if step.verdict != Verdict.FORWARD:
        return []
    head = pl.encap.egress_action if direction == "egress" else pl.encap.ingress_action
    sets = [{"action": "set_field", "field": f, "value": v} for f, v in step.fields]
    return [{"action": head}, *sets]


def _output(host: OfflineHost, inp: TraceInput, step: fastpath_twin.StepResult) -> dict:
    pl = host.pipeline
    if step.verdict == Verdict.DROP:
        return {"action": "drop", "reason": step.reason.name.lower(),
                "why": WHY.get(step.reason, "")}
    if step.verdict == Verdict.SLOW:
        return {"action": "slow path", "reason": step.reason.name.lower(),
                "why": WHY.get(step.reason, "")}
    if inp.direction == "ingress":
        return {"action": f"output: write to {device_of(host)}"}
    peer = IPv4Address(step.dst_ip)
    if pl.encap.builds_outer:
        return {"action": f"output: raw socket -> {peer}", "peer": str(peer)}
    port = int(pl.cfg[CFG_PORT])
    return {"action": f"output: udp socket :{port} -> {peer}:{port}",
            "peer": str(peer)}


def trace_input(host: OfflineHost, inp: TraceInput) -> dict:
    """Everything `weft trace` reports about one packet, as a JSON-able document."""
    pl = host.pipeline
    data = inp.data
    flow = flow_key(data, inp, host)
    step = _run_twin(pl, data, inp)
    check = _compare(step, _run_kernel(pl, data, inp))
    linktype = pl.encap.device_link
    inner = pl.encap.inner(data) if inp.direction == "ingress" else data
    kernel_name = f"{pl.kind}_{inp.direction}"
    path = "slow" if step.verdict == Verdict.SLOW else "fast"
    doc: dict[str, Any] = {
        "input": {"origin": inp.origin, "direction": inp.direction, "bytes": len(data),
                  "notes": inp.notes, "summary": describe(inner, linktype)},
        "host": host_info(host),
        "flow": flow,
        "classification": {"kernel": kernel_name, "path": path,
                           "why": f"{step.reason.name.lower()}: {WHY.get(step.reason, '')}"},
        "lookup": lookups(flow, inp, host),
        "actions": _actions(pl, inp.direction, step),
        "verdict": step.verdict.name.lower(),
        "reason": step.reason.name.lower(),
        "output": _output(host, inp, step),
        "final_flow": None,
        "slow_path": None,
        "check": check,
    }
    if step.verdict == Verdict.FORWARD:
        doc["final_flow"] = {"bytes": len(step.out), "summary": _final(pl, inp, step),
                             "hex": step.out.hex()}
    elif step.verdict == Verdict.SLOW:
        result = pl.slow(data, int(step.reason))
        doc["slow_path"] = {"reason": reason_name(result.reason), "summary": result.summary,
                            "writes": [{"to": device_of(host), "bytes": len(w),
                                        "summary": describe(w, linktype)}
                                       for w in result.writes]}
    return doc


def _final(pl, inp: TraceInput, step: fastpath_twin.StepResult) -> str:
    out = step.out
    if inp.direction == "ingress":
        return describe(out, pl.encap.device_link)
    if not pl.encap.builds_outer:
        port = int(pl.cfg[CFG_PORT])
        return (f"udp :{port} -> {IPv4Address(step.dst_ip)}:{port} carrying "
                + describe(out, "ip"))
    outer = (f"IPv4 {IPv4Address(out[12:16])} > {IPv4Address(out[16:20])} ttl {out[8]} / UDP "
             f"{int.from_bytes(out[20:22], 'big')} > {int.from_bytes(out[22:24], 'big')} / "
             f"{pl.encap.header_name} vni {int.from_bytes(out[32:35], 'big')}")
    payload = out[28:]  # after the outer IPv4 (20, no options) and UDP (8) headers
    return f"{outer} / {describe(pl.encap.inner(payload), pl.encap.device_link)}"


def _value(name: str, value: Any) -> str:
    if isinstance(value, int) and ("csum" in name or "flags" in name):
        return f"0x{value:0{2 if value < 256 and 'flags' in name else 4}x}"
    return str(value)


def format_trace(doc: dict) -> str:
    """The text form of a trace document (the same facts as --json)."""
    h, flow = doc["host"], doc["flow"]
    proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(flow.get("nw_proto"), "ip")
    first = "arp" if "arp_op" in flow else proto if "nw_src" in flow else "packet"
    lines = [f"Flow: {first}," + ",".join(f"{k}={v}" for k, v in flow.items())]
    lines += [f"      {doc['input']['summary']}  [{doc['input']['origin']}]"]
    lines += [f"      note: {note}" for note in doc["input"]["notes"]]
    vni = f" vni {h['vni']}" if h["vni"] is not None else ""
    lines += ["", f"host {h['subnet']} (PublicIP {h['public_ip']}, VtepMAC {h['vtep_mac'] or '-'})"
              f" {h['backend']}{vni} port {h['port']} mtu {h['mtu']}, snapshot revision "
              f"{h['revision']}", "-" * 72]
    c = doc["classification"]
    lines.append(f" 0. classify: {c['kernel']} kernel -> {c['path']} path, {doc['verdict']} "
                 f"({c['why']})")
    for n, entry in enumerate(doc["lookup"], 1):
        lines.append(f" {n}. lookup {entry['table']}: {entry['match']} -> {entry['result']}")
        if "subnet" in entry:
            lines.append(f"        subnet #{entry['subnet_index']} {entry['subnet']}")
        if entry.get("lease"):
            lines.append(f"        lease {entry['lease']} (snapshot revision {h['revision']})")
            lines.append(f"        PublicIP {entry['public_ip']}, VtepMAC "
                         f"{entry['vtep_mac'] or '-'}, backend {entry['backend']}")
        if entry.get("subnets"):
            lines.append("        holds " + ", ".join(entry["subnets"]))
    step = len(doc["lookup"]) + 1
    for action in doc["actions"]:
        if action["action"] == "set_field":
            lines.append(f"        set_field: {action['field']} = "
                         f"{_value(action['field'], action['value'])}")
        else:
            lines.append(f" {step}. {action['action']}")
    out = doc["output"]
    lines += ["", f"Final flow: {doc['final_flow']['summary']} ({doc['final_flow']['bytes']} "
                  f"bytes)" if doc["final_flow"] else "Final flow: unchanged"]
    if out["action"] in ("drop", "slow path"):
        lines.append(f"Datapath actions: {out['action']} ({out['reason']}: {out['why']})")
    else:
        lines.append(f"Datapath actions: {out['action']}")
    if doc["slow_path"]:
        sp = doc["slow_path"]
        lines.append(f"Slow path: {sp['summary']} -> {sp['reason']}")
        lines += [f"    write to {w['to']}: {w['summary']} ({w['bytes']} bytes)"
                  for w in sp["writes"]] or ["    writes nothing back"]
    lines.append(f"Verdict: {doc['verdict'].upper()} ({doc['reason']})")
    check = doc["check"]
    if check["agree"]:
        lines.append("twin and kernel agree (verdict, reason, output bytes)")
    else:
        lines += ["", "!" * 72, "!!! WARNING: the numba kernel and its twin DISAGREE (a bug):"]
        lines += [f"!!!   {d}" for d in check["differences"]] + ["!" * 72]
    return "\n".join(lines)


def offline_trace(leases: str, as_subnet: str, packet: str | None = None, *,
                  direction: str | None = None, src_ip: str | None = None,
                  pcap: str | None = None, index: int = 0) -> dict:
    """Load the snapshot, build the host, read the packet and trace it."""
    from weft.control.lease import parse_subnet_cidr

    host = host_from_snapshot(load_snapshot(leases), parse_subnet_cidr(as_subnet))
    inp = read_input(host, packet, direction=direction, src_ip=src_ip, pcap=pcap, index=index)
    return trace_input(host, inp)


# ---- live -------------------------------------------------------------------------------------


def format_event(event: dict) -> str:
    stamp = event["t"]
    when = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1e6):06d}"
    proto = event["proto"]
    if proto in ("tcp", "udp"):
        flow = f"{event['src']}:{event['sport']} -> {event['dst']}:{event['dport']}"
    elif proto == "icmp":
        flow = f"{event['src']} -> {event['dst']} type {event['sport']} code {event['dport']}"
    else:
        flow = f"{event['src']} -> {event['dst']}"
    verdict = event["verdict"] + ("" if event["reason"] == "ok" else f" ({event['reason']})")
    return (f"{when} {event['dir']:<7} {proto:<5} {flow:<48} peer {event['peer'] or '-':<15} "
            f"{verdict}")


def live_trace(socket_path: str, filter_text: str | None = None, count: int = 0,
               write: str | None = None, out=sys.stdout, err=sys.stderr) -> int:
    """Stream events from a daemon; returns an exit code."""
    try:
        parse_filter(filter_text)  # fail here, with the same message the daemon would give
    except FilterError as exc:
        print(f"weft trace: {exc}", file=err)
        return EXIT_USAGE
    pcap = None
    try:
        stream = control_stream(socket_path, "trace", filter=filter_text or "", count=count,
                                bytes=bool(write))
        try:
            for record in stream:
                kind = record.get("type")
                if kind == "hello":
                    print(f"tracing {record.get('device', '?')} ({record.get('backend')}, "
                          f"{record.get('subnet', '?')}); filter: {filter_text or 'all'}",
                          file=err)
                    if write:
                        pcap = EventPcap(write, record)
                elif kind == "event":
                    print(format_event(record), file=out, flush=True)
                    if pcap is not None:
                        pcap.write(record)
                elif kind == "stats":
                    print(f"# {record['dropped']} events dropped so far (reader too slow)",
                          file=err)
                elif kind == "end":
                    print(f"# {record['events']} events, {record['dropped']} dropped", file=err)
                    break
        finally:
            stream.close()
    except KeyboardInterrupt:
        pass
    except ControlError as exc:
        print(f"weft trace: {exc}", file=err)
        return EXIT_USAGE if "filter" in str(exc) else EXIT_FAILURE
    finally:
        if pcap is not None:
            pcap.close()
    return 0


class EventPcap:
    """Writes each event's input and output as Ethernet frames (see the module docstring).

    The classic pcap format is 24 + 16 bytes of header; written here so each record keeps its
    event's timestamp (scapy's raw writer adds its header only through write(), which has none).
    """

    def __init__(self, path: str, info: dict) -> None:
        self.info = info
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

    def write(self, event: dict) -> None:
        sec, usec = int(event["t"]), int(event["t"] % 1 * 1e6)
        for frame in event_frames(event, self.info):
            self.file.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ---- command line -----------------------------------------------------------------------------


def cmd_trace(args) -> int:
    if args.live:
        if args.leases or args.packet or args.pcap:
            print("weft trace: --live takes no packet, --leases or --pcap", file=sys.stderr)
            return EXIT_USAGE
        return live_trace(args.socket, args.filter, max(args.count, 0), args.write)
    if args.filter or args.write or args.count:
        print("weft trace: --filter, --count and --write need --live", file=sys.stderr)
        return EXIT_USAGE
    if not args.leases or not args.as_subnet or not (args.packet or args.pcap):
        print("weft trace: offline tracing needs --leases, --as and a PACKET (or --pcap)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        doc = offline_trace(args.leases, args.as_subnet, args.packet, direction=args.direction,
                            src_ip=args.src_ip, pcap=args.pcap, index=args.index)
    except (TraceInputError, OfflineError, RegistryError, ValueError) as exc:
        print(f"weft trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        import json

        print(json.dumps(doc, indent=2))
    else:
        print(format_trace(doc))
    return 0 if doc["check"]["agree"] else EXIT_FAILURE
