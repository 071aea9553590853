"""`weft replay`: run the daemon's pipeline over a capture, as the host holding one subnet.

Every record is classified, then handed to the same `Pipeline` the daemon runs (fast path in
batches, SLOW verdicts to the scapy slow path); nothing here decides a packet's fate except
what the daemon's own IO would have decided before the pipeline sees it (a truncated record,
a link type the device cannot produce, a UDP datagram the kernel would not deliver).

Classification (weft.packet.outer.is_ingress, shared with `weft trace`): an IPv4/UDP datagram
to our PublicIP on the backend port is ingress (its UDP payload goes in, with the outer source
as sender). Anything else is egress: for vxlan the Ethernet frame as the TAP delivers it; for
udp the IPv4 packet as the TUN delivers it (an Ethernet capture has its Ethernet header
stripped first). A raw-IP record can never be a TAP
frame, so in a vxlan replay it is UNSUPPORTED_LINKTYPE unless it is ingress.

Outputs go to two files, since the two sides of a host have different link types:
OUT is the wire side (egress FORWARD, complete outer IPv4 packets, LINKTYPE_RAW); OUT's
`.device` twin (out.pcap -> out.device.pcap) is what is written into the TAP/TUN (ingress
FORWARD and slow-path answers: Ethernet for vxlan, raw IPv4 for udp). The udp backend's
pipeline emits the datagram payload only; the wire file wraps it as the kernel would send it
from flannel's socket (weft.packet.outer.wrap_udp): IPv4 (id 0, DF set, TTL 64) and UDP from
our PublicIP:port to the peer's PublicIP:port, both checksums filled in. Timestamps are
copied from the input records.

`--decap-only` ignores the lease snapshot and removes exactly one VXLAN (or, with --udp-raw,
flannel-UDP) layer from each record: see `decap`. RFC 7348 policy there and in the daemon:
only the I flag is checked on receipt; the other flag bits and the reserved fields are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path

from weft.control.registry import RegistryError, Snapshot, load_snapshot
from weft.packet.batch import BUFSIZE, HEADROOM, Batch
from weft.packet.encap import UDP, VXLAN, Encap
from weft.packet.headers import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_TYPE_AT,
    VXLAN_FLAG_I,
    VXLAN_FLAGS_AT,
    VXLAN_VNI_AT,
)
from weft.packet.outer import find_datagram, is_ingress, wrap_udp
from weft.packet.reasons import Reason, Verdict, reason_name, verdict_name
from weft.packet.slowpath import describe
from weft.packet.table import CFG_PORT
from weft.tools.commands import add_replay_parser
from weft.tools.offline import OfflineError, OfflineHost, host_from_snapshot
from weft.tools.pcapio import (
    LINKTYPE_ETHERNET,
    LINKTYPE_OF_LINK,
    LINKTYPE_RAW,
    RAW_IP_LINKTYPES,
    Capture,
    CaptureError,
    PcapOut,
    Record,
)

EXIT_OK, EXIT_USAGE = 0, 2
BATCH = 64
EGRESS, INGRESS, DECAP = "egress", "ingress", "decap"


@dataclass
class Outcome:
    """What became of one input record; `outputs` are (side, bytes), side "wire"/"device"."""

    index: int
    in_len: int
    direction: str | None = None
    verdict: int = int(Verdict.DROP)
    reason: int = int(Reason.OK)
    peer: dict | None = None
    out_len: int = 0
    slow: str | None = None
    vni: int | None = None
    ts: tuple[int, int] = (0, 0)  # the input record's (sec, usec or nsec), copied to outputs
    outputs: list[tuple[str, bytes]] = field(default_factory=list)

    def to_json(self) -> dict:
        record = {"index": self.index, "direction": self.direction,
                  "verdict": verdict_name(self.verdict), "reason": reason_name(self.reason),
                  "peer": self.peer, "in_len": self.in_len, "out_len": self.out_len,
                  "slow": self.slow}
        if self.direction == DECAP:
            record["vni"] = self.vni
        return record


def _drop(outcome: Outcome, reason: Reason) -> Outcome:
    outcome.verdict, outcome.reason = int(Verdict.DROP), int(reason)
    return outcome


# ---- outer headers: what the host's kernel does before the pipeline -------------------------


def ip_offset(data: bytes, linktype: int) -> int | None:
    """Offset of the IPv4 header in a record, None when the record carries no IPv4."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) >= ETH_HLEN and struct.unpack_from("!H", data, ETH_TYPE_AT)[0] == ETH_P_IP:
            return ETH_HLEN
        return None
    if linktype in RAW_IP_LINKTYPES and data and data[0] >> 4 == 4:
        return 0
    return None


