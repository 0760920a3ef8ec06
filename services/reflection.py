"""Server reflection that also resolves method symbols (``tdb.v1.InferenceService.Forward``).

grpcio-reflection's servicer asks the descriptor pool for the file containing a symbol, and the
pool knows messages, fields, enums and services but not methods, so ``grpcurl describe
SERVICE.METHOD`` got NOT_FOUND. A method lives in its service's file: resolve it there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection


# grpc_reflection ships no type stubs: its servicer class is Any to mypy
class ReflectionServicer(reflection.ReflectionServicer):  # type: ignore[misc]
    """The standard servicer, plus method symbols resolved to their service's file."""

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service_name, _, method = fully_qualified_name.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is not None and method in service.methods_by_name:
                return super()._file_containing_symbol(request, service_name)
        return super()._file_containing_symbol(request, fully_qualified_name)


def enable_server_reflection(service_names: Iterable[str], server: grpc.Server) -> None:
    """Serve reflection for ``service_names`` on ``server`` (method symbols included)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(tuple(service_names)), server
    )
