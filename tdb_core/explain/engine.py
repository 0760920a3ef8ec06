"""Explaining the nodes of a served model: node keys, mining with the model runner, explainer
methods, and the catalog of stored (and shipped) explanations.

Nodes are named by their keys (:mod:`tdb_core.nodes`): ``blocks.1.mlp.hook_post[42]`` (a
neuron), ``sae.ID.hook_sae_acts_post[7]`` (an SAE latent), any per-token site with a unit axis
(``blocks.0.hook_resid_post[5]``), or ``blocks.1.attn.hook_pattern[3]`` (attention head 3,
explained over token pairs by its attention weights). Any node key is accepted and its unit-level
node explained: a node-table row's ``blocks.1.mlp.hook_post[42,pos=5]`` or
``blocks.1.attn.hook_pattern[3,pos=14,key=2]`` explains neuron 42 or head 3; ``[head=3]``-style
spellings are stored in the canonical ``[3]`` form.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from tdb_core import cancel, nodes
from tdb_core.errors import InvalidArgumentError, NotFoundError, OutOfRangeError
from tdb_core.explain.explainers import (
    BaselineExplainer,
    BaselineHeadExplainer,
    Explainer,
    LLMExplainer,
    LLMHeadExplainer,
)
from tdb_core.explain.heads import BaselinePairJudge, LLMPairJudge, PairJudge
from tdb_core.explain.mining import MiningConfig, NodeRef, mine_head_records, mine_records
from tdb_core.explain.pipeline import (
    ProgressEvent,
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
from tdb_core.plan import Batch
from tdb_core.runner import ModelRunner
from tdb_core.schema import SiteInfo

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
            f"node '{text}' names no unit; explain a unit, e.g. 'blocks.1.mlp.hook_post[42]', "
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
    if count is None or not 0 <= unit < count:
        raise OutOfRangeError(
            f"unit {unit} is out of range for '{site.name}' (0..{(count or 1) - 1})"
        )
    return Target(node.key, site, unit, kind, node.sae_id or "")


@dataclass(frozen=True)
class MiningOptions:
    window_len: int = 64
    top_k: int = 20
    n_random: int = 15
    max_windows: int | None = 2000
    batch_size: int = 16
    seed: int = 0


def _run_site(
    runner: ModelRunner, ids: torch.Tensor, sites: Iterable[str]
) -> dict[str, torch.Tensor]:
    """One hooked pass over token ids ``[B, T]`` (right padding is harmless: the model is causal)."""
    rows = tuple(tuple(int(t) for t in r) for r in ids.tolist())
    batch = Batch(rows, len(rows), 0, 0)
    planner = runner.planner(batch)
    got: dict[str, torch.Tensor] = {}

    def keep(site: str) -> Callable[[torch.Tensor], None]:
        return lambda t: got.__setitem__(site, t.detach())

    for s in sites:
        planner.plan.observers[s] = keep(s)
    with torch.no_grad():
        runner.run(batch, planner.plan)
    return got


def mine(
    runner: ModelRunner,
    targets: Sequence[Target],
    dataset: str | os.PathLike[str] | Iterable[str],
    options: MiningOptions,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[NodeRecords]:
    """Records of every target in one pass over the dataset per record kind (tokens, pairs)."""
    if options.window_len < 2 or options.window_len > runner.schema.dims.n_ctx:
        raise InvalidArgumentError(f"window_len must be in 2..{runner.schema.dims.n_ctx}")
    tok = runner.loaded.tokenizer
    pad = runner.loaded.tokenizer.pad_token_id
    config = MiningConfig(
        window_len=options.window_len,
        batch_size=options.batch_size,
        top_k=options.top_k,
        n_random=options.n_random,
        seed=options.seed,
        max_windows=options.max_windows,
        pad_id=pad if pad is not None else 0,
    )

    def batch_done(done: int, total: int) -> None:
        cancel.check()
        if on_batch is not None:
            on_batch(done, total)

    out: dict[str, NodeRecords] = {}
    tokens = [t for t in targets if t.kind is RecordKind.TOKEN]
    if tokens:
        sites = list(dict.fromkeys(t.site.name for t in tokens))

        def activations(ids: torch.Tensor) -> torch.Tensor:
            got = _run_site(runner, ids, sites)
            return torch.stack(
                [got[t.site.name][..., t.unit] for t in tokens], dim=-1
            ).float()  # [B, T, N]

        for rec in mine_records(
            dataset,
            tok,
            activations,
            [t.ref for t in tokens],
            config,
            progress=False,
            on_batch=batch_done,
        ):
            out[rec.node_key] = rec
    heads = [t for t in targets if t.kind is RecordKind.TOKEN_PAIR]
    if heads:
        sites = list(dict.fromkeys(t.site.name for t in heads))

        def pairs(ids: torch.Tensor) -> torch.Tensor:
            got = _run_site(runner, ids, sites)
            return torch.stack(
                [got[t.site.name][:, t.unit] for t in heads], dim=1
            ).float()  # [B, N, T, T]

        for rec in mine_head_records(
            dataset, tok, pairs, [t.ref for t in heads], config, progress=False, on_batch=batch_done
        ):
            out[rec.node_key] = rec
    return [out[t.key] for t in targets]


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


def explain_target(
    target: Target,
    records: NodeRecords,
    method: Method,
    progress: Callable[[ProgressEvent], None] | None = None,
    n_examples_per_split: int | None = None,
) -> tuple[str, dict[str, Any], str]:
    """(explainer name, store fields, best explanation) for one mined node."""
    if target.kind is RecordKind.TOKEN_PAIR:
        res = explain_head(
            records,
            method.head_explainer,
            method.judge,
            n_examples_per_split=n_examples_per_split,
            progress=progress,
        )
        fields = head_store_fields(res.best_explanation, res.best, res.judge, res.records_used)
        return res.explainer, asdict(fields), res.best_explanation
    res_n = explain_node(
        records,
        method.explainer,
        method.simulator,
        n_examples_per_split=n_examples_per_split,
        progress=progress,
    )
    return (
        res_n.explainer,
        asdict(store_fields(res_n.best, res_n.records_used)),
        res_n.best.explanation,
    )


def score_target(
    target: Target,
    records: NodeRecords,
    explanation: str,
    method: Method,
    progress: Callable[[ProgressEvent], None] | None = None,
    n_examples_per_split: int | None = None,
) -> dict[str, Any]:
    """Store fields of a given explanation scored on a node's records."""
    if target.kind is RecordKind.TOKEN_PAIR:
        score, used = score_head(
            records,
            explanation,
            method.judge,
            n_examples_per_split=n_examples_per_split,
            progress=progress,
        )
        return asdict(head_store_fields(explanation, score, method.judge.name, used))
    scored, used = score_explanation(
        records,
        explanation,
        method.simulator,
        n_examples_per_split=n_examples_per_split,
        progress=progress,
    )
    return asdict(store_fields(scored, used))


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
        stored = (
            []
            if self.store is None
            else self.store.list(
                model=model,
                sae_id=sae_id,
                node_key=node_key,
                node_key_prefix=node_key_prefix,
                method=method,
                explainer=explainer,
                min_score=min_score,
                limit=limit + offset,
                offset=0,
            )
        )

        def key(e: StoredExplanation) -> tuple[str, str, str, str, str]:
            return (e.model, e.sae_id, e.node_key, e.method, e.explainer)

        seen = {key(e) for e in stored}
        shipped = [
            e
            for e in self.shipped
            if key(e) not in seen
            and (model is None or e.model == model)
            and (sae_id is None or e.sae_id == sae_id)
            and (node_key is None or e.node_key == node_key)
            and (node_key_prefix is None or e.node_key.startswith(node_key_prefix))
            and (method is None or e.method == method)
            and (explainer is None or e.explainer == explainer)
            and (min_score is None or (e.score is not None and e.score >= min_score))
        ]
        merged = sorted(
            stored + shipped, key=lambda e: (e.model, e.sae_id, e.node_key, e.method, e.explainer)
        )
        return merged[offset : offset + limit]

    def best(self, model: str, node_keys: Iterable[str]) -> dict[str, StoredExplanation]:
        """The highest-scoring explanation of each node that has one."""
        wanted = set(node_keys)
        out: dict[str, StoredExplanation] = {}
        candidates = list(self.shipped)
        if self.store is not None and wanted:
            for k in wanted:
                candidates.extend(self.store.list(model=model, node_key=k, limit=50))
        for e in candidates:
            if e.model != model or e.node_key not in wanted:
                continue
            cur = out.get(e.node_key)
            if cur is None or (e.score or -2.0) > (cur.score or -2.0):
                out[e.node_key] = e
        return out

    def put(self, **fields: Any) -> StoredExplanation:
        if self.store is None:
            raise NotFoundError("this server has no explanation store")
        return self.store.put(**fields)
