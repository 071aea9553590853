"""The argument parsers of `weft replay` and `weft trace`, apart from the tools themselves.

The tools load the pipeline, and with it numba and LLVM (~0.4 s and ~60 MB); the CLI builds
every subcommand's parser on each call, so `weft status` or `weft leases` would pay for them
too. Here the parsers are defined without those imports, and each tool loads when it runs.
"""

from __future__ import annotations

import argparse
import os

from weft.observe.control_socket import DEFAULT_CONTROL_SOCKET
from weft.packet.encap import UDP, VXLAN


def add_replay_parser(subparsers, parents: list[argparse.ArgumentParser] | None = None
                      ) -> argparse.ArgumentParser:
    """Add `replay` to a subparsers object (as in switch/cli.py); sets func=cmd_replay."""
    p = subparsers.add_parser(
        "replay", parents=list(parents or []),
        help="run the pipeline over a capture as the host holding a subnet",
        description="Run the daemon's pipeline over a capture, as the host holding one "
                    "subnet.")
    p.add_argument("capture", metavar="IN.pcap", help="pcap or pcapng to replay")
    p.add_argument("--leases", metavar="SNAPSHOT.json", help="`weft leases --json` snapshot")
    p.add_argument("--as", dest="as_subnet", metavar="SUBNET",
                   help="replay as the host holding this subnet lease")
    p.add_argument("--out", metavar="OUT.pcap",
                   help="wire-side output (raw IPv4); the device side goes to OUT.device.pcap")
    p.add_argument("--json", action="store_true", help="one JSON record per input packet")
    p.add_argument("--decap-only", action="store_true",
                   help="ignore leases; remove exactly one VXLAN layer (inner Ethernet frames)")
    p.add_argument("--udp-raw", action="store_true",
                   help="with --decap-only: remove one flannel-UDP layer (raw IPv4 out)")
    p.add_argument("--port", type=int, help=f"with --decap-only: UDP destination port "
                                            f"(default {VXLAN.default_port}, or "
                                            f"{UDP.default_port} with --udp-raw)")
    p.set_defaults(func=_replay)
    return p


def _replay(args: argparse.Namespace) -> int:
    from weft.tools.replay import cmd_replay

    return cmd_replay(args)


def add_trace_parser(subparsers, parents=()) -> argparse.ArgumentParser:
    """Add `weft trace` to an argparse subparsers object; args.func(args) returns an exit code."""
    p = subparsers.add_parser(
        "trace", parents=list(parents), help="trace a packet through the pipeline (offline) or "
        "watch a running daemon's packets (--live)",
        description="Offline: weft trace --leases SNAPSHOT --as SUBNET PACKET. "
                    "Live: weft trace --live [--filter EXPR].")
    p.add_argument("packet", nargs="?", help="scapy expression (Ether()/IP(...)/ICMP()) or hex")
    p.add_argument("--leases", help="lease snapshot (weft leases --json)")
    p.add_argument("--as", dest="as_subnet", metavar="SUBNET", help="trace as the host of SUBNET")
    p.add_argument("--direction", choices=("egress", "ingress"), help="default: inferred")
    p.add_argument("--src-ip", help="outer source (the sending peer) of an ingress packet")
    p.add_argument("--pcap", help="take the packet from this pcap")
    p.add_argument("--index", type=int, default=0, help="packet number in --pcap, from 0")
    p.add_argument("--json", action="store_true", help="the trace as a JSON document")
    p.add_argument("--live", action="store_true", help="stream events from a running daemon")
    p.add_argument("--socket", default=os.environ.get("WEFT_CONTROL_SOCKET",
                                                      DEFAULT_CONTROL_SOCKET),
                   help="the daemon's control socket [env WEFT_CONTROL_SOCKET]")
    p.add_argument("--filter", help="e.g. 'host 10.1.16.2 and proto icmp and verdict drop'")
    p.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    p.add_argument("--write", metavar="FILE.pcap", help="save traced packets (inner and outer)")
    p.set_defaults(func=_trace)
    return p


def _trace(args: argparse.Namespace) -> int:
    from weft.tools.trace import cmd_trace

    return cmd_trace(args)
