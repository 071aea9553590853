"""The encapsulation table (weft.packet.encap): flannel's defaults, the Backend options that
override them, and the device names, as every reader (backends, doctor, replay, trace) gets them."""

from __future__ import annotations

import pytest

from weft import backends
from weft.control.config import NetworkConfig
from weft.packet.encap import ENCAPS, UDP, VXLAN, encap_of

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
