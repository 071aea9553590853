"""flanneld's command-line syntax (Go's flag package) rewritten into what argparse reads.

Go accepts `-flag=value`, `-flag value`, `--flag=value` and `--flag value` alike, and a boolean
takes its value only after `=` (`-ip-masq=false`). Existing flanneld units are written that way
(`-etcd-endpoints=... -etcd-prefix=...`), so `weft run` rewrites its arguments before argparse
sees them: every known flag becomes `--flag=value`, which also keeps a value that starts with a
dash (`-etcd-password -x`) a value, as Go does. Unknown flags are left as they are, so argparse
reports them with the operator's own spelling.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_FLAG = re.compile(r"^--?([A-Za-z][\w.-]*)(?:=(.*))?$", re.DOTALL)

# strconv.ParseBool's spellings, plus the yes/on/no/off that WEFT_ variables always took.
_TRUE = {"1", "t", "T", "true", "TRUE", "True", "yes", "on"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False", "no", "off", ""}


def go_bool(text: str | bool) -> bool:
    """A boolean flag's value as Go's flag package (and flanneld's environment) reads it."""
    if isinstance(text, bool):
        return text
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r} (true or false)")


def normalize(args: Iterable[str], booleans: set[str], valued: set[str],
              verbosity: str = "v") -> list[str]:
    """Rewrite Go-style flags in `args` (the tokens after the subcommand) for argparse.

    `booleans` and `valued` are flag names without dashes. `verbosity` is flanneld's `-v`, a
    log level that takes its value after `=` or as the next word when that is a number.
    """
    out: list[str] = []
    rest = list(args)
    while rest:
        token = rest.pop(0)
        if token == "--":  # end of flags, as in Go
            out.append(token)
            out.extend(rest)
            break
        match = _FLAG.match(token)
        if match is None:
            out.append(token)
            continue
        name, value = match.group(1), match.group(2)
        if name in booleans:
            out.append(f"--{name}={'true' if value is None else value}")
        elif name in valued:
            if value is None and rest:
                value = rest.pop(0)
            out.append(f"--{name}" if value is None else f"--{name}={value}")
        elif name == verbosity:
            if value is None and rest and rest[0].isdigit():
                value = rest.pop(0)
            out.append("--verbose" if value is None else f"--verbose={value}")
        elif name in ("help", "h", "version") and value is None:
            out.append(f"--{name}" if len(name) > 1 else "-h")
        else:
            out.append(token)
    return out
