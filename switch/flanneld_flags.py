"""Which of flanneld's flags weft reads, and what it does with the ones it does not implement.

An operator replacing flanneld keeps the unit file. Two rules decide whether a flag weft does not
implement stops `weft run` (exit 2, "not supported (yet) by weft: ..."):

- a value that asks for something weft does not do stops it: silently running without what the
  unit asked for (the Kubernetes subnet manager) would be worse;
- flanneld's own default, or a value that asks for exactly what weft does, is accepted: units
  often spell defaults out (`-kube-subnet-mgr=false`), and refusing them would only make the
  operator edit a line that changes nothing. Such a value is logged once at start (notices())
  when weft's behaviour differs from flanneld's.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from weft.goflags import go_bool

# flanneld's flags (main.go) that weft implements under the same name: also read from
# FLANNELD_<NAME>. weft's own flags (--lease-ttl, --datapath, ...) are not.
FLANNELD_FLAGS = frozenset({
    "etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile", "etcd-keyfile",
    "etcd-username", "etcd-password", "iface", "iface-regex", "iface-can-reach", "public-ip",
    "subnet-file", "subnet-lease-renew-margin", "ip-masq", "ip-blackhole-route", "healthz-ip",
    "healthz-port", "public-ipv6", "ip-masq-fully-random-disable", "iptables-resync",
    "iptables-forward-rules", "kube-subnet-mgr",
})


@dataclass(frozen=True)
class Unsupported:
    flag: str
    parse: Callable[[str], object]
    accepted: tuple  # values that start weft (flanneld's default first)
    why: str  # what weft lacks, for the error message
    notice: str = ""  # logged at start when an accepted value is given and weft differs


UNSUPPORTED = (
    Unsupported("kube-subnet-mgr", go_bool, (False,),
                "the Kubernetes subnet manager (weft takes leases from etcd)"),
)


def checked(spec: Unsupported) -> Callable[[str], object]:
    """An argparse type: the parsed value if weft can start with it, else a usage error."""
    def parse(text: str) -> object:
        try:
            value = spec.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value not in spec.accepted:
            raise argparse.ArgumentTypeError(
                f"not supported (yet) by weft: --{spec.flag}={text} needs {spec.why}; "
                f"remove it or give flanneld's default ({_show(spec.accepted[0])})")
        return value
    parse.__name__ = spec.flag  # argparse names the type in its "invalid ... value" errors
    parse.boolean = spec.parse is go_bool  # type: ignore[attr-defined]  # for goflags.normalize
    return parse


def notices(values: dict[str, object]) -> list[str]:
    """Lines to log at start where flanneld, with these values, would do what weft does not:
    at flanneld's default (given or not, None) for a flag that has a notice."""
    return [spec.notice for spec in UNSUPPORTED
            if spec.notice and values.get(spec.flag.replace("-", "_")) in (None, spec.accepted[0])]


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if value == "" else str(value)
