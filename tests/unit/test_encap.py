"""The encapsulation table (weft.packet.encap): flannel's defaults, the Backend options that
override them, and the device names, as every reader (backends, doctor, replay, trace) gets them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import weft
import weft.tools
from weft import backends
from weft.control.config import NetworkConfig
from weft.packet.encap import ENCAPS, UDP, VXLAN, as_encap, encap_of

pytestmark = pytest.mark.unit


def _config(kind: str, **options: object) -> NetworkConfig:
    return NetworkConfig(None, 24, None, None, backend_type=kind, backend={"Type": kind, **options})


def test_defaults_are_flannels():
    vxlan = VXLAN.settings(_config("vxlan"), 1500)
    assert (vxlan.vni, vxlan.port, vxlan.mtu, vxlan.device) == (1, 8472, 1450, "weft.1")
    udp = UDP.settings(_config("udp"), 1500)
    assert (udp.vni, udp.port, udp.mtu, udp.device) == (0, 8285, 1472, "weft0")
    assert VXLAN.tap and not UDP.tap


def test_backend_options_override_the_defaults_whatever_their_case():
    config = _config("vxlan", vni=42, PORT=4789, Mtu=1400)
    settings = VXLAN.settings(config, 9000)
    assert (settings.vni, settings.port, settings.mtu, settings.device) == (42, 4789, 1400,
                                                                            "weft.42")


def test_a_vni_option_means_nothing_to_udp():
    settings = UDP.settings(_config("udp", VNI=7), 1500)
    assert (settings.vni, settings.device) == (0, "weft0")


def test_the_vni_is_read_back_from_a_device_name():
    assert VXLAN.vni_of_device(VXLAN.device_name(4096)) == 4096
    assert VXLAN.vni_of_device("weft0") is None
    assert VXLAN.vni_of_device("weft.") is None
    assert VXLAN.vni_of_device("flannel.1") is None
    assert UDP.vni_of_device("weft0") is None  # udp's device carries no VNI


def test_every_row_is_a_registered_backend_and_others_have_none():
    assert set(ENCAPS) <= set(backends.REGISTRY)
    assert all(encap_of(name) is encap for name, encap in ENCAPS.items())
    with pytest.raises(ValueError, match="host-gw"):
        encap_of("host-gw")


def test_each_field_is_what_the_readers_used_to_decide_by_name():
    # the facts the vxlan/udp comparisons in trace, replay, tracehub and the slow path stood for
    assert (VXLAN.header_len, VXLAN.device_link, VXLAN.inner_l3_offset, VXLAN.device_label) == (
        8, "ether", 14, "TAP")
    assert (UDP.header_len, UDP.device_link, UDP.inner_l3_offset, UDP.device_label) == (
        0, "ip", 0, "TUN")
    assert VXLAN.builds_outer and not UDP.builds_outer
    assert VXLAN.inner(bytes(range(10))) == bytes([8, 9])
    assert UDP.inner(b"\x45abc") == b"\x45abc"
    assert {encap.outer for encap in ENCAPS.values()} == {"ipv4"}
    assert as_encap("udp") is UDP and as_encap(VXLAN) is VXLAN


def test_the_pcap_link_type_of_each_device_is_the_one_it_carries():
    from weft.tools.pcapio import LINKTYPE_ETHERNET, LINKTYPE_OF_LINK, LINKTYPE_RAW

    assert LINKTYPE_OF_LINK[VXLAN.device_link] == LINKTYPE_ETHERNET
    assert LINKTYPE_OF_LINK[UDP.device_link] == LINKTYPE_RAW


def test_every_encapsulation_has_its_twin_steps():
    from weft.packet.fastpath_twin import TWIN_STEPS

    assert set(TWIN_STEPS) == set(ENCAPS.values())


# -- no decision by the backend's name outside the table --------------------------------------

ENCAP_NAMES = {encap.backend for encap in ENCAPS.values()}
# Where a comparison with "vxlan"/"udp" means something else than a weft encapsulation.
NOT_AN_ENCAP = {
    # a kernel link's rtnetlink kind (IFLA_INFO_KIND): doctor looks for kernel VXLAN devices
    ("observe/doctor.py", "link.kind == 'vxlan'"),
    # an iptables rule's IP protocol, not a backend
    ("observe/firewall_view.py", "rule.protocol not in (None, 'all', 'udp', '17')"),
    # a transport protocol name in a trace's flow
    ("tools/trace.py", "proto in ('tcp', 'udp')"),
}


def _owned_sources() -> dict[str, Path]:
    """The files that act on an encapsulation: tools, observe, the slow path, the pipeline, the
    compiled steps, the drivers, the userspace backends (registration, lease JSON and config
    parsing name types by string) and the tests' fakes."""
    switch = Path(weft.__file__).parent
    tools = Path(weft.tools.__file__).parent
    backends_dir = Path(backends.__file__).parent
    files = {f"tools/{p.relative_to(tools)}": p for p in tools.rglob("*.py")}
    files |= {f"observe/{p.name}": p for p in (switch / "observe").glob("*.py")}
    files |= {f"packet/{name}": switch / "packet" / name
              for name in ("slowpath.py", "pipeline.py", "pipeline_steps.py")}
    files |= {f"drivers/{p.name}": p for p in (switch / "drivers").glob("*.py")}
    files |= {f"backends/{name}": backends_dir / name for name in ("vxlan.py", "udp.py",
                                                                  "overlay.py")}
    fakes = Path(__file__).parents[1] / "fakes"  # the tests' stand-ins for the driver's sockets
    files |= {f"tests/fakes/{p.name}": p for p in fakes.glob("*.py")}
    return files


