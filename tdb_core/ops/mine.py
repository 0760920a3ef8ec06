"""Mine: activation records of many nodes in one pass over a dataset per record kind.

Per-token nodes (neurons, latents, channels) and attention heads (token pairs) are read with
``runner.read``; the bookkeeping (top windows, random sample, moments) is
:mod:`tdb_core.explain.mining`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from tdb_core import cancel, checks
from tdb_core.explain.engine import Target
from tdb_core.explain.mining import MiningConfig, mine_head_records, mine_records
from tdb_core.explain.records import NodeRecords, RecordKind
from tdb_core.plan import Batch
from tdb_core.runner import ModelRunner

Dataset = str | os.PathLike[str] | Iterable[str]
"""A file (JSONL with a ``"text"`` field, or plain text) or the texts themselves."""


@dataclass(frozen=True)
class MiningOptions:
    window_len: int = 64
    top_k: int = 20
    n_random: int = 15
    max_windows: int | None = 2000
    batch_size: int = 16
    seed: int = 0


@dataclass(frozen=True)
class MineSpec:
    """Nodes to mine (parsed keys) and where: a dataset and how to window and sample it."""

    targets: tuple[Target, ...]
    dataset: Dataset
    options: MiningOptions = MiningOptions()


def mine(
    runner: ModelRunner, spec: MineSpec, on_batch: Callable[[int, int], None] | None = None
) -> tuple[NodeRecords, ...]:
    """Records of every target, in the targets' order. ``on_batch(done, total)`` follows the
    windows; the request's cancellation is checked after every batch."""
    options, targets = spec.options, spec.targets
    checks.non_empty(targets, "nodes", "'blocks.0.mlp.hook_post[5]'")
    checks.in_range(options.window_len, 2, runner.schema.dims.n_ctx, "window_len")
    checks.top_k(options.top_k, lo=1, what="mining top_k")
    tok = runner.tokens.tokenizer
    pad = tok.pad_token_id
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

    def read(ids: torch.Tensor, sites: list[str]) -> dict[str, torch.Tensor]:
        # right padding is harmless: the model is causal
        return runner.read(Batch.plain(ids.tolist()), sites)

    out: dict[str, NodeRecords] = {}
    tokens = [t for t in targets if t.kind is RecordKind.TOKEN]
    if tokens:
        token_sites = list(dict.fromkeys(t.site.name for t in tokens))

        def activations(ids: torch.Tensor) -> torch.Tensor:
            got = read(ids, token_sites)
            return torch.stack(
                [got[t.site.name][..., t.unit] for t in tokens], dim=-1
            ).float()  # [B, T, N]

        for rec in mine_records(
            spec.dataset,
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
        head_sites = list(dict.fromkeys(t.site.name for t in heads))

        def pairs(ids: torch.Tensor) -> torch.Tensor:
            got = read(ids, head_sites)
            return torch.stack(
                [got[t.site.name][:, t.unit] for t in heads], dim=1
            ).float()  # [B, N, T, T]

        for rec in mine_head_records(
            spec.dataset,
            tok,
            pairs,
            [t.ref for t in heads],
            config,
            progress=False,
            on_batch=batch_done,
        ):
            out[rec.node_key] = rec
    return tuple(out[t.key] for t in targets)
