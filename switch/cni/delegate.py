"""The delegate conf flannel's plugin builds from its own conf and subnet.env, with its defaults.

The conf's `delegate` map is the start; what it leaves out comes from subnet.env: masquerade
unless weft (FLANNEL_IPMASQ) does it already, the overlay's MTU, the bridge as the pods'
gateway, and host-local handing out addresses of this host's subnet with a route to the whole
network through that gateway.
"""

from __future__ import annotations

import copy

from weft.cni.errors import INVALID_CONFIG, CniError
from weft.cni.subnet_file import SubnetEnv


def render(conf: dict, env: SubnetEnv) -> dict:
    """The delegate conf for `conf` (the plugin's network conf) on a host with `env`."""
    delegate = _object(conf, "delegate")
    if "ipam" in delegate:
        # flannel refuses it too: the addresses must come from this host's lease.
        raise CniError(INVALID_CONFIG, "delegate must not contain ipam: put ipam settings in "
                                       "the conf's own ipam key; ranges come from subnet.env")
    delegate["name"] = conf.get("name")
    delegate.setdefault("type", "bridge")
    if not isinstance(delegate["type"], str) or not delegate["type"]:
        raise CniError(INVALID_CONFIG, "delegate type must be a plugin name such as bridge")
    delegate.setdefault("ipMasq", not env.ip_masq)
    delegate.setdefault("mtu", env.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        delegate["cniVersion"] = conf["cniVersion"]
    delegate["ipam"] = _ipam(conf, env)
    return delegate


def _ipam(conf: dict, env: SubnetEnv) -> dict:
    ipam = _object(conf, "ipam")
    ipam.setdefault("type", "host-local")
    ranges = []
    if env.subnet is not None:
        ranges.append([{"subnet": str(env.subnet)}])
    if env.ipv6_subnet is not None:
        ranges.append([{"subnet": str(env.ipv6_subnet)}])
    ipam["ranges"] = ranges
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise CniError(INVALID_CONFIG, "ipam routes must be a list of {\"dst\": CIDR}")
    ipam["routes"] = [*routes, *({"dst": str(net)} for net in env.networks),
                      *({"dst": str(net)} for net in env.ipv6_networks)]
    return ipam


def _object(conf: dict, key: str) -> dict:
    """A copy of the conf's map `key` (absent or null: empty); any other value is a mistake
    to report, not to paper over with the defaults."""
    value = conf.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CniError(INVALID_CONFIG, f"conf key {key} must be a JSON object")
    return copy.deepcopy(value)