# The integer kinds the drivers compared with before the rows had a code: gone, not renamed.
KIND_CONSTANTS = {"KIND_VXLAN", "KIND_UDP", "KINDS"}


def _names_an_encap(node: ast.AST) -> bool:
    """A string constant naming an encapsulation, one of the old integer kind constants, or a
    literal collection holding one."""
    if isinstance(node, ast.Constant):
        return node.value in ENCAP_NAMES
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) in KIND_CONSTANTS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_an_encap(item) for item in node.elts)
    return False


def encap_name_comparisons(source: str) -> list[str]:
    """Every comparison (==, !=, in, not in) with a backend type name as a literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
                _names_an_encap(side) for side in (node.left, *node.comparators)):
            found.append(ast.unparse(node))
    return found


def test_the_scan_finds_a_comparison_by_name():
    assert encap_name_comparisons('x = 14 if kind == "vxlan" else 0\n') == ["kind == 'vxlan'"]
    assert encap_name_comparisons('ok = backend not in ("vxlan", "udp")\n') == [
        "backend not in ('vxlan', 'udp')"]
    assert encap_name_comparisons('x = 14 if encap.tap else 0\n') == []
    assert encap_name_comparisons('vxlan = p.kind == steps.KIND_VXLAN\n') == [
        "p.kind == steps.KIND_VXLAN"]


def test_nothing_decides_by_the_backends_name_outside_the_encap_table():
    sources = _owned_sources()
    assert len(sources) > 30  # the scan sees the tree, not an empty glob
    assert {"drivers/compiled_loops.py", "drivers/pyloop.py", "drivers/udpgso.py",
            "packet/pipeline_steps.py", "tests/fakes/network.py"} <= set(sources)
    found = {(name, text) for name, path in sources.items()
             for text in encap_name_comparisons(path.read_text())}
    assert found == NOT_AN_ENCAP


def test_the_loops_numbers_are_the_rows():
    """What LoopParams carries of a row (the numbers the compiled loops used to pick by kind)."""
    from weft.drivers.loop_args import loop_params
    from weft.packet.counters import (
        PATH_UDP_EGRESS,
        PATH_UDP_INGRESS,
        PATH_VXLAN_EGRESS,
        PATH_VXLAN_INGRESS,
    )
    from weft.packet.offload.tunnel import SUP_HEAD, SUP_HEAD_UDP
    from weft.packet.offload.udp_gro import UDP_VIEW, VX_VIEW

    def params(encap):
        p = loop_params(encap, dev_fd=3, sock_fd=4, port=9999, timeout_ms=1, l3_off=-1)
        return (p.send_port, p.outer_len, p.sup_head, p.rx_view, p.egress_path, p.ingress_path)

    assert params(VXLAN) == (0, 28, SUP_HEAD, VX_VIEW, PATH_VXLAN_EGRESS, PATH_VXLAN_INGRESS)
    assert params(UDP) == (9999, 0, SUP_HEAD_UDP, UDP_VIEW, PATH_UDP_EGRESS, PATH_UDP_INGRESS)
    assert len({encap.code for encap in ENCAPS.values()}) == len(ENCAPS)


def test_the_ipv6_row_is_flannel_v6s_device_over_an_ipv6_underlay():
    from weft.packet.encap import ENCAPS_V6, VXLAN6

    settings = VXLAN6.settings(_config("vxlan"), 1500)
    # 1430: the kernel's default MTU for VXLAN over IPv6, what flanneld's flannel-v6.1 gets
    assert (settings.vni, settings.port, settings.mtu, settings.device) == (1, 8472, 1430,
                                                                            "weft-v6.1")
    assert VXLAN6.outer == "ipv6" and not VXLAN6.builds_outer and VXLAN6.tap
    assert ENCAPS_V6["vxlan"] is VXLAN6 and VXLAN6 not in ENCAPS.values()
    assert VXLAN6.vni_of_device("weft-v6.7") == 7 and VXLAN.vni_of_device("weft-v6.7") is None
