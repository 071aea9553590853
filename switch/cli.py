"""The `weft` command line. Flags are named like flanneld's; each also reads `WEFT_<FLAG>`."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import NoReturn

from weft import backends
from weft.control import subnet_env
from weft.control.config import ConfigError, parse_config
from weft.control.registry import DEFAULT_PREFIX, RegistryError
from weft.drivers import modes as datapath_modes
from weft.flanneld_flags import FLANNELD_FLAGS, UNSUPPORTED, checked, notices
from weft.goflags import go_bool, normalize

EXIT_USAGE = 2  # invalid input (config, flags): fix it and run again
EXIT_FAILURE = 1


def env_name(flag: str, prefix: str = "WEFT_") -> str:
    return prefix + flag.lstrip("-").upper().replace("-", "_")


def _env_value(flag: str) -> tuple[str, str] | None:
    """(variable, value) for a flag from the environment: WEFT_<FLAG>, else FLANNELD_<FLAG>
    for flanneld's own flags. An empty FLANNELD_ variable counts as unset, as in flanneld; an
    empty WEFT_ one is a value (WEFT_CONTROL_SOCKET= turns the socket off)."""
    name = env_name(flag)
    if name in os.environ:
        return name, os.environ[name]
    if flag.lstrip("-") in FLANNELD_FLAGS:
        name = env_name(flag, "FLANNELD_")
        if os.environ.get(name):
            return name, os.environ[name]
    return None


class _Repeatable(argparse.Action):
    """Like action="append", except that the first use on the command line replaces a default
    from the environment instead of adding to it (the command line wins, see _flag)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        items = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, [*items, values])


def _optional(parse):
    """A type for flags whose empty value means unset, as in flanneld (`-public-ip=$UNSET`)."""
    def convert(text: str):
        return None if text == "" else parse(text)
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _flag(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
    """Add a flag whose default comes from the environment (see _env_value).

    Precedence: command line > WEFT_<FLAG> > FLANNELD_<FLAG> > built-in default. Booleans take
    Go's `--flag=false`; a string default goes through the flag's type, so a bad value in the
    environment is an argparse error like a bad value on the command line."""
    if kwargs.get("type") is go_bool:
        kwargs.update(nargs="?", const=True, metavar="BOOL")
        kwargs.setdefault("default", False)
    env = _env_value(flag)
    if env is not None:
        if kwargs.get("action") is _Repeatable:
            kwargs["default"] = [env[1]]
        elif kwargs.get("action") == "store_true":
            kwargs["default"] = env[1].lower() in ("1", "true", "yes", "on")
        else:
            kwargs["default"] = env[1]
    names = env_name(flag)
    if flag.lstrip("-") in FLANNELD_FLAGS:
        names += ", " + env_name(flag, "FLANNELD_")
    kwargs["help"] = (kwargs.get("help") or "") + f" [env {names}]"
    parser.add_argument(flag, **kwargs)


def _etcd_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--etcd-endpoints", default="http://127.0.0.1:2379",
          help="comma-separated list of etcd endpoints (every member of the cluster; "
               "https:// for TLS)")
    _flag(parser, "--etcd-prefix", default=DEFAULT_PREFIX, help="etcd prefix")
    _flag(parser, "--etcd-cafile", help="TLS CA file for etcd")
    _flag(parser, "--etcd-certfile", help="TLS client certificate for etcd")
    _flag(parser, "--etcd-keyfile", help="TLS client key for etcd")
    _flag(parser, "--etcd-username", help="etcd user")
    _flag(parser, "--etcd-password", help="etcd password")


def _iface_flags(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--iface", action=_Repeatable,
          help="interface (name or IPv4 address) for inter-host traffic; repeatable: the first "
               "that exists is used")
    _flag(parser, "--iface-regex", action=_Repeatable,
          help="regex for the interface's IPv4 address or name, when no --iface; repeatable: "
               "the first interface one matches is used")
    _flag(parser, "--iface-can-reach", type=_optional(IPv4Address),
          help="use the interface the kernel routes this address through (no --iface/-regex)")
    _flag(parser, "--public-ip", type=_optional(IPv4Address), help="IP other hosts reach us at")
    _flag(parser, "--public-ipv6", type=_optional(IPv6Address),
          help="IPv6 address other hosts reach us at (EnableIPv6); else the interface's global "
               "IPv6 address")


