"""SAE training data from a model: token windows, a shuffled activation stream (read with
``runner.read``) and the CE-loss callback of ``train_sae``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.datasets import iter_texts
from tdb_core.errors import InvalidArgumentError
from tdb_core.plan import Batch
from tdb_core.runner import ModelRunner
from tdb_core.sae.metrics import CeLossResult, ce_loss_result
from tdb_core.sae.model import SparseAutoencoder


@dataclass(frozen=True)
class StreamConfig:
    """How activations are drawn: windows of ``ctx_len`` tokens, ``prompts_per_pass`` windows per
    forward, a shuffle buffer of ``buffer_rows`` activations, batches of ``batch_size`` rows."""

    ctx_len: int = 64
    prompts_per_pass: int = 32
    buffer_rows: int = 16384
    batch_size: int = 1024
    seed: int = 0
    skip_first: int = 1  # drop the first position(s) of every window (attention-sink outliers)


def token_windows(
    runner: ModelRunner,
    dataset: str | os.PathLike[str] | Iterable[str],
    ctx_len: int,
    limit: int | None = None,
) -> list[tuple[int, ...]]:
    """Consecutive windows of ``ctx_len`` tokens over the dataset's documents."""
    checks.in_range(ctx_len, 2, runner.schema.dims.n_ctx, "ctx_len")
    tok = runner.tokens.tokenizer
    windows: list[tuple[int, ...]] = []
    for text in iter_texts(dataset):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - 1, ctx_len):
            w = tuple(ids[start : start + ctx_len])
            if len(w) >= 2:
                windows.append(w)
            if limit is not None and len(windows) >= limit:
                return windows
    if not windows:
        raise InvalidArgumentError("the dataset yielded no windows of at least 2 tokens")
    return windows


def _site_activations(
    runner: ModelRunner, site: str, windows: list[tuple[int, ...]], skip_first: int
) -> torch.Tensor:
    """``[n_tokens, d]`` activations of a site over windows (padding and skipped positions dropped)."""
    info = runner.schema.get(site)
    batch = Batch.plain(windows)
    x = runner.read(batch, [info.name])[info.name]
    x = x.flatten(2) if x.dim() > 3 else x  # [B, T, d]
    T = x.shape[1]
    lengths = torch.tensor(batch.lengths, device=x.device)
    pos = torch.arange(T, device=x.device)
    keep = (pos[None, :] < lengths[:, None]) & (pos[None, :] >= skip_first)
    return x[keep].float()


def activation_stream(
    runner: ModelRunner, site: str, windows: list[tuple[int, ...]], config: StreamConfig
) -> Iterator[torch.Tensor]:
    """An endless stream of shuffled ``[batch_size, d]`` activation batches (epochs repeat)."""
    g = torch.Generator().manual_seed(config.seed)
    buffer: list[torch.Tensor] = []
    rows = 0
    while True:
        order = torch.randperm(len(windows), generator=g).tolist()
        for start in range(0, len(order), config.prompts_per_pass):
            chunk = [windows[i] for i in order[start : start + config.prompts_per_pass]]
            acts = _site_activations(runner, site, chunk, config.skip_first).cpu()
            buffer.append(acts)
            rows += acts.shape[0]
            if rows >= config.buffer_rows:
                pool = torch.cat(buffer)
                pool = pool[torch.randperm(pool.shape[0], generator=g)]
                n_out = (
                    pool.shape[0] // 2 // config.batch_size
                ) * config.batch_size or config.batch_size
                for b in range(0, min(n_out, pool.shape[0]), config.batch_size):
                    yield pool[b : b + config.batch_size]
                rest = pool[n_out:]
                buffer, rows = [rest], rest.shape[0]


def ce_evaluator(
    runner: ModelRunner, site: str, windows: list[tuple[int, ...]], skip_first: int = 1
) -> Callable[[SparseAutoencoder], CeLossResult]:
    """A callback giving clean, spliced (reconstruction, no error term) and zero-ablated
    next-token cross-entropy on held-out windows, for ``train_sae``'s ``ce_eval``."""
    info = runner.schema.get(site)
    batch = Batch.plain(windows)
    n = len(windows)

    def ce(run_runner: ModelRunner, ivs: tuple[specs.Intervention, ...]) -> float:
        planner = run_runner.planner(batch)
        for iv in ivs:
            planner.add_intervention(iv, range(n))
        with torch.no_grad():
            logits = run_runner.run(batch, planner.plan).logits.float()  # [B, T, V]
        total, count = 0.0, 0
        for i, w in enumerate(windows):
            lp = logits[i, : len(w) - 1].log_softmax(-1)
            tgt = torch.tensor(w[1:], device=lp.device)
            nll = -lp.gather(-1, tgt[:, None])[:, 0]
            total += float(nll[skip_first:].sum()) if len(w) - 1 > skip_first else 0.0
            count += max(len(w) - 1 - skip_first, 0)
        return total / max(count, 1)

    clean = ce(runner, ())
    zero = ce(runner, (specs.Intervention(info.name, specs.Zero(), positions=None),))

    def evaluate(sae: SparseAutoencoder) -> CeLossResult:
        scratch = ModelRunner(runner.loaded, runner.limits)
        att = scratch.saes.attach("training", sae, "training", site)
        spliced = ce(scratch, (specs.Intervention(att.error, specs.Zero()),))
        return ce_loss_result(clean, spliced, zero)

    if not math.isfinite(clean):
        raise InvalidArgumentError("clean cross-entropy is not finite on the evaluation windows")
    return evaluate
