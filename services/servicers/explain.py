"""ExplainService: activation records, explanations (streamed progress), scores, the catalog."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from services import convert
from services.interceptors import note
from services.registry import ModelRegistry
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import explain_pb2_grpc as epb_grpc
from tdb_core import cancel
from tdb_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from tdb_core.explain import engine
from tdb_core.explain.pipeline import ProgressEvent

MAX_INLINE_TEXTS = 10000


@dataclass
class ExplainSetup:
    """What the server was configured with: catalog, methods, datasets."""

    catalog: engine.Catalog
    methods: dict[str, engine.Method]
    default_method: str
    datasets: dict[str, Callable[[], Sequence[str] | str]] = field(default_factory=dict)

    def method(self, name: str) -> engine.Method:
        m = self.methods.get(name or self.default_method)
        if m is None:
            raise NotFoundError(
                f"explanation method '{name}' is not configured on this server; "
                f"available: {', '.join(self.methods)}"
            )
        return m

    def dataset(self, d: epb.Dataset) -> Sequence[str] | str:
        which = d.WhichOneof("source")
        if which == "texts":
            texts = list(d.texts.texts)
            if not texts or not any(t.strip() for t in texts):
                raise InvalidArgumentError(
                    "the dataset's texts are empty; send at least one non-empty text"
                )
            if len(texts) > MAX_INLINE_TEXTS:
                raise ResourceExhaustedError(
                    f"{len(texts)} inline texts is over the limit of "
                    f"{MAX_INLINE_TEXTS}; register a dataset file on the server"
                )
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
        source = self.datasets.get(name)
        if source is None:
            raise NotFoundError(
                f"dataset '{name}' is not registered; registered: "
                f"{', '.join(self.datasets) or 'none'}"
            )
        return source()


class ExplainServicer(epb_grpc.ExplainServiceServicer):
    def __init__(self, models: ModelRegistry, setup: ExplainSetup) -> None:
        self.models = models
        self.setup = setup

    def _targets(self, runner: Any, nodes: Sequence[str]) -> list[engine.Target]:
        if not nodes:
            raise InvalidArgumentError("name at least one node, e.g. 'blocks.0.mlp.hook_post[5]'")
        return [engine.parse_target(runner, n) for n in nodes]

    def GetActivationRecords(
        self, request: epb.GetActivationRecordsRequest, context: grpc.ServicerContext
    ) -> epb.GetActivationRecordsResponse:
        runner = self.models.get(request.model)
        targets = self._targets(runner, request.nodes)
        note(model=runner.name, nodes=len(targets))
        records = engine.mine(
            runner,
            targets,
            self.setup.dataset(request.dataset),
            convert.mining_from_pb(request.mining),
        )
        return epb.GetActivationRecordsResponse(records=[convert.records_to_pb(r) for r in records])

    def ExplainNode(
        self, request: epb.ExplainNodeRequest, context: grpc.ServicerContext
    ) -> Iterator[epb.ExplainNodeResponse]:
        runner = self.models.get(request.model)
        targets = self._targets(runner, request.nodes)
        method = self.setup.method(request.method)
        dataset = self.setup.dataset(request.dataset)
        mining = convert.mining_from_pb(request.mining)
        n_split = request.n_examples_per_split if request.HasField("n_examples_per_split") else None
        save = request.save if request.HasField("save") else True
        note(model=runner.name, nodes=len(targets), explain_method=method.name)
        events: queue.Queue[Any] = queue.Queue()
        check = cancel.current()

        def work() -> None:
            with cancel.scope(check):
                try:

                    def mined(done: int, total: int) -> None:
                        events.put(
                            epb.ExplainProgress(
                                phase="mining",
                                done=done,
                                total=total,
                                message=f"{done}/{total} windows",
                            )
                        )

                    records = engine.mine(runner, targets, dataset, mining, mined)
                    for t, rec in zip(targets, records):

                        def prog(e: ProgressEvent, key: str = t.key) -> None:
                            cancel.check()
                            events.put(
                                epb.ExplainProgress(
                                    node=key,
                                    phase=e.phase.value,
                                    done=e.done,
                                    total=e.total,
                                    message=e.message,
                                )
                            )

                        try:
                            explainer, fields, _ = engine.explain_target(
                                t, rec, method, prog, n_split
                            )
                        except FailedPreconditionError as e:
                            if len(targets) == 1:
                                raise
                            events.put(
                                epb.ExplainProgress(node=t.key, phase="skipped", message=str(e))
                            )
                            continue
                        entry = dict(
                            model=runner.name,
                            node_key=t.key,
                            method=method.name,
                            explainer=explainer,
                            sae_id=t.sae_id,
                            **fields,
                        )
                        stored = self.setup.catalog.put(**entry) if save else _unsaved(entry)
                        events.put(convert.explanation_to_pb(stored))
                    events.put(None)
                except BaseException as e:  # noqa: BLE001 - handed to the RPC thread, mapped there
                    events.put(e)

        thread = threading.Thread(target=work, name="tdb-explain", daemon=True)
        thread.start()
        while True:
            item = events.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, epb.ExplainProgress):
                yield epb.ExplainNodeResponse(progress=item)
            else:
                yield epb.ExplainNodeResponse(result=item)
        thread.join()

    def ScoreExplanation(
        self, request: epb.ScoreExplanationRequest, context: grpc.ServicerContext
    ) -> epb.ScoreExplanationResponse:
        runner = self.models.get(request.model)
        (target,) = self._targets(runner, [request.node])
        if not request.explanation.strip():
            raise InvalidArgumentError("the explanation to score is empty")
        method = self.setup.method(request.method)
        note(model=runner.name, node=target.key, explain_method=method.name)
        (rec,) = engine.mine(
            runner,
            [target],
            self.setup.dataset(request.dataset),
            convert.mining_from_pb(request.mining),
        )
        n_split = request.n_examples_per_split if request.HasField("n_examples_per_split") else None
        fields = engine.score_target(target, rec, request.explanation, method, None, n_split)
        explainer = "given"
        entry = dict(
            model=runner.name,
            node_key=target.key,
            method=method.name,
            explainer=explainer,
            sae_id=target.sae_id,
            **fields,
        )
        stored = self.setup.catalog.put(**entry) if request.save else _unsaved(entry)
        return epb.ScoreExplanationResponse(result=convert.explanation_to_pb(stored))

    def ListExplanations(
        self, request: epb.ListExplanationsRequest, context: grpc.ServicerContext
    ) -> epb.ListExplanationsResponse:
        limit = request.limit if request.HasField("limit") else 100
        if limit > 10000:
            raise InvalidArgumentError(f"limit must be <= 10000, got {limit}")
        found = self.setup.catalog.list(
            model=request.model or None,
            sae_id=request.sae or None,
            node_key=request.node or None,
            node_key_prefix=request.node_prefix or None,
            method=request.method or None,
            min_score=request.min_score if request.HasField("min_score") else None,
            limit=limit,
            offset=request.offset,
        )
        return epb.ListExplanationsResponse(
            explanations=[convert.explanation_to_pb(e) for e in found],
            methods=list(self.setup.methods),
            default_method=self.setup.default_method,
            datasets=list(self.setup.datasets),
        )


def _unsaved(entry: dict[str, Any]) -> Any:
    import time

    from tdb_core.explain.store import StoredExplanation

    now = time.time()
    return StoredExplanation(
        model=entry["model"],
        sae_id=entry["sae_id"],
        node_key=entry["node_key"],
        method=entry["method"],
        explainer=entry["explainer"],
        explanation=entry["explanation"],
        score=entry["score"],
        score_reason=entry.get("score_reason"),
        scores=entry.get("scores") or {},
        records_used=entry.get("records_used") or {},
        created_at=now,
        updated_at=now,
    )
