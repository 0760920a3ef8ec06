"""InferenceService: Forward, Ablate, activation-patching sweeps and Generate."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import inference_pb2_grpc as ipb_grpc
from tdb_core.ops import ablate, lens, patch_sweep
from tdb_core.ops import generate as gen
from tdb_core.ops.forward import forward


class InferenceServicer(ipb_grpc.InferenceServiceServicer):
    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def Forward(
        self, request: ipb.ForwardRequest, context: grpc.ServicerContext
    ) -> Iterator[ipb.ForwardResponse | bytes]:  # bytes: pre-serialized chunks
        runner = self.models.get(request.model)
        spec = convert.forward_spec_with_loss_from_pb(runner, request)
        note(model=runner.name, prompts=len(spec.prompts))
        result = forward(runner, spec)
        note(tokens=sum(len(p.token_ids) for p in result.prompts))
        sink = convert.TensorSink()
        header = convert.forward_header_to_pb(runner.name, result, sink)
        yield ipb.ForwardResponse(header=header)
        yield from sink.encoded_chunks(ipb.ForwardResponse)

    def Ablate(
        self, request: ipb.AblateRequest, context: grpc.ServicerContext
    ) -> Iterator[ipb.AblateResponse | bytes]:  # bytes: pre-serialized chunks
        runner = self.models.get(request.model)
        spec = convert.ablate_spec_from_pb(runner, request)
        note(model=runner.name, sets=len(spec.sets))
        result = ablate.ablate(runner, spec)
        note(tokens=len(result.prompt.token_ids) * len(result.rows))
        sink = convert.TensorSink()
        header = convert.ablate_header_to_pb(runner.name, spec, result, sink)
        yield ipb.AblateResponse(header=header)
        yield from sink.encoded_chunks(ipb.AblateResponse)

    def PatchSweep(
        self, request: ipb.PatchSweepRequest, context: grpc.ServicerContext
    ) -> ipb.PatchSweepResponse:
        runner = self.models.get(request.model)
        spec = convert.patch_sweep_spec_from_pb(runner, request)
        note(model=runner.name, site=spec.site)
        result = patch_sweep.patch_sweep(runner, spec)
        note(cells=int(result.recovered.numel()))
        return convert.patch_sweep_to_pb(runner.name, result)

    def LogitLens(
        self, request: ipb.LogitLensRequest, context: grpc.ServicerContext
    ) -> ipb.LogitLensResponse:
        runner = self.models.get(request.model)
        spec = convert.lens_spec_from_pb(request)
        note(model=runner.name)
        result = lens.logit_lens(runner, spec)
        note(tokens=len(result.prompt.token_ids), cells=len(result.cells))
        return convert.lens_to_pb(runner.name, result)

    def Generate(
        self, request: ipb.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[ipb.GenerateResponse]:
        runner = self.models.get(request.model)
        spec = convert.generate_spec_from_pb(request)
        note(model=runner.name, sets=len(spec.sets), max_new_tokens=spec.max_new_tokens)
        events = gen.generate(runner, spec)  # every check happens here, before the first event
        for event in events:
            if isinstance(event, gen.Finish):
                note(tokens=sum(len(r.token_ids) for r in event.rows), steps=event.steps)
            yield convert.generate_event_to_pb(runner.name, event)