def _control_flag(parser: argparse.ArgumentParser) -> None:
    from weft.observe.control_socket import DEFAULT_CONTROL_SOCKET

    _flag(parser, "--control-socket", default=DEFAULT_CONTROL_SOCKET,
          help="the daemon's control socket (mode 0600)")


def _renew_margin(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1439:
        raise argparse.ArgumentTypeError(
            "--subnet-lease-renew-margin must be between 1 and 1439 minutes")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weft")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _log_format_flag(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "--log-format", choices=("text", "json"), default="text",
          help="log lines as text, or one JSON object per line for log shippers")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weft", description="Userspace overlay-network switch, a drop-in peer of flannel.")
    parser.add_argument("--version", action="version", version=f"weft {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _log_format_flag(common)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])  # type: ignore
    _add_run(sub)
    _add_status(sub)
    _add_config(sub, common)
    _add_demo(sub)
    _add_cni(sub, common)
    _add_bench(sub)
    from weft.tools.commands import add_replay_parser, add_trace_parser

    add_replay_parser(sub, parents=[common])
    add_trace_parser(sub, [common])
    _add_doctor(sub)
    _add_leases(sub)
    _add_compile(sub)
    return parser


def _add_run(sub) -> None:
    """`weft run`: flanneld's flags (and weft's own), flanneld's -v."""
    # `run` takes flanneld's command line: -v is flanneld's log level (-v=N, -v N; >0 = debug).
    run_common = argparse.ArgumentParser(add_help=False)
    run_common.add_argument("-v", "--verbose", nargs="?", const=1, default=0, type=int,
                            metavar="LEVEL", help="log level as flanneld's -v: >0 is debug")
    _log_format_flag(run_common)
    run = sub.add_parser("run", parents=[run_common],
                         help="take a subnet lease and carry this host's pod traffic",
                         epilog="flanneld's syntax works too: -flag=value, -flag value, "
                                "--bool=false. Precedence: command line > WEFT_<FLAG> > "
                                "FLANNELD_<FLAG> > default.")
    run.add_argument("--version", action="version", version=f"weft {_version()}")
    _etcd_flags(run)
    _iface_flags(run)
    _flag(run, "--subnet-file", default=subnet_env.DEFAULT_PATH, help="subnet file to write")
    _flag(run, "--subnet-lease-renew-margin", type=_renew_margin, default=60,
          help="minutes before expiry to renew the lease (1-1439)")
    _traffic_rule_flags(run)
    _flag(run, "--ip-blackhole-route", type=go_bool,
          help="add a blackhole route for our subnet (left in place at exit, as flanneld)")
    for spec in UNSUPPORTED:
        _flag(run, f"--{spec.flag}", type=checked(spec), metavar="VALUE" if spec.parse is not
              go_bool else "BOOL", help=f"flanneld's; weft lacks {spec.why}: only "
              f"{', '.join(map(_go_text, spec.accepted))} accepted")
    _flag(run, "--lease-ttl", type=int, default=24 * 3600,
          help="etcd lease TTL in seconds (flannel: 24 h; shorten for tests)")
    _flag(run, "--healthz-ip", default="0.0.0.0", help="address for /healthz, /readyz, /metrics")
    _flag(run, "--healthz-port", type=int, default=0, help="port for /healthz (0 = off)")
    _flag(run, "--datapath", choices=datapath_modes.CHOICES, default=datapath_modes.AUTO,
          help="packet loop: compiled with TUN/TAP offloads (offload), compiled (fast), "
               "Python (plain); auto takes the best that works")
    _control_flag(run)
    run.set_defaults(func=cmd_run)


def _traffic_rule_flags(run: argparse.ArgumentParser) -> None:
    """flanneld's masquerade and forward-rule flags."""
    _flag(run, "--ip-masq", type=go_bool,
          help="masquerade pod traffic leaving the cluster network (iptables nat rules in "
               "chain WEFT-POSTRTG); also written to subnet.env as FLANNEL_IPMASQ")
    _flag(run, "--ip-masq-fully-random-disable", type=go_bool,
          help="masquerade without --random-fully even where iptables supports it")
    _flag(run, "--iptables-resync", type=_positive_int, default=5,
          help="seconds between checks that our iptables rules are still in place")
    _flag(run, "--iptables-forward-rules", type=go_bool, default=True,
          help="accept forwarding from and to the cluster network (filter chain WEFT-FWD); "
               "--iptables-forward-rules=false turns it off")


def _add_status(sub) -> None:
    """`weft status`: asks a running daemon over its control socket."""
    status = sub.add_parser("status", help="our lease, peers and counters from a running daemon")
    _control_flag(status)
    status.add_argument("--json", action="store_true", help="raw status JSON")
    status.set_defaults(func=cmd_status)


def _add_config(sub, common: argparse.ArgumentParser) -> None:
    """`weft config put|show`."""
    config = sub.add_parser("config", help="write or show the network config")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser = functools.partial(config_sub.add_parser,  # type: ignore
                                              parents=[common])
    put = config_sub.add_parser("put", help="validate and write <prefix>/config")
    _etcd_flags(put)
    put.add_argument("source", help="config JSON, a file holding it, or - for stdin")
    put.set_defaults(func=cmd_config_put)
    show = config_sub.add_parser("show", help="print <prefix>/config with defaults filled in")
    _etcd_flags(show)
    show.set_defaults(func=cmd_config_show)


def _add_demo(sub) -> None:
    """`weft demo`: a lab of hosts and pods in namespaces."""
    demo = sub.add_parser("demo", help="build hosts and pods in namespaces and show weft "
                                       "carrying traffic between them (root)")
    demo.add_argument("--hosts", type=int, default=3)
    demo.add_argument("--pods", type=int, default=2, help="pods per host")
    demo.add_argument("--backend", choices=("vxlan", "udp", "host-gw"), default="vxlan")
    demo.add_argument("--cni", action="store_true",
                      help="create the pods through weft's CNI plugin (needs the reference "
                           "plugins bridge, host-local, portmap in /usr/lib/cni or /opt/cni/bin)")
    demo.set_defaults(func=cmd_demo)


def _add_cni(sub, common: argparse.ArgumentParser) -> None:
    """`weft cni install`."""
    cni = sub.add_parser("cni", help="weft's CNI plugin (type weft; binary weft-cni)")
    cni_sub = cni.add_subparsers(dest="cni_command", required=True, metavar="ACTION")
    cni_sub.add_parser = functools.partial(cni_sub.add_parser,  # type: ignore
                                           parents=[common])
    cni_install = cni_sub.add_parser(
        "install", help="write the conflist (plugin + portmap) and put the plugin in the bin dir")
    cni_install.add_argument("--conf-dir", default="/etc/cni/net.d")
    cni_install.add_argument("--bin-dir", default="/opt/cni/bin")
    cni_install.add_argument("--name", default="weft",
                             help="plugin type and binary name; flannel takes over flannel's "
                                  "conflist and binary")
    cni_install.add_argument("--subnet-file", default=None,
                             help="subnet file weft run writes, if not /run/flannel/subnet.env")
    cni_install.add_argument("--force", action="store_true",
                             help="install even if a non-root user could change the Python or "
                                  "weft files the plugin runs (as root)")
    cni_install.set_defaults(func=cmd_cni_install)


def _add_bench(sub) -> None:
    """`weft bench`: weft beside the kernel's VXLAN, or --scale."""
    bench = sub.add_parser("bench", help="pod-to-pod RTT, TCP and UDP for weft's backends beside "
                                         "the kernel's VXLAN, in one run (root)")
    bench.add_argument("--seconds", type=float, default=5.0, help="per TCP/UDP measurement")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--veth-offloads", action="store_true",
                       help="keep veth's GSO/checksum offloads on the hosts' links (not wire-like)")
    bench.add_argument("--scale", type=int, metavar="N",
                       help="instead: one `weft run` against N other hosts' leases in etcd "
                            "(time to subnet.env and to all peers programmed, RSS, per-packet "
                            "cost at 2 and N peers, lease events applied per second)")
    bench.add_argument("--event-rate", type=float, default=100.0,
                       help="with --scale: lease changes written per second")
    bench.add_argument("--restart", action="store_true",
                       help="instead: pings every 5 ms and a TCP stream between two hosts' pods "
                            "while one host's weft run is stopped and started, reloaded "
                            "(SIGHUP), restarted through systemd's fd store, and upgraded "
                            "on a cold compile cache (docs/restart.md)")
    bench.add_argument("--count", type=int, default=3,
                       help="with --restart: hand-overs per scenario (the upgrade is one)")
    bench.add_argument("--backend", choices=("vxlan", "udp"), action="append",
                       help="with --restart: only this backend (repeatable; default both)")
    bench.set_defaults(func=cmd_bench)


