"""ModelService: loaded models, their node schema, tokenization."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import model_pb2 as mpb
from tdb.v1 import model_pb2_grpc as mpb_grpc
from tdb_core.ops.weights import get_weights


class ModelServicer(mpb_grpc.ModelServiceServicer):
    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def ListModels(
        self, request: mpb.ListModelsRequest, context: grpc.ServicerContext
    ) -> mpb.ListModelsResponse:
        out = []
        for r in self.models.all():
            info = convert.model_info_to_pb(r)
            out.append(
                mpb.ModelSummary(
                    name=r.name,
                    architecture=info.architecture,
                    source=convert.public_source(r.loaded.source),
                    is_default=r.name == self.models.default,
                )
            )
        return mpb.ListModelsResponse(models=out)

    def GetModelInfo(
        self, request: mpb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> mpb.GetModelInfoResponse:
        runner = self.models.get(request.model)
        note(model=runner.name)
        return convert.model_info_to_pb(runner)

    def Tokenize(
        self, request: mpb.TokenizeRequest, context: grpc.ServicerContext
    ) -> mpb.TokenizeResponse:
        runner = self.models.get(request.model)
        bos = request.prepend_bos if request.HasField("prepend_bos") else None
        prompts = [
            cpb.PromptTokens(token_ids=list(ids), tokens=list(runner.tokens.strings(ids)))
            for ids in runner.tokens.tokenize_texts(request.texts, bos)
        ]
        note(model=runner.name, tokens=sum(len(p.token_ids) for p in prompts))
        return mpb.TokenizeResponse(prompts=prompts)

    def Detokenize(
        self, request: mpb.DetokenizeRequest, context: grpc.ServicerContext
    ) -> mpb.DetokenizeResponse:
        runner = self.models.get(request.model)
        ids = list(request.token_ids)
        text = runner.tokens.decode(ids)
        note(model=runner.name, tokens=len(ids))
        return mpb.DetokenizeResponse(text=text, tokens=list(runner.tokens.strings(ids)))

    def GetWeights(
        self, request: mpb.GetWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[mpb.GetWeightsResponse | bytes]:  # bytes: pre-serialized chunks
        runner = self.models.get(request.model)
        spec = convert.weights_spec_from_pb(request)
        note(model=runner.name, weights=len(spec.names), views=len(spec.views))
        ws = get_weights(runner, spec)
        sink = convert.TensorSink()
        header = convert.weights_header_to_pb(runner.name, ws, sink)
        yield mpb.GetWeightsResponse(header=header)
        yield from sink.encoded_chunks(mpb.GetWeightsResponse)
