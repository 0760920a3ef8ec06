"""The one exception type of the client. It keeps the gRPC status code and the request id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import grpc


class TdbClientError(Exception):
    """A failed call. ``code`` is the ``grpc.StatusCode``; ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str | None = None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.request_id = request_id

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> TdbClientError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        rid = None
        trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
        # grpc yields (key, value) pairs; types-grpcio declares a non-iterable _Metadatum
        pairs = cast("Iterable[tuple[str, str | bytes]]", trailing or ())
        for key, value in pairs:
            if key == "x-request-id":
                rid = value if isinstance(value, str) else value.decode()
        return cls(code, details or "", rid)
