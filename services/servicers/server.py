"""ServerService: the server's version, models, limits, features and RPCs, for routers and UIs."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata

import grpc

from services import convert
from services.registry import ModelRegistry
from tdb.v1 import server_pb2 as svpb
from tdb.v1 import server_pb2_grpc as svpb_grpc

_LIBRARIES = {
    "torch": "torch",
    "transformers": "transformers",
    "grpcio": "grpcio",
    "protobuf": "protobuf",
}


@dataclass(frozen=True)
class ServerFeatures:
    """Which optional parts of the server are on."""

    auth: bool = False
    tls: bool = False
    mutual_tls: bool = False
    metrics: bool = False
    explanation_store: bool = False
    load_sae: bool = False


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


class ServerServicer(svpb_grpc.ServerServiceServicer):
    def __init__(
        self,
        models: ModelRegistry,
        features: ServerFeatures,
        services: Sequence[str],
        server_limits: Mapping[str, object],
    ) -> None:
        """``services``: full names of every service the server answers (descriptors must be in
        the default pool); ``server_limits``: server-wide limits by name."""
        self.models = models
        self.features = features
        self.services = tuple(services)
        self.server_limits = dict(server_limits)
        self._versions = {
            "python": platform.python_version(),
            **{k: _version(d) for k, d in _LIBRARIES.items()},
        }
        self._static = [convert.service_info_to_pb(name) for name in self.services]

    def ServerInfo(
        self, request: svpb.ServerInfoRequest, context: grpc.ServicerContext
    ) -> svpb.ServerInfoResponse:
        f = self.features
        return svpb.ServerInfoResponse(
            version=_version("tdb-service"),
            library_versions=self._versions,
            models=[
                convert.model_capabilities_to_pb(r, r.name == self.models.default)
                for r in self.models.all()
            ],  # built per call: SAEs can be attached at runtime
            default_model=self.models.default,
            features=svpb.Features(
                auth=f.auth,
                tls=f.tls,
                mutual_tls=f.mutual_tls,
                metrics=f.metrics,
                explanation_store=f.explanation_store,
                load_sae=f.load_sae,
            ),
            services=self._static,
            server_limits=convert.limits_to_pb(self.server_limits),
        )
