"""Mining activation records for many nodes in one pass over a text dataset.

Model-agnostic: the caller supplies a tokenizer and an activation function, so the same miner
serves MLP neurons, SAE latents, residual channels (``activations_fn: [B, T] -> [B, T, N]``) and
attention heads (``pair_activations_fn: [B, T] -> [B, N, T_q, T_k]``, e.g. attention weights or
per-pair write norms).

Procedure:

1. Texts (read by ``tdb_core.datasets.iter_texts``: a list, or a file — JSONL with a ``"text"``
   field, or plain text with one document per paragraph, or per line) are tokenized and cut into
   consecutive windows of ``window_len`` tokens (a document's tail is a shorter window). With ``bos_id``, every window starts with that token; its position is fed to the
   model but left out of records and statistics.
2. Windows are run in batches, right-padded with ``pad_id``. The activation function must be
   causal (true of decoder LMs): padding after a position must not change its activation. Token
   ids are passed on the CPU; the function may return its output on any device, and the running
   top-k / reservoir / moment bookkeeping then stays on that device (GPU mining needs no copies
   until the records are built).
3. Per node, a running top-k of windows by their max activation (merged each batch by a stable
   sort, so ties go to the earliest window and batching never changes the result) and a reservoir
   sample (Algorithm R, seeded) of ``n_random`` windows. The random windows are shared by all
   nodes of one pass (the original samples per neuron; for scoring a single node this makes no
   difference). Density (fraction of positions > 0), max, and the mean / variance / skewness /
   excess kurtosis of all activations are accumulated in float64.
4. Each node gets a :class:`~tdb_core.explain.records.NodeRecords` holding the original
   ``NeuronRecord`` (top records sorted by max activation, descending).
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from tdb_core.datasets import PlainTextSplit, iter_texts
from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.records import (
    ActivationRecord,
    NeuronId,
    NeuronRecord,
    NodeRecords,
    RecordKind,
    n_token_pairs,
)

TokenActivationsFn = Callable[[torch.Tensor], torch.Tensor]
"""token ids [B, T] -> activations [B, T, N] for the N nodes being mined."""

PairActivationsFn = Callable[[torch.Tensor], torch.Tensor]
"""token ids [B, T] -> per-pair activations [B, N, T_q, T_k] for N heads (only k <= q is read)."""

BatchCallback = Callable[[int, int], None]
"""(windows done, windows in total), called after each batch; an exception it raises stops mining."""


@dataclass(frozen=True)
class NodeRef:
    """A node to mine: its key (our id string) and its original-format id (layer, index)."""

    key: str
    layer_index: int
    index: int


@dataclass(frozen=True)
class MiningConfig:
    """Windowing, batching and sampling settings."""

    window_len: int = 64
    batch_size: int = 8
    top_k: int = 20
    n_random: int = 15
    seed: int = 0
    max_windows: int | None = None
    bos_id: int | None = None
    pad_id: int = 0
    plain_text_split: PlainTextSplit = PlainTextSplit.AUTO


@dataclass(frozen=True)
class TextTokenizer:
    """The two tokenizer functions the miner needs: text -> ids, and one id -> its string."""

    encode: Callable[[str], Sequence[int]]
    token_str: Callable[[int], str]


def as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """A TextTokenizer as is, or one wrapping a Hugging Face tokenizer (no special tokens added)."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    if callable(getattr(tokenizer, "encode", None)) and callable(
        getattr(tokenizer, "decode", None)
    ):
        return TextTokenizer(
            encode=lambda text: tokenizer.encode(text, add_special_tokens=False),
            token_str=lambda token_id: tokenizer.decode([token_id]),
        )
    raise InvalidArgumentError(
        f"cannot tokenize with a {type(tokenizer).__name__}; give a TextTokenizer or an object with "
        "encode(text) and decode(ids) (a Hugging Face tokenizer)"
    )


# ------------------------------------------------------------------------------------------------
# Windows


def tokenize_windows(
    dataset: str | os.PathLike[str] | Iterable[str], tokenizer: Any, config: MiningConfig
) -> list[list[int]]:
    """Token-id windows of the dataset (BOS first when configured), at most ``max_windows``."""
    _check_config(config)
    tok = as_text_tokenizer(tokenizer)
    windows: list[list[int]] = []
    prefix = [] if config.bos_id is None else [config.bos_id]
    for text in iter_texts(dataset, plain_text_split=config.plain_text_split):
        ids = [int(i) for i in tok.encode(text)]
        for start in range(0, len(ids), config.window_len):
            windows.append(prefix + ids[start : start + config.window_len])
            if config.max_windows is not None and len(windows) >= config.max_windows:
                return windows
    if not windows:
        raise InvalidArgumentError(
            "the dataset yielded no tokens; it must contain at least one non-empty text"
        )
    return windows


