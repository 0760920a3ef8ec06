"""The explain workflow: mine -> explain -> score -> save, for many nodes, with typed events.

``explain`` mines every node's records in one pass over the dataset, explains and scores each
node with a method, skips nodes that cannot be explained (a dead node in a batch) and stores the
results in the catalog; it reports :class:`Progress`, :class:`Skipped` and each
:class:`~tdb_core.explain.store.StoredExplanation` as it goes. ``score`` scores a given
explanation. The ExplainService servicer and ``tdb explain`` only parse requests and render these
events; :func:`stream` turns the callbacks into an iterator for a streaming RPC.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from tdb_core import cancel, checks
from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.engine import (
    Catalog,
    Method,
    Target,
    explain_target,
    parse_target,
    score_target,
)
from tdb_core.explain.pipeline import ProgressEvent, StoreFields
from tdb_core.explain.records import NodeRecords
from tdb_core.explain.store import StoredExplanation
from tdb_core.ops.mine import Dataset, MineSpec, MiningOptions, mine
from tdb_core.plan import check_response_bytes
from tdb_core.runner import ModelRunner


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of ``phase`` (``mining``: windows, for every node at once;
    ``explaining``, ``simulating``, ``scoring``, ``done``: of one ``node``)."""

    phase: str
    done: int
    total: int
    message: str
    node: str = ""


@dataclass(frozen=True)
class Skipped:
    """A node of a batch that could not be explained (e.g. it never fires on the dataset)."""

    node: str
    reason: str


Event = Progress | Skipped | StoredExplanation


@dataclass(frozen=True)
class Recipe:
    """How nodes are explained: the dataset mined (and how), the method, examples per split, and
    whether results are stored in the catalog."""

    dataset: Dataset
    method: Method
    mining: MiningOptions = field(default_factory=MiningOptions)
    n_examples_per_split: int | None = None
    save: bool = True


def parse_targets(runner: ModelRunner, nodes: Sequence[str]) -> list[Target]:
    """Node keys resolved against the model's schema (at least one)."""
    checks.non_empty(nodes, "nodes", "'blocks.0.mlp.hook_post[5]'")
    checks.count(nodes, checks.MAX_NODES, "nodes")
    return [parse_target(runner, n) for n in nodes]


def records(
    runner: ModelRunner, nodes: Sequence[str], dataset: Dataset, mining: MiningOptions
) -> tuple[NodeRecords, ...]:
    """Activation records of nodes (keys), mined in one pass."""
    checks.count(nodes, checks.MAX_NODES, "nodes")
    # every record: window_len tokens, each a string and two numbers (~24 bytes on the wire)
    n_records = mining.top_k + mining.n_random
    check_response_bytes(
        len(nodes) * n_records * mining.window_len * 24, runner.limits.max_response_bytes
    )
    return mine(runner, MineSpec(tuple(parse_targets(runner, nodes)), dataset, mining))


@dataclass(frozen=True)
class ExplainSpec:
    """Nodes (keys) to explain."""

    nodes: tuple[str, ...]
    recipe: Recipe


@dataclass(frozen=True)
class ExplainResult:
    """What ``explain`` did: the explanations (stored, or not when the spec says so) and the
    nodes it skipped, each in the order of the spec's nodes."""

    explanations: tuple[StoredExplanation, ...]
    skipped: tuple[Skipped, ...]


def explain(
    runner: ModelRunner,
    spec: ExplainSpec,
    catalog: Catalog,
    on_event: Callable[[Event], None] | None = None,
) -> ExplainResult:
    """Explain and score every node of ``spec``; a node that cannot be explained fails the request
    when it is the only one, and is skipped (with its reason) in a batch."""
    emit: Callable[[Event], None] = on_event or (lambda _: None)
    targets, recipe = parse_targets(runner, spec.nodes), spec.recipe

    def mined(done: int, total: int) -> None:
        emit(Progress("mining", done, total, f"{done}/{total} windows"))

    recs = mine(runner, MineSpec(tuple(targets), recipe.dataset, recipe.mining), mined)
    done: list[StoredExplanation] = []
    skipped: list[Skipped] = []
    for t, rec in zip(targets, recs, strict=True):

        def progress(e: ProgressEvent, node: str = t.key) -> None:
            cancel.check()
            emit(Progress(e.phase.value, e.done, e.total, e.message, node))

        try:
            best = explain_target(t, rec, recipe.method, progress, recipe.n_examples_per_split)
        except FailedPreconditionError as e:
            if len(targets) == 1:
                raise
            skip = Skipped(t.key, str(e))
            skipped.append(skip)
            emit(skip)
            continue
        entry = _entry(runner.name, t, recipe.method.name, best.explainer, best.fields)
        stored = catalog.put(entry) if recipe.save else entry
        done.append(stored)
        emit(stored)
    return ExplainResult(tuple(done), tuple(skipped))


@dataclass(frozen=True)
class ScoreSpec:
    """A given explanation of one node, scored with a method's simulator (or judge, for heads)."""

    node: str
    explanation: str
    recipe: Recipe


def score(runner: ModelRunner, spec: ScoreSpec, catalog: Catalog) -> StoredExplanation:
    """A given explanation of one node, scored on its records (stored when ``save``)."""
    checks.text(
        spec.explanation,
        checks.MAX_EXPLANATION_BYTES,
        "the explanation",
        "an explanation is a sentence or two",
    )
    (target,), recipe = parse_targets(runner, [spec.node]), spec.recipe
    if not spec.explanation.strip():
        raise InvalidArgumentError("the explanation to score is empty")
    (rec,) = mine(runner, MineSpec((target,), recipe.dataset, recipe.mining))
    fields = score_target(
        target, rec, spec.explanation, recipe.method, None, recipe.n_examples_per_split
    )
    entry = _entry(runner.name, target, recipe.method.name, "given", fields)
    return catalog.put(entry) if recipe.save else entry


def _entry(
    model: str, target: Target, method: str, explainer: str, fields: StoreFields
) -> StoredExplanation:
    now = time.time()
    key = (model, target.sae_id, target.key, method, explainer)
    return StoredExplanation(*key, **asdict(fields), created_at=now, updated_at=now)


class _Done:
    """Marks the end of a stream."""


def stream(work: Callable[[Callable[[Event], None]], object]) -> Iterator[Event]:
    """Run ``work(emit)`` on its own thread, under the caller's cancellation, and yield every event
    it emits as it comes; an error it raises is raised here after the events before it."""
    events: queue.Queue[Event | _Done | BaseException] = queue.Queue()
    check = cancel.current()

    def run() -> None:
        with cancel.scope(check):
            try:
                work(events.put)
                events.put(_Done())
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                events.put(e)

    thread = threading.Thread(target=run, name="tdb-explain", daemon=True)
    thread.start()
    while True:
        item = events.get()
        if isinstance(item, _Done):
            break
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()
