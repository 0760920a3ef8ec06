"""Explaining the nodes of a served model: node keys, explainer methods, and the catalog of
stored (and shipped) explanations. Mining is an operation (``tdb_core.ops.mine``); the whole
mine -> explain -> save workflow is ``tdb_core.explain.workflow``.

Nodes are named by their keys (:mod:`tdb_core.nodes`): ``blocks.1.mlp.hook_post[42]`` (a
neuron), ``sae.ID.hook_sae_acts_post[7]`` (an SAE latent), any per-token site with a unit axis
(``blocks.0.hook_resid_post[5]``), or ``blocks.1.attn.hook_pattern[3]`` (attention head 3,
explained over token pairs by its attention weights). Any node key is accepted and its unit-level
node explained: a node-table row's ``blocks.1.mlp.hook_post[42,pos=5]`` or
``blocks.1.attn.hook_pattern[3,pos=14,key=2]`` explains neuron 42 or head 3; ``[head=3]``-style
spellings are stored in the canonical ``[3]`` form.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from tdb_core import checks, nodes
from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.explain.explainers import (
    BaselineExplainer,
    BaselineHeadExplainer,
    Explainer,
    LLMExplainer,
    LLMHeadExplainer,
)
from tdb_core.explain.heads import BaselinePairJudge, LLMPairJudge, PairJudge
from tdb_core.explain.mining import NodeRef
from tdb_core.explain.pipeline import (
    ProgressEvent,
    StoreFields,
    explain_head,
    explain_node,
    head_store_fields,
    score_explanation,
    score_head,
    store_fields,
)
from tdb_core.explain.records import NodeRecords, RecordKind
from tdb_core.explain.simulators import AllAtOnceSimulator, BaselineSimulator, Simulator
from tdb_core.explain.store import ExplanationStore, StoredExplanation
from tdb_core.schema import SiteInfo

if TYPE_CHECKING:
    from tdb_core.runner import ModelRunner

#: Stored rows read per query when shipped explanations are merged into a listing.
_MERGE_PAGE = 10_000
HEAD_SITE = "attn.hook_pattern"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Target:
    """A node to explain: canonical key, its site and unit, and how its records are shaped."""

    key: str
    site: SiteInfo
    unit: int
    kind: RecordKind
    sae_id: str

    @property
    def ref(self) -> NodeRef:
        return NodeRef(self.key, self.site.layer if self.site.layer is not None else -1, self.unit)


def parse_node_key(text: str) -> nodes.Node:
    """The unit-level node a key names (positions dropped); an old display name is accepted with
    a deprecation note in the log."""
    old = nodes.legacy_node(text) if isinstance(text, str) else None
    if old is not None:
        log.warning("deprecated node name", given=text, key=old.unit_node().key)
        node = old
    else:
        node = nodes.parse_node(text)
    if node.unit is None:
        raise InvalidArgumentError(
            f"node {checks.quote(str(text))} names no unit; explain a unit, e.g. "
            "'blocks.1.mlp.hook_post[42]', "
            "'sae.ID.hook_sae_acts_post[7]' or 'blocks.1.attn.hook_pattern[3]' (head 3)"
        )
    return node.unit_node()


def parse_target(runner: ModelRunner, text: str) -> Target:
    """Resolve a node key against the model's schema (NotFound / OutOfRange say what exists)."""
    node = parse_node_key(text)
    site, unit = runner.schema.get(node.site), node.unit
    assert unit is not None
    count = runner.schema.unit_count(site)
    if site.kind.key == HEAD_SITE:
        kind = RecordKind.TOKEN_PAIR
    elif site.kind.dims == ("pos", site.kind.unit_dim):
        kind = RecordKind.TOKEN
    else:
        raise InvalidArgumentError(
            f"site '{site.name}' cannot be explained node by node; explain per-token units of "
            "sites shaped [pos, unit] (neurons, latents, channels) or heads via attn.hook_pattern"
        )
    checks.index(unit, count or 0, checks.unit_noun(site.kind.unit_dim), f" of site '{site.name}'")
    return Target(node.key, site, unit, kind, node.sae_id or "")


