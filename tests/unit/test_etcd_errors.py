"""How etcd errors are told apart and explained (the live cases are in tests/etcd)."""

import grpc
from fakes.rpc import RpcError
from pyetcd import exceptions as etcd_exc

from weft.control.etcd_errors import explain, is_stale_token, is_transient, tls_failure

HANDSHAKE = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: Tls "
             "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL "
             "routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer")


def wrapped(error: RpcError) -> etcd_exc.Etcd3Exception:
    """What pyetcd raises for UNAVAILABLE: its own exception, the gRPC one as __context__."""
    try:
        raise error
    except RpcError:
        try:
            raise etcd_exc.ConnectionFailedError()
        except etcd_exc.ConnectionFailedError as exc:
            return exc


def test_a_failed_handshake_is_fatal_and_names_the_flag():
    exc = wrapped(RpcError(grpc.StatusCode.UNAVAILABLE, HANDSHAKE))
    assert not is_transient(exc)
    assert "check --etcd-cafile" in tls_failure(exc)
    assert explain(exc, "https://e:2379", None, "/p").startswith(
        "etcd at https://e:2379: TLS handshake failed: certificate verify failed")


def test_an_unreachable_etcd_is_transient():
    refused = RpcError(grpc.StatusCode.UNAVAILABLE, "Failed to connect to remote host")
    assert is_transient(wrapped(refused)) and is_transient(refused)
    assert tls_failure(wrapped(refused)) is None


def test_auth_answers_are_explained():
    def says(code, details, user="weft"):
        return explain(RpcError(code, details), "http://e:2379", user, "/coreos.com/network")

    assert says(grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid "
                "user ID or password") == ("etcd authentication failed for user 'weft': wrong "
                                           "user name or password")
    assert "set --etcd-username and --etcd-password" in says(
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty", None)
    assert says(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied") == (
        "permission denied on /coreos.com/network/...: the etcd role of user 'weft' must allow "
        "read-write on that prefix")
    stale = RpcError(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")
    assert is_stale_token(stale) and not is_transient(stale)
    assert not is_stale_token(RpcError(grpc.StatusCode.PERMISSION_DENIED, "permission denied"))