def _check_config(config: MiningConfig) -> None:
    checks = {
        "window_len": config.window_len >= 1,
        "batch_size": config.batch_size >= 1,
        "top_k": config.top_k >= 1,
        "n_random": config.n_random >= 0,
        "max_windows": config.max_windows is None or config.max_windows >= 1,
    }
    for name, ok in checks.items():
        if not ok:
            raise InvalidArgumentError(
                f"mining setting {name}={getattr(config, name)} is out of range; window_len, batch_size, "
                "top_k and max_windows must be >= 1 and n_random >= 0"
            )


# ------------------------------------------------------------------------------------------------
# The one-pass miner


@dataclass
class _State:
    """Running top-k, reservoir and moment sums of one mining pass (mutable, private)."""

    top_vals: torch.Tensor  # [N, K] window max, -inf where empty
    top_win: torch.Tensor  # [N, K] window index, -1 where empty
    top_acts: torch.Tensor  # [N, K, P] activations of those windows (0 outside the window)
    res_win: list[int]
    res_acts: torch.Tensor  # [R, N, P]
    count_pos: torch.Tensor  # [N] float64
    sums: torch.Tensor  # [4, N] float64: sums of d, d^2, d^3, d^4 with d = a - shift
    peak: torch.Tensor  # [N]
    shift: torch.Tensor | None = None  # [N] mean of the first batch
    n_positions: int = 0
    seen: int = 0


