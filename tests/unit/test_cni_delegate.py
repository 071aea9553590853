"""weft's CNI plugin, the pure parts: subnet.env parsing and the delegate conf flannel builds."""

from __future__ import annotations

import pytest

from weft.cni import delegate, subnet_file
from weft.cni.errors import DECODING_FAILURE, INVALID_CONFIG, IO_FAILURE, TRY_AGAIN_LATER, CniError

ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1450\n"
       "FLANNEL_IPMASQ=false\n")
KUBE_FLANNEL = {"name": "cbr0", "cniVersion": "0.3.1", "type": "weft",
                "delegate": {"hairpinMode": True, "isDefaultGateway": True}}


def test_parse_reads_what_weft_run_writes() -> None:
    env = subnet_file.parse(ENV)
    assert [str(n) for n in env.networks] == ["10.1.0.0/16"]
    assert str(env.subnet) == "10.1.15.0/24"  # the network, not the gateway address
    assert env.mtu == 1450 and env.ip_masq is False
    assert env.ipv6_subnet is None and env.ipv6_networks == ()


def test_parse_takes_comma_lists_and_ipv6() -> None:
    env = subnet_file.parse("FLANNEL_NETWORK=10.1.0.0/16, 10.2.0.0/16\nFLANNEL_SUBNET=10.1.3.1/24\n"
                            "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\n"
                            "FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n")
    assert [str(n) for n in env.networks] == ["10.1.0.0/16", "10.2.0.0/16"]
    assert str(env.ipv6_subnet) == "fd00:0:0:3::/64" and env.ip_masq is True


@pytest.mark.parametrize("value", ["True", "1", "yes", ""])
def test_ipmasq_is_true_only_for_exactly_true(value: str) -> None:
    assert subnet_file.parse(ENV.replace("FLANNEL_IPMASQ=false", f"FLANNEL_IPMASQ={value}")
                             ).ip_masq is False


def test_missing_keys_are_named_as_flannel_names_them() -> None:
    with pytest.raises(CniError) as info:
        subnet_file.parse("FLANNEL_MTU=1450\n", "/run/x.env")
    assert info.value.code == DECODING_FAILURE
    assert info.value.msg == ("/run/x.env is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, "
                              "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ")


def test_a_value_that_does_not_parse_is_a_decoding_failure() -> None:
    with pytest.raises(CniError) as info:
        subnet_file.parse(ENV.replace("10.1.15.1/24", "10.1.15.1/99"))
    assert info.value.code == DECODING_FAILURE and "10.1.15.1/99" in info.value.msg


def test_missing_file_says_try_again_and_unreadable_is_io(tmp_path) -> None:
    with pytest.raises(CniError) as info:
        subnet_file.load(str(tmp_path / "subnet.env"))
    assert info.value.code == TRY_AGAIN_LATER and "weft run" in info.value.msg
    with pytest.raises(CniError) as info:
        subnet_file.load(str(tmp_path))  # a directory: cannot be read as a file
    assert info.value.code == IO_FAILURE


def test_render_kube_flannel_conf_with_flannel_defaults() -> None:
    rendered = delegate.render(KUBE_FLANNEL, subnet_file.parse(ENV))
    assert rendered == {
        "name": "cbr0", "cniVersion": "0.3.1", "type": "bridge",
        "hairpinMode": True, "isDefaultGateway": True, "isGateway": True,
        "ipMasq": True,  # weft does not masquerade (FLANNEL_IPMASQ=false): the bridge does
        "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.15.0/24"}]],
                 "routes": [{"dst": "10.1.0.0/16"}]},
    }


def test_render_keeps_what_the_delegate_sets_and_adds_conf_ipam_and_routes() -> None:
    conf = {**KUBE_FLANNEL, "delegate": {"type": "bridge", "ipMasq": False, "mtu": 1300,
                                         "isGateway": False, "bridge": "cbr0"},
            "ipam": {"dataDir": "/tmp/x", "routes": [{"dst": "192.168.0.0/16"}]}}
    env = subnet_file.parse(ENV.replace("FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true"))
    rendered = delegate.render(conf, env)
    assert (rendered["ipMasq"], rendered["mtu"], rendered["isGateway"]) == (False, 1300, False)
    assert rendered["ipam"] == {"type": "host-local", "dataDir": "/tmp/x",
                                "ranges": [[{"subnet": "10.1.15.0/24"}]],
                                "routes": [{"dst": "192.168.0.0/16"}, {"dst": "10.1.0.0/16"}]}
    assert "ipam" not in conf["delegate"] and conf["ipam"]["routes"] == [
        {"dst": "192.168.0.0/16"}]  # the conf itself is left alone


def test_render_other_delegate_type_gets_no_is_gateway() -> None:
    rendered = delegate.render({**KUBE_FLANNEL, "delegate": {"type": "ptp"}},
                               subnet_file.parse(ENV))
    assert rendered["type"] == "ptp" and "isGateway" not in rendered


def test_render_ipv6_ranges_and_routes() -> None:
    env = subnet_file.parse(ENV + "FLANNEL_IPV6_NETWORK=fd00::/48\n"
                                  "FLANNEL_IPV6_SUBNET=fd00:0:0:3::1/64\n")
    ipam = delegate.render(KUBE_FLANNEL, env)["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.15.0/24"}], [{"subnet": "fd00:0:0:3::/64"}]]
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fd00::/48"}]


@pytest.mark.parametrize("conf", [
    {**KUBE_FLANNEL, "delegate": {"ipam": {"type": "host-local"}}},
    {**KUBE_FLANNEL, "delegate": ["bridge"]},
    {**KUBE_FLANNEL, "delegate": {"type": 3}},
    {**KUBE_FLANNEL, "ipam": "host-local"},
])
def test_render_refuses_bad_confs(conf: dict) -> None:
    with pytest.raises(CniError) as info:
        delegate.render(conf, subnet_file.parse(ENV))
    assert info.value.code == INVALID_CONFIG
