"""A conflist run as a container runtime runs it (libcni's order and injected keys).

Not part of the plugin: the lab and the tests use it to add pods exactly as containerd or
CRI-O would. ADD runs the plugins in order, each given the previous one's result as
prevResult; DEL and CHECK get the result the runtime kept from ADD, and DEL runs in reverse.
The runtime keeps no state: callers hold on to ADD's result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from weft.cni.errors import IO_FAILURE, CniError
from weft.cni.invoke import exec_plugin, find_plugin

# What a runtime's own environment holds at least: plugins run iptables and friends.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


@dataclass(frozen=True)
class Runtime:
    conflist: dict
    cni_path: Sequence[str]
    env: Mapping[str, str] = field(default_factory=lambda: dict(BASE_ENV))

    @classmethod
    def from_file(cls, path: str, cni_path: Sequence[str]) -> Runtime:
        try:
            with open(path) as f:
                return cls(json.load(f), tuple(cni_path))
        except OSError as exc:
            raise CniError(IO_FAILURE, f"cannot read {path}: {exc.strerror}") from None

    def add(self, container_id: str, netns: str, ifname: str = "eth0",
            capability_args: Mapping[str, object] | None = None) -> dict | None:
        """`capability_args` (e.g. {"portMappings": [...]}) reach, as runtimeConfig, each
        plugin whose `capabilities` names them, as libcni passes them."""
        result = None
        for plugin in self.conflist["plugins"]:
            result = self._invoke("ADD", plugin, result, container_id, netns, ifname,
                                  capability_args)
        return result

    def delete(self, container_id: str, netns: str, ifname: str = "eth0",
               prev_result: dict | None = None,
               capability_args: Mapping[str, object] | None = None) -> None:
        for plugin in reversed(self.conflist["plugins"]):
            self._invoke("DEL", plugin, prev_result, container_id, netns, ifname,
                         capability_args)

    def check(self, container_id: str, netns: str, prev_result: dict,
              ifname: str = "eth0") -> None:
        for plugin in self.conflist["plugins"]:
            self._invoke("CHECK", plugin, prev_result, container_id, netns, ifname)

    def _invoke(self, command: str, plugin: dict, prev: dict | None, container_id: str,
                netns: str, ifname: str,
                capability_args: Mapping[str, object] | None = None) -> dict | None:
        conf = {**plugin, "name": self.conflist["name"],
                "cniVersion": self.conflist["cniVersion"]}
        if prev is not None:
            conf["prevResult"] = prev
        wanted = plugin.get("capabilities") or {}
        runtime_config = {key: value for key, value in (capability_args or {}).items()
                          if wanted.get(key)}
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        env = {**self.env, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": "",
               "CNI_PATH": os.pathsep.join(self.cni_path)}
        result = exec_plugin(find_plugin(plugin["type"], env["CNI_PATH"]), conf, env)
        # A plugin that prints nothing on ADD passes the previous result on (libcni does too).
        return result if result is not None else prev
