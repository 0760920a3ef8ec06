"""SaeService: attached SAEs — list, encode, decode, load at runtime under --sae-root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import sae_pb2_grpc as spb_grpc
from tdb_core import checks
from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tdb_core.ops import encode as sae_encode
from tdb_core.sae import load_sae


class SaeServicer(spb_grpc.SaeServiceServicer):
    def __init__(self, models: ModelRegistry, sae_root: str | None = None) -> None:
        self.models = models
        self.sae_root = Path(sae_root).resolve() if sae_root else None

    def ListSaes(
        self, request: spb.ListSaesRequest, context: grpc.ServicerContext
    ) -> spb.ListSaesResponse:
        runners = [self.models.get(request.model)] if request.model else self.models.all()
        return spb.ListSaesResponse(
            saes=[convert.sae_info_to_pb(r.name, a) for r in runners for a in r.saes.values()]
        )

    def Encode(
        self, request: spb.EncodeRequest, context: grpc.ServicerContext
    ) -> Iterator[spb.EncodeResponse]:
        runner = self.models.get(request.model)
        spec = convert.encode_spec_from_pb(request)
        note(model=runner.name, sae=spec.sae)
        result = sae_encode.encode(runner, spec)
        note(tokens=int(result.l0.numel()))
        sink = convert.TensorSink()
        header = convert.encode_header_to_pb(runner.name, spec.sae, result, sink)
        yield spb.EncodeResponse(header=header)
        yield from sink.encoded_chunks(spb.EncodeResponse)

    def Decode(
        self, request: spb.DecodeRequest, context: grpc.ServicerContext
    ) -> spb.DecodeResponse:
        runner = self.models.get(request.model)
        note(model=runner.name, sae=request.sae)
        latents = convert.tensor_from_pb(request.latents, "latents").float()
        vectors = sae_encode.decode(runner, sae_encode.DecodeSpec(request.sae, latents))
        sink = convert.TensorSink(inline_budget=runner.limits.max_response_bytes)
        msg = spb.DecodeResponse()
        sink.put(msg.vectors, vectors.float())
        return msg

    def LoadSae(
        self, request: spb.LoadSaeRequest, context: grpc.ServicerContext
    ) -> spb.LoadSaeResponse:
        if self.sae_root is None:
            raise FailedPreconditionError(
                "loading SAEs at runtime is disabled; start the server "
                "with --sae-root DIR to allow paths under DIR"
            )
        runner = self.models.get(request.model)
        if not request.id or not request.path:
            raise InvalidArgumentError("LoadSae needs an id and a path")
        if "\x00" in request.path:
            raise InvalidArgumentError(
                "LoadSae: the path contains a NUL character; give a "
                "relative path under the server's --sae-root"
            )
        path = (self.sae_root / request.path).resolve()
        if self.sae_root != path and self.sae_root not in path.parents:
            raise InvalidArgumentError(
                f"path {checks.quote(request.path)} is outside the server's --sae-root"
            )
        if not path.exists():
            raise NotFoundError(
                f"no SAE at {checks.quote(request.path)} under the server's --sae-root"
            )
        note(model=runner.name, sae=request.id)
        sae = load_sae(path, site=request.site or None, device=str(runner.device))
        attached = runner.saes.attach(request.id, sae, os.fspath(path), request.site or None)
        return spb.LoadSaeResponse(sae=convert.sae_info_to_pb(runner.name, attached))
