"""AttributionService: TDB's node table."""

from __future__ import annotations

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import attribution_pb2_grpc as apb_grpc
from tdb_core import attribution
from tdb_core.explain.engine import Catalog
from tdb_core.nodes import Node


def node_key(node: Node) -> str | None:
    """The explanation catalog's key of a table node: its unit (None for embeddings)."""
    return None if node.unit is None else node.unit_node().key


class AttributionServicer(apb_grpc.AttributionServiceServicer):
    def __init__(self, models: ModelRegistry, catalog: Catalog | None = None) -> None:
        self.models = models
        self.catalog = catalog

    def Attribute(
        self, request: apb.AttributeRequest, context: grpc.ServicerContext
    ) -> apb.AttributeResponse:
        runner = self.models.get(request.model)
        spec = convert.attribute_spec_from_pb(runner, request)
        note(model=runner.name, loss=type(spec.loss).__name__)
        result = attribution.attribute(runner, spec)
        note(tokens=sum(len(p.token_ids) for p in result.prompts), nodes=len(result.rows))
        msg = convert.attribute_to_pb(runner.name, result)
        if self.catalog is not None:
            keys = {i: node_key(r.node) for i, r in enumerate(result.rows)}
            best = self.catalog.best(runner.name, [k for k in keys.values() if k])
            for i, k in keys.items():
                if k in best:
                    msg.rows[i].explanation.CopyFrom(convert.explanation_to_pb(best[k]))
        return msg