# --------------------------------------------------------------------------------------------------
# Methods: explainer + simulator (neurons) and explainer + judge (heads)


@dataclass(frozen=True)
class Method:
    """A configured way to explain: its name and how it explains and scores each record kind."""

    name: str
    explainer: Explainer
    simulator: Simulator
    head_explainer: Explainer
    judge: PairJudge


def baseline_method() -> Method:
    return Method(
        "baseline",
        BaselineExplainer(),
        BaselineSimulator(),
        BaselineHeadExplainer(),
        BaselinePairJudge(),
    )


def llm_method(name: str, backend: Any) -> Method:
    """An LLM method on a backend (local HF model or OpenAI-compatible endpoint)."""
    return Method(
        name,
        LLMExplainer(backend),
        AllAtOnceSimulator(backend),
        LLMHeadExplainer(backend),
        LLMPairJudge(backend),
    )


@dataclass(frozen=True)
class TargetExplanation:
    """The best explanation of one node: which explainer wrote it, and its stored fields."""

    explainer: str
    fields: StoreFields


def explain_target(
    target: Target,
    records: NodeRecords,
    method: Method,
    progress: Callable[[ProgressEvent], None] | None = None,
    n_examples_per_split: int | None = None,
) -> TargetExplanation:
    """The best explanation of one mined node, scored."""
    if target.kind is RecordKind.TOKEN_PAIR:
        res = explain_head(
            records,
            method.head_explainer,
            method.judge,
            n_examples_per_split=n_examples_per_split,
            progress=progress,
        )
        fields = head_store_fields(res.best_explanation, res.best, res.judge, res.records_used)
        return TargetExplanation(res.explainer, fields)
    res_n = explain_node(
        records,
        method.explainer,
        method.simulator,
        n_examples_per_split=n_examples_per_split,
        progress=progress,
    )
    return TargetExplanation(res_n.explainer, store_fields(res_n.best, res_n.records_used))


def score_target(
    target: Target,
    records: NodeRecords,
    explanation: str,
    method: Method,
    progress: Callable[[ProgressEvent], None] | None = None,
    n_examples_per_split: int | None = None,
) -> StoreFields:
    """Store fields of a given explanation scored on a node's records."""
    if target.kind is RecordKind.TOKEN_PAIR:
        score, used = score_head(
            records,
            explanation,
            method.judge,
            n_examples_per_split=n_examples_per_split,
            progress=progress,
        )
        return head_store_fields(explanation, score, method.judge.name, used)
    scored, used = score_explanation(
        records,
        explanation,
        method.simulator,
        n_examples_per_split=n_examples_per_split,
        progress=progress,
    )
    return store_fields(scored, used)


# --------------------------------------------------------------------------------------------------
# The catalog: the writable store plus explanations shipped with a model (read-only JSONL)


