"""The systemd unit and environment file shipped in weft.tools/systemd."""

from __future__ import annotations

import re
from importlib.resources import files

from weft.cli import build_parser, env_name

SYSTEMD = files("weft.tools") / "systemd"


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in (SYSTEMD / "weft.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, value)
    return settings


def test_unit_is_notify_with_watchdog_and_least_privilege():
    unit = unit_settings()
    assert unit["Type"] == "notify" and unit["WatchdogSec"]
    assert unit["CapabilityBoundingSet"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert set(unit["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert unit[key] in ("yes", "strict"), key
    assert unit["ExecStart"].split()[1:] == ["run", "$WEFT_OPTIONS"]


def test_every_variable_in_the_environment_file_is_a_run_flag():
    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    known = {env_name(o) for a in run._actions for o in a.option_strings if o.startswith("--")}
    names = re.findall(r"^#?(WEFT_\w+)=", (SYSTEMD / "weft.env").read_text(), re.MULTILINE)
    assert names and set(names) - {"WEFT_OPTIONS"} <= known, set(names) - known