def _add_doctor(sub) -> None:
    """`weft doctor`: this host's checks, each with its fix."""
    doctor = sub.add_parser("doctor", help="check this host for what breaks pod networking "
                                           "and name the fix (exit 1 on a FAIL)")
    _etcd_flags(doctor)
    _iface_flags(doctor)
    _flag(doctor, "--subnet-file", default=subnet_env.DEFAULT_PATH, help="subnet file weft run "
          "writes")
    _flag(doctor, "--subnet-lease-renew-margin", type=_renew_margin, default=60,
          help="minutes before expiry weft run renews; less time left is a warning")
    doctor.add_argument("--json", action="store_true",
                        help="a list of {check, status, found, fix}")
    doctor.set_defaults(func=cmd_doctor)


def _add_leases(sub) -> None:
    """`weft leases`: the leases as `weft run` sees them."""
    leases = sub.add_parser("leases", help="list subnet leases")
    _etcd_flags(leases)
    leases.add_argument("--json", action="store_true",
                        help="print a snapshot for offline tools (--leases FILE)")
    leases.set_defaults(func=cmd_leases)


def _add_compile(sub) -> None:
    """`weft compile`: fill the compile cache ahead of `weft run`."""
    compile_ = sub.add_parser(
        "compile", help="compile the data path into numba's cache (NUMBA_CACHE_DIR if set), "
                        "once per installed version; `weft run` then starts compiled at once")
    compile_.set_defaults(func=cmd_compile)


