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

    out: dict[str, NodeRecords] = {}
    for kind, miner, select, axis in _KINDS:
        group = [t for t in targets if t.kind is kind]
        if not group:
            continue
        values = _reader(runner, group, select, axis)
        refs = [t.ref for t in group]
        for rec in miner(
            spec.dataset, tok, values, refs, config, progress=False, on_batch=batch_done
        ):
            out[rec.node_key] = rec
    return tuple(out[t.key] for t in targets)


Select = Callable[[torch.Tensor, int], torch.Tensor]

# Per record kind: the miner, how one node's values are cut from its site, and the node axis:
# per-token units give [B, T, N] (site [B, T, units]), heads [B, N, T_q, T_k] (pattern [B, H, T, T]).
_KINDS: tuple[tuple[RecordKind, Callable[..., list[NodeRecords]], Select, int], ...] = (
    (RecordKind.TOKEN, mine_records, lambda x, u: x[..., u], -1),
    (RecordKind.TOKEN_PAIR, mine_head_records, lambda x, u: x[:, u], 1),
)


def _reader(
    runner: ModelRunner, group: list[Target], select: Select, axis: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """token ids ``[B, T]`` -> the group's values, read in one pass (right padding is harmless:
    the model is causal)."""
    sites = list(dict.fromkeys(t.site.name for t in group))

    def values(ids: torch.Tensor) -> torch.Tensor:
        got = runner.read(Batch.plain(ids.tolist()), sites)
        return torch.stack([select(got[t.site.name], t.unit) for t in group], dim=axis).float()

    return values
