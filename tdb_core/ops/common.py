"""Pieces several operations share: captured results, next-token top-k, logit differences."""

from __future__ import annotations

import functools

import torch

from tdb_core import specs
from tdb_core.hooks import ResolvedCapture
from tdb_core.tokens import Tokens


def capture_result(c: ResolvedCapture) -> specs.CaptureResult:
    """The domain result of a capture that a forward pass filled in."""
    assert c.values is not None, "the pass did not fill this capture"
    index = c.index
    if index.pos is not None:
        positions = index.pos.cpu()
    else:
        T = c.values.shape[1 + c.site.kind.dims.index(c.site.kind.pos_dim)]
        positions = _every_position(c.n_rows, T)
    dims = list(c.site.kind.dims)
    if c.top_k is not None:
        dims[-1] = "top_k"
    return specs.CaptureResult(
        site=c.site.name,
        dims=tuple(dims),
        values=c.values,
        indices=c.indices,
        positions=positions,
        units=c.units_list,
    )


@functools.lru_cache(maxsize=64)
def _every_position(rows: int, T: int) -> torch.Tensor:
    """``[rows, T]`` positions 0..T-1 of every row: one shared tensor per shape (a pass captures
    hundreds of whole sites; results only read it)."""
    return torch.arange(T).expand(rows, T).contiguous()


def top_logits(
    tokens: Tokens, at: torch.Tensor, positions: list[list[int]], k: int
) -> tuple[tuple[specs.TopLogits, ...], ...]:
    """Top-k next tokens per prompt and position from logits ``[B, P, vocab]``."""
    if k == 0:
        return tuple(() for _ in positions)
    probs = at.softmax(-1)
    vals, idx = at.topk(min(k, at.shape[-1]), dim=-1)  # [B, P, k]
    p = probs.gather(-1, idx)
    vals, idx, p = vals.cpu(), idx.cpu(), p.cpu()
    return tuple(
        tuple(
            specs.TopLogits(
                position=positions[b][j],
                token_ids=tuple(idx[b, j].tolist()),
                tokens=tokens.strings(idx[b, j].tolist()),
                logits=tuple(vals[b, j].tolist()),
                probs=tuple(p[b, j].tolist()),
            )
            for j in range(len(positions[b]))
        )
        for b in range(len(positions))
    )


def logit_diff(
    logits: torch.Tensor, target: tuple[int, ...], distractor: tuple[int, ...]
) -> torch.Tensor:
    """Mean logit over targets minus mean over distractors, on the last axis of ``logits``."""
    return logits[..., list(target)].mean(-1) - logits[..., list(distractor)].mean(-1)


def prompt_tokens(
    tokens: Tokens, rows: tuple[tuple[int, ...], ...]
) -> tuple[specs.PromptTokens, ...]:
    """Each row's ids with its token strings."""
    return tuple(specs.PromptTokens(r, tokens.strings(r)) for r in rows)