def _go_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def normalize_run_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """flanneld's Go flag syntax after `run` (or `doctor`) rewritten for argparse (see
    weft.goflags)."""
    first = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    if first is None or argv[first] not in ("run", "doctor"):
        return argv
    booleans, valued = set(), set()
    for action in _subcommand(parser, argv[first])._actions:
        names = {o.lstrip("-") for o in action.option_strings if o.startswith("--")}
        if action.dest == "verbose" or not names:
            continue
        if action.type is go_bool or getattr(action.type, "boolean", False):
            booleans |= names
        elif action.nargs is None:
            valued |= names
    return [*argv[:first + 1], *normalize(argv[first + 1:], booleans, valued)]


def _registry(args):
    from weft.control.etcd_registry import EtcdOptions, EtcdRegistry

    return EtcdRegistry(EtcdOptions(
        endpoints=args.etcd_endpoints, prefix=args.etcd_prefix, cafile=args.etcd_cafile,
        certfile=args.etcd_certfile, keyfile=args.etcd_keyfile, username=args.etcd_username,
        password=args.etcd_password,
    ))


def cmd_config_put(args) -> int:
    source = args.source
    # Read bytes and decode here: text-mode reads raise UnicodeDecodeError on bad UTF-8,
    # which would end `weft config put` with a traceback instead of exit 2.
    text: str | bytes
    if source == "-":
        text = sys.stdin.buffer.read()
    elif source.lstrip().startswith("{"):
        text = source
    else:
        try:
            text = Path(source).read_bytes()
        except OSError as exc:
            print(f"weft: cannot read config file {source}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if isinstance(text, bytes):
            text = _utf8(text)
        config = parse_config(text)
        backends.check_type(config.backend_type)
    except (ConfigError, backends.BackendError) as exc:
        print(f"weft: invalid network config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _registry(args).put_network_config(text)
    print(f"wrote {args.etcd_prefix.rstrip('/')}/config: network {config.network}, "
          f"/{config.subnet_len} subnets {config.subnet_min}..{config.subnet_max}, "
          f"backend {config.backend_type}")
    return 0


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"network config is not UTF-8 text: {exc}") from None


def cmd_config_show(args) -> int:
    config = _registry(args).get_network_config()
    print(json.dumps(config.to_json(), indent=2))
    return 0


def cmd_leases(args) -> int:
    from weft.control.lease_policy import LeasePolicy
    from weft.control.registry import Snapshot

    registry = _registry(args)
    config = registry.get_network_config()
    leases, revision = registry.list_leases()
    # As `weft run` sees them: refused keys are listed apart, with the reason.
    leases = LeasePolicy(config, registry.rejections).admitted(leases)
    refused = registry.rejections.snapshot().current
    leases.sort(key=lambda lease: lease.subnet)
    if args.json:
        print(json.dumps({**Snapshot(config, revision, leases).to_json(),
                          "refused": {key: why.to_json() for key, why in refused.items()}},
                         indent=2))
        return 0
    leases = registry.with_expirations(leases)  # the listing carries no TTLs (one trip each)
    # Dual-stack leases add two columns at the end (the first five stay where scripts read
    # them); an IPv4-only listing is the table it always was.
    dual = any(lease.ipv6_subnet or lease.attrs.public_ipv6 for lease in leases)
    rows = [("SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES-IN")
            + (("IPV6-SUBNET", "PUBLIC-IPV6") if dual else ())]
    now = time.time()
    for lease in leases:
        left = "-" if lease.expiration is None else _duration(lease.expiration - now)
        v6 = (str(lease.ipv6_subnet or "-"), str(lease.attrs.public_ipv6 or "-"))
        rows.append((str(lease.subnet), str(lease.attrs.public_ip),
                     lease.attrs.effective_backend, lease.attrs.vtep_mac or "-", left)
                    + (v6 if dual else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"{len(leases)} lease(s) at revision {revision}")
    if refused:
        print(f"{len(refused)} key(s) refused (never programmed by weft):")
        for key, why in refused.items():
            print(f"  {key!r}  {why.reason}: {why.detail}")
    return 0


def cmd_doctor(args) -> int:
    from weft.observe.doctor import main as doctor_main

    return doctor_main(args)


def cmd_status(args) -> int:
    from weft.observe.control_socket import ControlError, control_request
    from weft.observe.status_text import format_status
    from weft.status import DaemonStatus, StatusFormatError

    try:
        reply = control_request(args.control_socket, "status")
    except ControlError as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    try:
        status = DaemonStatus.from_json(reply)
    except StatusFormatError as exc:  # a daemon of another weft version
        print(f"weft: the daemon's status is not what this weft reads ({exc}); "
              "`weft status --json` shows it as it is", file=sys.stderr)
        return EXIT_FAILURE
    print(format_status(status))
    return 0


def cmd_demo(args) -> int:
    if os.geteuid() != 0:
        print("weft: demo builds network namespaces and needs root", file=sys.stderr)
        return EXIT_FAILURE
    if not 2 <= args.hosts <= 50 or not 1 <= args.pods <= 50:
        print("weft: --hosts must be 2..50 and --pods 1..50", file=sys.stderr)
        return EXIT_USAGE
    from weft.tools.lab.demo import run_demo

    return run_demo(hosts=args.hosts, pods=args.pods, backend=args.backend, cni=args.cni)


def cmd_compile(args) -> int:
    from weft import jitcache
    from weft.drivers.compile_job import compile_datapath

    took = compile_datapath(report=lambda line: print(line, file=sys.stderr, flush=True))
    if not any(took.values()):
        print(f"weft: the data path of this version is compiled already (cache: "
              f"{jitcache.cache_root()})", file=sys.stderr)
    return 0


def cmd_cni_install(args) -> int:
    from weft.cni.install import InstallRefused, install

    extra = {"subnetFile": args.subnet_file} if args.subnet_file else None
    try:
        conf, binary = install(args.conf_dir, args.bin_dir, name=args.name, extra=extra,
                               force=args.force)
    except InstallRefused as exc:  # the interpreter or its tree is the input to fix
        print(f"weft: cni install: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"weft: cni install: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {conf} and {binary}")
    return 0


def cmd_bench(args) -> int:
    if os.geteuid() != 0:
        print("weft: bench builds network namespaces and needs root", file=sys.stderr)
        return EXIT_FAILURE
    if args.scale is not None:
        if not 1 <= args.scale <= 65534:
            print("weft: --scale must be 1..65534", file=sys.stderr)
            return EXIT_USAGE
        from weft.tools.lab.scale import run_scale

        return run_scale(args.scale, as_json=args.json, rate=args.event_rate,
                         seconds=min(args.seconds, 5.0),
                         log=lambda line: print(line, file=sys.stderr))
    if args.restart:
        if args.count < 1:
            print("weft: --count must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        from weft.tools.lab.restart_bench import BACKENDS, run_restart_bench

        return run_restart_bench(args.count, backends=args.backend or BACKENDS,
                                 as_json=args.json,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
    from weft.tools.lab.bench import run_bench

    return run_bench(seconds=args.seconds, as_json=args.json,
                     log=lambda line: print(line, file=sys.stderr),
                     wire_like=not args.veth_offloads)


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"


def cmd_run(args) -> int:
    # numba, loading the compiled loops, imports scipy.linalg only to look for BLAS, which no
    # kernel of weft's uses: on a host that has scipy that is 0.2 s more between a restart and
    # the first packet forwarded, and ~20 MB more RSS. The daemon runs without it.
    sys.modules.setdefault("scipy", None)  # type: ignore[arg-type]
    from weft import instance_lock
    from weft.control.lease_manager import LeaseTiming
    from weft.daemon import RELOAD, Daemon, RunOptions
    from weft.dev import handover

    # First of all: LISTEN_* must not reach the processes we start, nor a failed start leak
    # what a previous `weft run` passed.
    inherited = handover.Inherited.from_environment()

    if args.lease_ttl < 2:
        print("weft: --lease-ttl must be at least 2 seconds", file=sys.stderr)
        return EXIT_USAGE
    # First, before any device, route, rule or file of the host is touched: a daemon for the
    # same subnet file that is still stopping is waited for, or we leave with one line.
    try:
        instance_lock.claim(args.subnet_file, args.control_socket or None)
    except instance_lock.InstanceError as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    timing = LeaseTiming(ttl=args.lease_ttl, renew_margin=args.subnet_lease_renew_margin * 60.0,
                         retry=min(60.0, args.lease_ttl / 4))
    for line in notices(vars(args)):
        logging.getLogger("weft").warning("%s", line)
    options = RunOptions(iface=args.iface or [], iface_regex=args.iface_regex or [],
                         iface_can_reach=args.iface_can_reach,
                         ip_blackhole_route=args.ip_blackhole_route, public_ip=args.public_ip,
                         public_ipv6=args.public_ipv6,
                         subnet_file=args.subnet_file, ip_masq=args.ip_masq, timing=timing,
                         healthz_ip=args.healthz_ip, healthz_port=args.healthz_port,
                         control_socket=args.control_socket or None,
                         backend_options={"datapath": args.datapath},
                         ip_masq_random_fully=not args.ip_masq_fully_random_disable,
                         iptables_forward_rules=args.iptables_forward_rules,
                         iptables_resync=float(args.iptables_resync), inherited=inherited)
    daemon = Daemon(_registry(args), options)

    def on_signal(signum, _frame):
        logging.getLogger("weft").info("received %s, shutting down",
                                       signal.Signals(signum).name)
        daemon.stop()

    def on_hangup(_signum, _frame):
        logging.getLogger("weft").info("received SIGHUP, reloading")
        daemon.reload()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        code = daemon.run()
    finally:
        inherited.close_rest()  # a start that ended early used none of them
    if code != RELOAD:
        exit_at_once(code)
    logging.getLogger("weft").info("re-executing %s with %s", sys.orig_argv[1:],
                                   ", ".join(daemon.handover_fds))
    for handler in logging.getLogger().handlers:
        handler.flush()
    instance_lock.keep_across_exec()  # the new image holds the same lock: nobody gets between
    handover.exec_with(daemon.handover_fds, [sys.executable, *sys.orig_argv[1:]])


def exit_at_once(code: int) -> NoReturn:
    """End the process now that the daemon has closed all it opened.

    The interpreter's own teardown after a stop (freeing numba's and LLVM's modules, gRPC's
    channel) took 0.6 s of a measured 1.1 s from SIGTERM to exit, all of it after the last of
    our work: a restart waited for nothing. The logs are flushed first; the instance lock goes
    with the process, as always.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    from weft.observe.logformat import setup_logging

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(normalize_run_argv(parser, argv))
    setup_logging(args.log_format, debug=bool(args.verbose))
    from weft.control.allocator import OutOfSubnets
    from weft.control.iface import InterfaceError
    from weft.control.lease_manager import AcquireError
    from weft.observe.control_socket import ControlError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"weft: invalid network config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RegistryError, OutOfSubnets, AcquireError, InterfaceError,
            backends.BackendError, ControlError) as exc:
        print(f"weft: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
