"""The etcd lease watch's error policy, on a scripted client: connection trouble is retried,
anything else ends the watch and reaches its owner (never retried forever in silence)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import grpc
import pytest
from fakes.rpc import RpcError
from pyetcd import exceptions as etcd_exc

from weft.control.etcd_errors import describe, is_transient
from weft.control.etcd_registry import EtcdOptions, EtcdRegistry, LeaseWatch
from weft.control.registry import RegistryError, RegistryUnavailable

PREFIX = "/coreos.com/network/subnets/"
WAIT = 15.0  # upper bound only; the conditions below hold long before


class ScriptedClient:
    """add_watch_prefix_callback raises the scripted errors in turn, then succeeds."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.callbacks: list = []
        self.cancelled: list[int] = []
        self.cond = threading.Condition()

    def add_watch_prefix_callback(self, prefix, callback, start_revision):
        with self.cond:
            self.callbacks.append((callback, start_revision))
            self.cond.notify_all()
            if self.failures:
                raise self.failures.pop(0)
            return len(self.callbacks)

    def cancel_watch(self, watch_id):
        self.cancelled.append(watch_id)

    def wait_for_attempts(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.callbacks) >= count, WAIT)


class Owner:
    def __init__(self) -> None:
        self.batches: list = []
        self.errors: list[BaseException] = []
        self.got_batch = threading.Event()
        self.got_error = threading.Event()

    def deliver(self, batch) -> None:
        self.batches.append(batch)
        self.got_batch.set()

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.got_error.set()


def put_response(revision: int, key: str = "10.1.5.0-24"):
    event = SimpleNamespace(key=(PREFIX + key).encode(), value=b'{"PublicIP":"192.0.2.5"}',
                            lease=7)
    return SimpleNamespace(events=[event], header=SimpleNamespace(revision=revision))


@pytest.fixture
def start():
    watches: list[LeaseWatch] = []

    def start(client: ScriptedClient, owner: Owner, revision: int = 10) -> LeaseWatch:
        registry = EtcdRegistry(EtcdOptions(), client=client)
        watch = LeaseWatch(registry, revision, owner.deliver, owner.on_error)
        watch.start()
        watches.append(watch)
        return watch

    yield start
    for watch in watches:
        watch.stop()


@pytest.mark.parametrize("error", [
    etcd_exc.ConnectionFailedError(), etcd_exc.ConnectionTimeoutError(),
    RpcError(grpc.StatusCode.UNAVAILABLE), RpcError(grpc.StatusCode.DEADLINE_EXCEEDED),
    ConnectionRefusedError(111, "refused"),
], ids=lambda e: getattr(e, "_code", None) and e._code.name or type(e).__name__)
def test_connection_trouble_is_retried_until_the_watch_is_up(start, error):
    client, owner = ScriptedClient(error, error), Owner()
    watch = start(client, owner)
    assert client.wait_for_attempts(3)
    callback, start_revision = client.callbacks[-1]
    assert start_revision == 11
    callback(put_response(12))
    assert owner.got_batch.wait(WAIT)
    assert [str(lease.subnet) for lease in owner.batches[0].added] == ["10.1.5.0/24"]
    assert watch.retries == 2 and owner.errors == [] and watch.error is None


@pytest.mark.parametrize("error", [
    RpcError(grpc.StatusCode.PERMISSION_DENIED), RpcError(grpc.StatusCode.UNAUTHENTICATED),
    etcd_exc.InternalServerError(), TypeError("a bug"),
], ids=lambda e: getattr(e, "_code", None) and e._code.name or type(e).__name__)
def test_any_other_error_ends_the_watch_loudly(start, error, caplog):
    client, owner = ScriptedClient(error), Owner()
    watch = start(client, owner)
    assert owner.got_error.wait(WAIT), "the error was swallowed"
    watch.thread.join(WAIT)
    assert not watch.thread.is_alive() and len(client.callbacks) == 1  # not retried
    assert owner.errors == [error] and watch.error is error
    (record,) = [r for r in caplog.records if "lease watch failed" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info[1] is error  # with traceback


@pytest.mark.parametrize("end", [None, RpcError(grpc.StatusCode.UNAVAILABLE),
                                 RpcError(grpc.StatusCode.CANCELLED)],
                         ids=["closed", "UNAVAILABLE", "CANCELLED"])
def test_stream_ending_on_connection_trouble_reconnects_after_the_last_revision(start, end):
    client, owner = ScriptedClient(), Owner()
    start(client, owner)
    assert client.wait_for_attempts(1)
    callback, _ = client.callbacks[0]
    callback(put_response(15))
    callback(end)  # the stream ends
    assert client.wait_for_attempts(2), "the watch did not reconnect"
    assert client.callbacks[1][1] == 16 and owner.errors == []


def test_stream_ending_with_a_refusal_ends_the_watch(start):
    client, owner = ScriptedClient(), Owner()
    watch = start(client, owner)
    assert client.wait_for_attempts(1)
    denied = RpcError(grpc.StatusCode.PERMISSION_DENIED)
    client.callbacks[0][0](denied)
    assert owner.got_error.wait(WAIT) and owner.errors == [denied]
    watch.thread.join(WAIT)
    assert not watch.thread.is_alive() and len(client.callbacks) == 1


def test_a_bug_while_handling_a_response_is_reported_not_left_to_pyetcd(start):
    # pyetcd only logs what a callback raises; the watch itself must report it.
    client, owner = ScriptedClient(), Owner()
    start(client, owner)
    assert client.wait_for_attempts(1)
    client.callbacks[0][0](SimpleNamespace(events=None, header=None))  # not a WatchResponse
    assert owner.got_error.wait(WAIT)
    assert isinstance(owner.errors[0], (TypeError, AttributeError))


def test_stop_is_not_reported_as_a_failure(start):
    client, owner = ScriptedClient(), Owner()
    watch = start(client, owner)
    assert client.wait_for_attempts(1)
    watch.stop()
    assert not watch.thread.is_alive() and client.cancelled == [1]
    client.callbacks[0][0](RpcError(grpc.StatusCode.CANCELLED))  # late end of the stream
    assert owner.errors == [] and watch.error is None


def test_registry_calls_tell_unreachable_from_refused():
    def unavailable():
        raise etcd_exc.ConnectionFailedError()

    def denied():
        raise RpcError(grpc.StatusCode.PERMISSION_DENIED)

    registry = EtcdRegistry(EtcdOptions(endpoints="http://etcd.example:2379"),
                            client=ScriptedClient())
    with pytest.raises(RegistryUnavailable, match="etcd at http://etcd.example:2379: etcd conn"):
        registry._call(unavailable)
    with pytest.raises(RegistryError, match=r"permission denied on /coreos.com/network/\.\.\.: "
                       "the etcd role of this client must allow read-write") as refused:
        registry._call(denied)
    assert not isinstance(refused.value, RegistryUnavailable)


def test_error_classification_and_description():
    assert is_transient(RpcError(grpc.StatusCode.UNAVAILABLE))
    assert not is_transient(RpcError(grpc.StatusCode.PERMISSION_DENIED))
    assert not is_transient(grpc.RpcError())  # no status: not known to be connection trouble
    assert not is_transient(ValueError("x"))
    assert describe(RpcError(grpc.StatusCode.UNAVAILABLE)) == "UNAVAILABLE: scripted UNAVAILABLE"
    assert describe(etcd_exc.ConnectionTimeoutError()) == "etcd connection timeout"
    assert describe(KeyError()) == "KeyError"
