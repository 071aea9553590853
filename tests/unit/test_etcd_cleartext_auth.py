"""A user/password for etcd over plain http is warned about when the client is built.

Building the client opens no connection (gRPC channels connect on first use), so no etcd
server is needed: the clients here point at addresses nothing listens on.
"""

from __future__ import annotations

import logging

import pytest

from weft.control.etcd_registry import EtcdOptions, connect

LOGGER = "weft.control.etcd_client"
SECRET = "s3cret-pw"


def warnings_when_built(caplog, **options) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        client = connect(EtcdOptions(**options))
        client.close()
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def test_credentials_over_http_are_warned_about_once(caplog):
    [message] = warnings_when_built(caplog, endpoints="http://127.0.0.1:2379",
                                    username="weft", password=SECRET)
    assert "http://127.0.0.1:2379" in message
    assert "password and the auth token travel in clear text" in message
    assert "https://" in message and "--etcd-cafile" in message
    assert SECRET not in message


def test_only_the_plain_http_endpoints_are_named(caplog):
    [message] = warnings_when_built(
        caplog, endpoints="https://192.0.2.1:2379,http://192.0.2.2:2379,192.0.2.3:4001",
        username="weft", password=SECRET)
    assert "http://192.0.2.2:2379, http://192.0.2.3:4001" in message  # no scheme: http
    assert "192.0.2.1" not in message


@pytest.mark.parametrize("options", [
    {"endpoints": "https://127.0.0.1:2379", "username": "weft", "password": SECRET},
    {"endpoints": "http://127.0.0.1:2379"},
    {"endpoints": "http://127.0.0.1:2379", "username": "", "password": ""},
], ids=["https", "no-credentials", "empty-credentials"])
def test_no_warning_without_credentials_in_clear(caplog, options):
    assert warnings_when_built(caplog, **options) == []
