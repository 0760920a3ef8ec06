"""ExplainService: activation records, explanations (streamed progress), scores, the catalog."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import explain_pb2_grpc as epb_grpc
from tdb_core import checks
from tdb_core.errors import InvalidArgumentError, ResourceExhaustedError
from tdb_core.explain import engine, workflow

MAX_INLINE_TEXTS = 10000
MAX_LIST_LIMIT = 10000
#: Largest ListExplanations page: gRPC's default receive limit (4 MiB), so any client reads it.
MAX_PAGE_BYTES = 4 * 2**20


@dataclass
class ExplainSetup:
    """What the server was configured with: catalog, methods, datasets."""

    catalog: engine.Catalog
    methods: dict[str, engine.Method]
    default_method: str
    datasets: dict[str, Callable[[], Sequence[str] | str]] = field(default_factory=dict)

    def method(self, name: str) -> engine.Method:
        return checks.lookup(
            self.methods, name or self.default_method, "explanation method", "configured"
        )

    def dataset(self, d: epb.Dataset) -> Sequence[str] | str:
        which = d.WhichOneof("source")
        if which == "texts":
            texts = list(d.texts.texts)
            checks.at_most(
                len(texts), MAX_INLINE_TEXTS, "inline texts", hint="register a dataset file"
            )
            checks.non_empty([t for t in texts if t.strip()], "non-empty texts in the dataset")
            return texts
        name = d.name if which == "name" else ""
        if not name:
            if len(self.datasets) == 1:
                name = next(iter(self.datasets))
            else:
                raise InvalidArgumentError(
                    f"name a dataset ({', '.join(self.datasets) or 'none registered'}) "
                    "or send texts"
                )
        return checks.lookup(self.datasets, name, "dataset", "registered")()


class ExplainServicer(epb_grpc.ExplainServiceServicer):
    """Parses requests, calls :mod:`tdb_core.explain.workflow`, renders its results."""

    def __init__(self, models: ModelRegistry, setup: ExplainSetup) -> None:
        self.models = models
        self.setup = setup

    def _recipe(
        self, request: epb.ExplainNodeRequest | epb.ScoreExplanationRequest, save: bool
    ) -> workflow.Recipe:
        return workflow.Recipe(
            dataset=self.setup.dataset(request.dataset),
            method=self.setup.method(request.method),
            mining=convert.mining_from_pb(request.mining),
            n_examples_per_split=(
                request.n_examples_per_split if request.HasField("n_examples_per_split") else None
            ),
            save=save,
        )

    def GetActivationRecords(
        self, request: epb.GetActivationRecordsRequest, context: grpc.ServicerContext
    ) -> epb.GetActivationRecordsResponse:
        runner = self.models.get(request.model)
        note(model=runner.name, nodes=len(request.nodes))
        records = workflow.records(
            runner,
            list(request.nodes),
            self.setup.dataset(request.dataset),
            convert.mining_from_pb(request.mining),
        )
        return epb.GetActivationRecordsResponse(records=[convert.records_to_pb(r) for r in records])

    def ExplainNode(
        self, request: epb.ExplainNodeRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExplainNodeResponse]:
        runner = self.models.get(request.model)
        recipe = self._recipe(request, request.save if request.HasField("save") else True)
        spec = workflow.ExplainSpec(tuple(request.nodes), recipe)
        note(model=runner.name, nodes=len(spec.nodes), explain_method=recipe.method.name)
        catalog = self.setup.catalog
        for event in workflow.stream(lambda emit: workflow.explain(runner, spec, catalog, emit)):
            yield convert.explain_event_to_pb(event)

    def ScoreExplanation(
        self, request: epb.ScoreExplanationRequest, context: grpc.ServicerContext
    ) -> epb.ScoreExplanationResponse:
        runner = self.models.get(request.model)
        recipe = self._recipe(request, request.save)
        spec = workflow.ScoreSpec(request.node, request.explanation, recipe)
        note(model=runner.name, node=request.node, explain_method=recipe.method.name)
        stored = workflow.score(runner, spec, self.setup.catalog)
        return epb.ScoreExplanationResponse(result=convert.explanation_to_pb(stored))

    def ListExplanations(
        self, request: epb.ListExplanationsRequest, context: grpc.ServicerContext
    ) -> epb.ListExplanationsResponse:
        limit = request.limit if request.HasField("limit") else 100
        checks.in_range(limit, 0, MAX_LIST_LIMIT, "limit")
        if limit == 0:
            return self._list_response([], 0)
        found = self.setup.catalog.list(
            model=request.model or None,
            sae_id=request.sae or None,
            node_key=request.node or None,
            node_key_prefix=request.node_prefix or None,
            method=request.method or None,
            min_score=request.min_score if request.HasField("min_score") else None,
            limit=limit + 1,  # one more tells whether another page follows
            offset=request.offset,
        )
        # A page ends at `limit` or before the response would pass the server's limit, and never
        # needs more than gRPC's default 4 MiB message limit (unary: it cannot stream).
        limit_bytes = min(self.models.get().limits.max_response_bytes, MAX_PAGE_BYTES)
        budget = limit_bytes - 64 * 1024  # room for the rest of the message
        page: list[epb.Explanation] = []
        size = 0
        for e in found[:limit]:
            msg = convert.explanation_to_pb(e)
            size += msg.ByteSize() + 8
            if size > budget:
                if not page:
                    raise ResourceExhaustedError(
                        f"explanation {checks.quote(e.node_key)} alone is over the server's "
                        "response limit"
                    )
                break
            page.append(msg)
        more = len(page) < len(found)
        return self._list_response(page, request.offset + len(page) if more else 0)

    def _list_response(
        self, page: list[epb.Explanation], next_offset: int
    ) -> epb.ListExplanationsResponse:
        return epb.ListExplanationsResponse(
            explanations=page,
            methods=list(self.setup.methods),
            default_method=self.setup.default_method,
            datasets=list(self.setup.datasets),
            next_offset=next_offset,
        )