def _mine(
    windows: list[list[int]],
    positions_fn: Callable[[torch.Tensor], torch.Tensor],
    kind: RecordKind,
    nodes: Sequence[NodeRef],
    tok: TextTokenizer,
    config: MiningConfig,
    progress: bool,
    on_batch: BatchCallback | None,
) -> list[NodeRecords]:
    start = 0 if config.bos_id is None else 1
    t_max = max(len(w) for w in windows)
    p_max = t_max if kind is RecordKind.TOKEN else n_token_pairs(t_max)
    k = min(config.top_k, len(windows))
    r = min(config.n_random, len(windows))
    state: _State | None = None
    rng = random.Random(config.seed)
    bar = tqdm(
        total=len(windows),
        unit="window",
        desc="mining records",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for b0 in range(0, len(windows), config.batch_size):
            batch = windows[b0 : b0 + config.batch_size]
            state = _mine_batch(
                batch, b0, positions_fn, kind, state, start, p_max, k, r, rng, config.pad_id
            )
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(b0 + len(batch), len(windows))
    finally:
        bar.close()
    if state is None:  # unreachable: tokenize_windows never returns an empty list
        raise InvalidArgumentError("the dataset yielded no windows")
    return _build_records(windows, kind, nodes, tok, state, start)


def _new_state(n_nodes: int, k: int, r: int, p_max: int, device: torch.device) -> _State:
    """Empty running state, on the device the activations come from (bookkeeping stays there)."""
    return _State(
        top_vals=torch.full((n_nodes, k), -math.inf, device=device),
        top_win=torch.full((n_nodes, k), -1, dtype=torch.long, device=device),
        top_acts=torch.zeros(n_nodes, k, p_max, device=device),
        res_win=[-1] * r,
        res_acts=torch.zeros(r, n_nodes, p_max, device=device),
        count_pos=torch.zeros(n_nodes, dtype=torch.float64, device=device),
        sums=torch.zeros(4, n_nodes, dtype=torch.float64, device=device),
        peak=torch.full((n_nodes,), -math.inf, device=device),
    )


def _mine_batch(
    batch: list[list[int]],
    b0: int,
    positions_fn: Callable[[torch.Tensor], torch.Tensor],
    kind: RecordKind,
    state: _State | None,
    start: int,
    p_max: int,
    k: int,
    r: int,
    rng: random.Random,
    pad_id: int,
) -> _State:
    b = len(batch)
    lengths = torch.tensor([len(w) for w in batch])  # [b]
    t_b = int(lengths.max())
    ids = torch.full((b, t_b), pad_id, dtype=torch.long)  # [b, T]
    for i, window in enumerate(batch):
        ids[i, : len(window)] = torch.tensor(window, dtype=torch.long)
    with torch.no_grad():
        acts = positions_fn(ids)  # [b, N, P]
    n_nodes, p_b, device = acts.shape[1], acts.shape[2], acts.device
    if state is None:
        state = _new_state(n_nodes, k, r, p_max, device)
    lengths = lengths.to(device)
    if kind is RecordKind.TOKEN:
        pos = torch.arange(t_b, device=device)
        mask = (pos[None, :] < lengths[:, None]) & (pos[None, :] >= start)  # [b, P]
    else:
        q_idx, k_idx = torch.tril_indices(
            t_b, t_b, device=device
        )  # [P] each, row-major lower triangle
        mask = (q_idx[None, :] < lengths[:, None]) & (k_idx[None, :] >= start)  # [b, P]
    valid = mask[:, None, :]  # [b, 1, P]
    acts = acts.contiguous().masked_fill(~valid, 0.0)  # [b, N, P], 0 outside the windows
    if not bool(torch.isfinite(acts).all()):
        raise FailedPreconditionError("the activation function returned NaN or infinite values")
    win_max = acts.masked_fill(~valid, -math.inf).amax(dim=-1)  # [b, N]

    n_valid = int(mask.sum())
    if state.shift is None:  # moments are summed around a per-node shift to avoid cancellation
        state.shift = acts.sum(dim=(0, 2), dtype=torch.float64).div(n_valid).float()  # [N]
    centred = (acts - state.shift[None, :, None]).masked_fill(~valid, 0.0)  # [b, N, P]
    squared = centred * centred  # [b, N, P]
    state.count_pos += (acts > 0).sum(dim=(0, 2), dtype=torch.float64)
    state.sums[0] += centred.sum(dim=(0, 2), dtype=torch.float64)
    state.sums[1] += squared.sum(dim=(0, 2), dtype=torch.float64)
    state.sums[2] += (squared * centred).sum(dim=(0, 2), dtype=torch.float64)
    state.sums[3] += (squared * squared).sum(dim=(0, 2), dtype=torch.float64)
    state.n_positions += n_valid
    state.peak = torch.maximum(state.peak, win_max.amax(dim=0))

    if p_b == p_max:
        padded = acts  # [b, N, P_max]
    else:
        padded = torch.zeros(b, n_nodes, p_max, device=device)  # [b, N, P_max]
        padded[:, :, :p_b] = acts
    # Merge into the running top-k only the nodes where a new window beats the current k-th best
    # (after the first batches that is a small fraction). A stable descending sort keeps earlier
    # windows first among equal maxima, so batching never changes the result.
    rows = (win_max > state.top_vals[None, :, -1]).any(dim=0).nonzero().squeeze(1)  # [M]
    if rows.numel() > 0:
        new_win = torch.arange(b0, b0 + b, device=device).expand(rows.numel(), b)  # [M, b]
        cand_vals = torch.cat([state.top_vals[rows], win_max.T[rows]], dim=1)  # [M, K + b]
        cand_win = torch.cat([state.top_win[rows], new_win], dim=1)  # [M, K + b]
        cand_acts = torch.cat(
            [state.top_acts[rows], padded.transpose(0, 1)[rows]], dim=1
        )  # [M, K + b, P_max]
        sorted_vals, order = cand_vals.sort(dim=1, descending=True, stable=True)  # [M, K + b]
        best = order[:, :k]  # [M, K]
        state.top_vals[rows] = sorted_vals[:, :k]
        state.top_win[rows] = cand_win.gather(1, best)
        state.top_acts[rows] = cand_acts.gather(1, best[:, :, None].expand(-1, -1, p_max))

    for i in range(b):  # Algorithm R over windows
        slot = state.seen if state.seen < r else rng.randrange(state.seen + 1)
        if slot < r:
            state.res_win[slot] = b0 + i
            state.res_acts[slot] = padded[i]
        state.seen += 1
    return state


def _build_records(
    windows: list[list[int]],
    kind: RecordKind,
    nodes: Sequence[NodeRef],
    tok: TextTokenizer,
    state: _State,
    start: int,
) -> list[NodeRecords]:
    token_cache: dict[int, tuple[str, ...]] = {}

    def tokens_of(w: int) -> tuple[str, ...]:
        if w not in token_cache:
            token_cache[w] = tuple(tok.token_str(i) for i in windows[w][start:])
        return token_cache[w]

    pair_index: dict[int, list[int]] = {}

    def record(w: int, vector: list[float]) -> ActivationRecord:
        length = len(windows[w])
        if kind is RecordKind.TOKEN:
            return ActivationRecord(tokens=tokens_of(w), activations=tuple(vector[start:length]))
        if length not in pair_index:  # flat indices of the pairs of positions start..length-1
            pair_index[length] = [
                q * (q + 1) // 2 + key for q in range(start, length) for key in range(start, q + 1)
            ]
        return ActivationRecord(
            tokens=tokens_of(w), activations=tuple(vector[i] for i in pair_index[length])
        )

    n = state.n_positions
    shift = (
        state.shift.double()
        if state.shift is not None
        else torch.zeros(len(nodes), dtype=torch.float64)
    )
    d1, d2, d3, d4 = (state.sums[i] / n for i in range(4))  # [N] each: raw moments of a - shift
    mean = shift + d1  # [N]
    variance = (d2 - d1**2).clamp(min=0.0)  # [N]
    third = d3 - 3 * d1 * d2 + 2 * d1**3  # [N]
    fourth = d4 - 4 * d1 * d3 + 6 * d1**2 * d2 - 3 * d1**4  # [N]
    top_acts, top_win = state.top_acts.tolist(), state.top_win.tolist()  # [N][K][P], [N][K]
    res_acts = state.res_acts.tolist()  # [R][N][P]
    results = []
    for j, node in enumerate(nodes):
        tops = tuple(record(w, top_acts[j][slot]) for slot, w in enumerate(top_win[j]) if w >= 0)
        randoms = tuple(
            record(w, res_acts[slot][j]) for slot, w in enumerate(state.res_win) if w >= 0
        )
        var = float(variance[j])
        has_spread = var > 1e-12 * max(1.0, float(d2[j]))
        neuron_record = NeuronRecord(
            neuron_id=NeuronId(layer_index=node.layer_index, neuron_index=node.index),
            random_sample=randoms,
            mean=float(mean[j]),
            variance=var,
            skewness=float(third[j] / var**1.5) if has_spread else None,
            kurtosis=float(fourth[j] / var**2 - 3.0) if has_spread else None,
            most_positive_activation_records=tops,
        )
        results.append(
            NodeRecords(
                node_key=node.key,
                kind=kind,
                record=neuron_record,
                density=float(state.count_pos[j]) / n,
                max_activation=float(state.peak[j]),
                n_positions=n,
            )
        )
    return results


def _check_nodes(nodes: Sequence[NodeRef]) -> None:
    if not nodes:
        raise InvalidArgumentError("no nodes to mine; give at least one NodeRef")
    keys = [n.key for n in nodes]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise InvalidArgumentError(f"node keys must be unique; repeated: {duplicates}")


def mine_records(
    dataset: str | os.PathLike[str] | Iterable[str],
    tokenizer: Any,
    activations_fn: TokenActivationsFn,
    nodes: Sequence[NodeRef],
    config: MiningConfig | None = None,
    *,
    progress: bool = True,
    on_batch: BatchCallback | None = None,
) -> list[NodeRecords]:
    """Top-activating and random records of every node in ``nodes`` (index j = output channel j).

    ``activations_fn(ids [B, T]) -> [B, T, len(nodes)]``; ``config`` defaults to ``MiningConfig()``.
    ``on_batch(windows_done, windows_total)`` runs after every batch (raise from it to cancel).
    """
    _check_nodes(nodes)
    config = config or MiningConfig()
    windows = tokenize_windows(dataset, tokenizer, config)

    def positions_fn(ids: torch.Tensor) -> torch.Tensor:
        out = activations_fn(ids)
        expected = (ids.shape[0], ids.shape[1], len(nodes))
        if tuple(out.shape) != expected:
            raise InvalidArgumentError(
                f"activations_fn returned shape {tuple(out.shape)} for token ids {tuple(ids.shape)}; "
                f"expected [batch, tokens, nodes] = {list(expected)}"
            )
        return out.detach().float().transpose(1, 2)  # [B, N, T], on the function's device

    return _mine(
        windows,
        positions_fn,
        RecordKind.TOKEN,
        nodes,
        as_text_tokenizer(tokenizer),
        config,
        progress,
        on_batch,
    )


def mine_head_records(
    dataset: str | os.PathLike[str] | Iterable[str],
    tokenizer: Any,
    pair_activations_fn: PairActivationsFn,
    nodes: Sequence[NodeRef],
    config: MiningConfig | None = None,
    *,
    progress: bool = True,
    on_batch: BatchCallback | None = None,
) -> list[NodeRecords]:
    """Token-pair records of attention heads; records flatten (query, key<=query) as TDB does.

    ``pair_activations_fn(ids [B, T]) -> [B, len(nodes), T, T]`` (query, key); ``config`` defaults
    to ``MiningConfig()``. ``on_batch(windows_done, windows_total)`` runs after every batch.
    """
    _check_nodes(nodes)
    config = config or MiningConfig()
    windows = tokenize_windows(dataset, tokenizer, config)

    def positions_fn(ids: torch.Tensor) -> torch.Tensor:
        out = pair_activations_fn(ids)
        b, t = ids.shape
        expected = (b, len(nodes), t, t)
        if tuple(out.shape) != expected:
            raise InvalidArgumentError(
                f"pair_activations_fn returned shape {tuple(out.shape)} for token ids {tuple(ids.shape)}; "
                f"expected [batch, heads, query, key] = {list(expected)}"
            )
        q_idx, k_idx = torch.tril_indices(t, t, device=out.device)  # [P] each
        return out.detach().float()[:, :, q_idx, k_idx]  # [B, N, P], on the function's device

    return _mine(
        windows,
        positions_fn,
        RecordKind.TOKEN_PAIR,
        nodes,
        as_text_tokenizer(tokenizer),
        config,
        progress,
        on_batch,
    )