# ---- the replay engine ------------------------------------------------------------------------


class Replayer:
    """Feeds records to one host's pipeline, in order, batching runs of one direction."""

    def __init__(self, host: OfflineHost) -> None:
        self.host = host
        self.pipeline = host.pipeline
        self.encap = host.encap
        self.public_ip = int(host.lease.attrs.public_ip)
        self.port = int(self.pipeline.dpcfg.cfg[CFG_PORT])
        self.pre_drops: Counter[str] = Counter()  # decided before the pipeline
        self._by_public_ip = {int(ip): (subnet, ip)
                              for subnet, ip, _ in self.pipeline.table.peers()}

    def run(self, records: Iterable[Record]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        pending: list[tuple[Outcome, bytes, int]] = []
        for record in records:
            outcome, data, sender = self.classify(record)
            if data is None:
                self.pre_drops[reason_name(outcome.reason)] += 1
                outcomes.append(outcome)
                continue
            if pending and (pending[0][0].direction != outcome.direction or len(pending) == BATCH):
                self._flush(pending)
                pending = []
            pending.append((outcome, data, sender))
            outcomes.append(outcome)
        if pending:
            self._flush(pending)
        return outcomes

    def classify(self, record: Record) -> tuple[Outcome, bytes | None, int]:
        """(outcome so far, bytes for the pipeline or None if already decided, sender)."""
        outcome = Outcome(record.index, len(record.data))
        data, linktype = record.data, record.linktype
        if linktype != LINKTYPE_ETHERNET and linktype not in RAW_IP_LINKTYPES:
            return _drop(outcome, Reason.UNSUPPORTED_LINKTYPE), None, 0
        off = ip_offset(data, linktype)
        dgram = find_datagram(data, off) if off is not None else None
        if is_ingress(dgram, self.public_ip, self.port):
            outcome.direction = INGRESS
            outcome.peer = self._peer_by_public_ip(dgram.src)
            if record.truncated:
                return _drop(outcome, Reason.TRUNCATED), None, 0
            if dgram.payload is None:
                return _drop(outcome, dgram.error), None, 0
            return outcome, dgram.payload, dgram.src
        outcome.direction = EGRESS
        if record.truncated:  # the device never hands over part of a packet
            return _drop(outcome, Reason.TRUNCATED), None, 0
        if self.encap.tap:
            if linktype != LINKTYPE_ETHERNET:
                return _drop(outcome, Reason.UNSUPPORTED_LINKTYPE), None, 0
            return outcome, data, 0
        if linktype == LINKTYPE_ETHERNET:  # what the TUN would carry: the L3 packet
            if len(data) < ETH_HLEN:
                return _drop(outcome, Reason.TRUNCATED), None, 0
            if data[12:14] not in (b"\x08\x00", b"\x86\xdd"):
                return _drop(outcome, Reason.UNKNOWN_ETHERTYPE), None, 0
            data = data[ETH_HLEN:]
        return outcome, data, 0

    def _flush(self, pending: list[tuple[Outcome, bytes, int]]) -> None:
        longest = max(len(data) for _, data, _ in pending)
        batch = Batch(len(pending), max(BUFSIZE, HEADROOM + longest))
        for i, (_, data, sender) in enumerate(pending):
            batch.load(i, data, sender)
        n = len(pending)
        egress = pending[0][0].direction == EGRESS
        if egress:
            self.pipeline.egress(batch, n)
        else:
            self.pipeline.ingress(batch, n)
        for i, (outcome, data, _) in enumerate(pending):
            outcome.verdict, outcome.reason = int(batch.verdict[i]), int(batch.reason[i])
            if outcome.verdict == Verdict.FORWARD:
                out = batch.output(i)
                outcome.out_len = len(out)
                if egress:
                    outcome.peer = self._peer_by_public_ip(int(batch.dst_ip[i]), data)
                    if not self.encap.builds_outer:  # the UDP socket would add these
                        out = wrap_udp(out, self.public_ip, int(batch.dst_ip[i]), self.port)
                outcome.outputs.append(("wire" if egress else "device", out))
            elif outcome.verdict == Verdict.SLOW:
                result = self.pipeline.slow(data, outcome.reason)
                outcome.reason, outcome.slow = int(result.reason), result.summary
                outcome.outputs.extend(("device", w) for w in result.writes)
                outcome.out_len = sum(len(w) for w in result.writes)

    def _peer_by_public_ip(self, ip: int, inner: bytes | None = None) -> dict | None:
        if inner is not None:  # egress: the lease covering the inner destination
            subnet = self._inner_dst_subnet(inner)
            if subnet is not None:
                entry = self.pipeline.table.peer(subnet)
                if entry is not None:
                    return {"subnet": str(subnet), "public_ip": str(entry[0])}
        found = self._by_public_ip.get(ip)
        if found is None:
            return None
        return {"subnet": str(found[0]), "public_ip": str(found[1])}

    def _inner_dst_subnet(self, inner: bytes) -> IPv4Network | None:
        off = self.encap.inner_l3_offset
        if len(inner) < off + 20:
            return None
        idx = self.pipeline.table.index_of(struct.unpack_from("!I", inner, off + 16)[0])
        return self.pipeline.table.subnet_at(idx) if idx >= 0 else None


# ---- decap-only: remove exactly one layer -----------------------------------------------------


def decap(record: Record, port: int, udp_raw: bool = False) -> Outcome:
    """Strip one VXLAN (or flannel-UDP) layer, UDP dst `port`; no peer table, no VNI check.

    RFC 7348 section 5: the I flag must be set; every other flag bit and the reserved fields
    are ignored on receipt. The VNI is reported in the outcome.
    """
    outcome = Outcome(record.index, len(record.data), DECAP)
    linktype = record.linktype
    if linktype != LINKTYPE_ETHERNET and linktype not in RAW_IP_LINKTYPES:
        return _drop(outcome, Reason.UNSUPPORTED_LINKTYPE)
    off = ip_offset(record.data, linktype)
    if off is None:
        short = linktype == LINKTYPE_ETHERNET and len(record.data) < ETH_HLEN
        return _drop(outcome, Reason.TRUNCATED if short or not record.data else Reason.NOT_IPV4)
    dgram = find_datagram(record.data, off)
    if dgram is None:
        return _drop(outcome, Reason.TRUNCATED if record.truncated else Reason.WRONG_PORT)
    if dgram.dport >= 0 and dgram.dport != port:
        return _drop(outcome, Reason.WRONG_PORT)
    if record.truncated:
        return _drop(outcome, Reason.TRUNCATED)
    if dgram.payload is None:
        return _drop(outcome, dgram.error)
    payload = dgram.payload
    if udp_raw:
        if not payload:
            return _drop(outcome, Reason.TRUNCATED)
        if payload[0] >> 4 != 4:
            return _drop(outcome, Reason.NOT_IPV4)
        inner = payload
    else:
        if len(payload) < VXLAN.header_len + ETH_HLEN:
            return _drop(outcome, Reason.TRUNCATED)
        if not payload[VXLAN_FLAGS_AT] & VXLAN_FLAG_I:
            return _drop(outcome, Reason.BAD_VXLAN_FLAGS)
        outcome.vni = struct.unpack_from("!I", payload, VXLAN_VNI_AT)[0] >> 8
        inner = VXLAN.inner(payload)
    outcome.verdict, outcome.out_len = int(Verdict.FORWARD), len(inner)
    outcome.outputs.append(("device", inner))
    return outcome


# ---- the command ------------------------------------------------------------------------------


def device_path(out: str | Path) -> Path:
    """out.pcap -> out.device.pcap: the file for what is written into the TAP/TUN."""
    path = Path(out)
    return path.with_name(f"{path.stem}.device{path.suffix}") if path.suffix else \
        path.with_name(f"{path.name}.device")


def replay_capture(path: str | Path, host: OfflineHost) -> tuple[Capture, list[Outcome], dict]:
    """Replay a whole capture; returns the (closed) capture, outcomes and counter summary."""
    replayer = Replayer(host)
    with Capture(path) as capture:
        records = list(capture)
    outcomes = replayer.run(records)
    summary = host.pipeline.counter_summary()
    if replayer.pre_drops:
        summary["before_pipeline"] = dict(replayer.pre_drops)
    _timestamps(outcomes, records)
    return capture, outcomes, summary


def decap_capture(path: str | Path, port: int, udp_raw: bool = False
                  ) -> tuple[Capture, list[Outcome]]:
    with Capture(path) as capture:
        records = list(capture)
    outcomes = [decap(record, port, udp_raw) for record in records]
    _timestamps(outcomes, records)
    return capture, outcomes


def _timestamps(outcomes: list[Outcome], records: list[Record]) -> None:
    for outcome, record in zip(outcomes, records, strict=True):
        outcome.ts = (record.sec, record.frac)


def write_outputs(outcomes: list[Outcome], out: str | Path, nano: bool, wire_linktype: int,
                  device_linktype: int | None) -> None:
    """Write the wire side to `out` and, if `device_linktype`, the device side beside it.

    With no device file (decap-only) every output goes to `out`.
    """
    wire = PcapOut(out, wire_linktype, nano)
    device = PcapOut(device_path(out), device_linktype, nano) if device_linktype else None
    with wire:
        for outcome in outcomes:
            sec, frac = outcome.ts
            for side, data in outcome.outputs:
                target = device if side == "device" and device is not None else wire
                target.write(data, sec, frac)
    if device is not None:
        device.close()


def cmd_replay(args: argparse.Namespace) -> int:
    """The `weft replay` command; returns the exit code (2: bad input or arguments)."""
    try:
        if args.decap_only:
            return _cmd_decap(args)
        if args.port is not None or args.udp_raw:
            raise _Usage("--port and --udp-raw go with --decap-only")
        if not args.leases or not args.as_subnet:
            raise _Usage("--leases and --as are required (or use --decap-only)")
        host = host_from_snapshot(_snapshot(args.leases), _subnet(args.as_subnet))
        capture, outcomes, summary = replay_capture(args.capture, host)
    except (_Usage, CaptureError, RegistryError, OfflineError) as exc:
        print(f"weft replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.out:
        device = LINKTYPE_OF_LINK[host.encap.device_link]
        write_outputs(outcomes, args.out, capture.nano, LINKTYPE_RAW, device)
    return _print(args, outcomes, capture, summary, host.encap)


def _cmd_decap(args: argparse.Namespace) -> int:
    encap = UDP if args.udp_raw else VXLAN
    port = args.port if args.port is not None else encap.default_port
    if not 0 < port < 65536:
        raise _Usage(f"--port {port} is not a UDP port")
    capture, outcomes = decap_capture(args.capture, port, args.udp_raw)
    if args.out:
        inner = LINKTYPE_OF_LINK[encap.device_link]
        write_outputs(outcomes, args.out, capture.nano, inner, None)
    return _print(args, outcomes, capture, None, encap)


def _print(args, outcomes: list[Outcome], capture: Capture, summary: dict | None,
           encap: Encap) -> int:
    try:
        _emit(args, outcomes, summary, encap)
    except BrokenPipeError:  # `weft replay ... | head`: the reader has seen enough
        # Python's documented recipe: point stdout at devnull so the exit-time flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if capture.error:
        print(f"weft replay: reading stopped early: {capture.error}", file=sys.stderr)
    return EXIT_OK


def _emit(args, outcomes: list[Outcome], summary: dict | None, encap: Encap) -> None:
    if args.json:
        for outcome in outcomes:
            print(json.dumps(outcome.to_json(), sort_keys=False))
    else:
        for outcome in outcomes:
            print(_line(outcome, encap))
        if summary is not None:
            print(json.dumps(summary, indent=2))


def _line(outcome: Outcome, encap: Encap) -> str:
    peer = outcome.peer
    via = f" peer {peer['subnet']} at {peer['public_ip']}" if peer else ""
    vni = f" vni {outcome.vni}" if outcome.vni is not None else ""
    text = (f"{outcome.index:5d} {outcome.direction or '-':8s} "
            f"{verdict_name(outcome.verdict):9s} {reason_name(outcome.reason)}{via}{vni} "
            f"{outcome.in_len}->{outcome.out_len} B")
    if outcome.slow:
        text += f" | {outcome.slow}"
    for side, data in outcome.outputs[:1]:
        text += f" | {describe(data, encap.device_link if side == 'device' else 'ip')}"
    return text


class _Usage(ValueError):
    pass


def _snapshot(path: str) -> Snapshot:
    try:
        return load_snapshot(path)
    except (ValueError, OSError) as exc:  # a binary file, a bad config inside it, ...
        raise _Usage(f"cannot read lease snapshot {path}: {exc}") from None


def _subnet(text: str) -> IPv4Network:
    try:
        return IPv4Network(text)
    except ValueError as exc:
        raise _Usage(f"--as {text!r}: {exc}") from None


def run_replay(argv: list[str]) -> tuple[int, str]:
    """`weft replay ARGV` in-process, through the command's own parser: (exit code, stdout)."""
    parser = argparse.ArgumentParser(prog="weft")
    add_replay_parser(parser.add_subparsers(), [])
    args = parser.parse_args(["replay", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()
