"""AttributionService: TDB's node table."""

from __future__ import annotations

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import attribution_pb2_grpc as apb_grpc
from tdb_core import attribution


class AttributionServicer(apb_grpc.AttributionServiceServicer):
    def __init__(self, models: ModelRegistry) -> None:
        self.models = models

    def Attribute(self, request: apb.AttributeRequest,
                  context: grpc.ServicerContext) -> apb.AttributeResponse:
        runner = self.models.get(request.model)
        spec = convert.attribute_spec_from_pb(runner, request)
        note(model=runner.name, loss=type(spec.loss).__name__)
        result = attribution.attribute(runner, spec)
        note(tokens=sum(len(p.token_ids) for p in result.prompts), nodes=len(result.rows))
        return convert.attribute_to_pb(runner.name, result)
