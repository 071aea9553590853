"""RpcError: a gRPC error as the etcd client raises one, with the status code and details a
test chooses (grpc.RpcError itself carries neither)."""

from __future__ import annotations

import grpc


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None = None) -> None:
        self._code = code
        self._details = f"scripted {code.name}" if details is None else details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details
