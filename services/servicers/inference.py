"""InferenceService: Forward (and, as they land, Ablate and patching)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import inference_pb2_grpc as ipb_grpc


class InferenceServicer(ipb_grpc.InferenceServiceServicer):
    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def Forward(self, request: ipb.ForwardRequest,
                context: grpc.ServicerContext) -> Iterator[ipb.ForwardResponse]:
        runner = self.models.get(request.model)
        spec = convert.forward_spec_from_pb(request)
        note(model=runner.name, prompts=len(spec.prompts))
        result = runner.forward(spec)
        note(tokens=sum(len(p.token_ids) for p in result.prompts))
        sink = convert.TensorSink()
        header = convert.forward_header_to_pb(runner.name, result, sink)
        yield ipb.ForwardResponse(header=header)
        for chunk in sink.chunks():
            yield ipb.ForwardResponse(chunk=chunk)