class Catalog:
    """Stored explanations (SQLite, writable) merged with shipped ones (JSONL, read-only).

    A stored entry replaces a shipped one with the same key.
    """

    def __init__(
        self, store: ExplanationStore | None, shipped: Sequence[StoredExplanation] = ()
    ) -> None:
        self.store = store
        self.shipped = list(shipped)

    @staticmethod
    def load_shipped(path: str | os.PathLike[str]) -> list[StoredExplanation]:
        """Entries of a shipped JSONL file (one StoredExplanation as JSON per line)."""
        out = []
        with Path(path).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    out.append(StoredExplanation(**json.loads(line)))
        return out

    def list(
        self,
        *,
        model: str | None = None,
        sae_id: str | None = None,
        node_key: str | None = None,
        node_key_prefix: str | None = None,
        method: str | None = None,
        explainer: str | None = None,
        min_score: float | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[StoredExplanation]:
        if node_key is not None:  # any key of the node: the catalog keys units
            node_key = parse_node_key(node_key).key

        def matches(e: StoredExplanation) -> bool:
            return (
                (model is None or e.model == model)
                and (sae_id is None or e.sae_id == sae_id)
                and (node_key is None or e.node_key == node_key)
                and (node_key_prefix is None or e.node_key.startswith(node_key_prefix))
                and (method is None or e.method == method)
                and (explainer is None or e.explainer == explainer)
                and (min_score is None or (e.score is not None and e.score >= min_score))
            )

        store = self.store
        stored = (  # the store's rows under the same filters: stored(limit=, offset=)
            None
            if store is None
            else functools.partial(
                store.list,
                model=model,
                sae_id=sae_id,
                node_key=node_key,
                node_key_prefix=node_key_prefix,
                method=method,
                explainer=explainer,
                min_score=min_score,
            )
        )
        if stored is not None and not any(matches(e) for e in self.shipped):
            # only stored rows match: the store pages itself, however deep the offset
            return stored(limit=limit, offset=offset)

        # Shipped rows match too. Both listings are in key order, so one merge walk gives the
        # merged order, a stored entry replacing the shipped one with its key where they meet.
        # A row's merged position is at least its store index, so at most offset + limit stored
        # rows are needed, read in bounded pages; only the page asked for is kept.
        def key(e: StoredExplanation) -> tuple[str, str, str, str, str]:
            return (e.model, e.sae_id, e.node_key, e.method, e.explainer)

        shipped = sorted((e for e in self.shipped if matches(e)), key=key)
        if offset >= len(shipped) + (store.count() if store is not None else 0):
            return []  # past every row there is, without walking the store

        def stored_rows() -> Iterator[StoredExplanation]:
            read = 0
            while stored is not None and read < offset + limit:
                want = min(offset + limit - read, _MERGE_PAGE)
                page = stored(limit=want, offset=read)
                yield from page
                read += len(page)
                if len(page) < want:
                    return

        def merged() -> Iterator[StoredExplanation]:
            i = 0
            for row in stored_rows():
                k = key(row)
                while i < len(shipped) and key(shipped[i]) < k:
                    yield shipped[i]
                    i += 1
                if i < len(shipped) and key(shipped[i]) == k:
                    i += 1  # replaced by the stored entry
                yield row
            yield from shipped[i:]

        return list(itertools.islice(merged(), offset, offset + limit))

    def best(self, model: str, node_keys: Iterable[str]) -> dict[str, StoredExplanation]:
        """The highest-scoring explanation of each node that has one."""
        wanted = set(node_keys)
        out: dict[str, StoredExplanation] = {}
        candidates = list(self.shipped)
        if self.store is not None and wanted:  # one connection for every node
            candidates.extend(self.store.list_nodes(model, wanted, limit_per_node=50))
        for e in candidates:
            if e.model != model or e.node_key not in wanted:
                continue
            cur = out.get(e.node_key)
            if cur is None or (e.score or -2.0) > (cur.score or -2.0):
                out[e.node_key] = e
        return out

    def put(self, e: StoredExplanation) -> StoredExplanation:
        """Store an explanation (its timestamps are the store's); returns the stored row."""
        if self.store is None:
            raise NotFoundError("this server has no explanation store")
        return self.store.put(
            model=e.model,
            node_key=e.node_key,
            method=e.method,
            explainer=e.explainer,
            explanation=_bounded(e.explanation),
            score=e.score,
            score_reason=e.score_reason,
            scores=e.scores,
            records_used=e.records_used,
            sae_id=e.sae_id,
        )


def _bounded(text: str) -> str:
    """An explanation cut to :data:`~tdb_core.checks.MAX_EXPLANATION_BYTES` (a generated one can
    run long; a given one was refused before scoring)."""
    raw = text.encode("utf-8")
    if len(raw) <= checks.MAX_EXPLANATION_BYTES:
        return text
    return raw[: checks.MAX_EXPLANATION_BYTES].decode("utf-8", "ignore")
