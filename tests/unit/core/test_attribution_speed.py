"""The node table's faster paths give exactly what the straightforward ones gave: ranking without
concatenating every column (checked against the concatenate-and-topk ranking it replaced, ties,
NaN and infinities included), and neuron input tokens from the normalized embedding kept on the
runner (recomputed when the embedding changes)."""

from __future__ import annotations

import math

import pytest
import torch

from tdb_core import specs
from tdb_core.nodes import NodeKind, embedding
from tdb_core.ops import attribute as attribution
from tdb_core.ops.attribute import (
    COLUMNS,
    TOP_ONLY,
    AttributeSpec,
    LogitDiffLoss,
    _Family,
    _neuron_input_tokens,
    _pick,
    _topk_union,
    attribute,
    compute_columns,
)

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _reference_topk_union(
    fams: list[_Family], k: int, n_rows: int
) -> list[tuple[int, tuple[int, ...]]]:
    """The ranking as it was before the fast path: every column concatenated, one topk each."""
    sizes = [f.columns["activation"][0].numel() for f in fams]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    chosen: list[tuple[int, tuple[int, ...]]] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for col in COLUMNS:
        flat = torch.cat([f.columns[col].reshape(n_rows, -1) for f in fams], dim=1)
        flat = torch.nan_to_num(flat, nan=0.0)
        kk = min(k, flat.shape[1])
        picks = []
        for largest in (True, False) if col not in TOP_ONLY else (True,):
            vals, idx = flat.topk(kk, dim=1, largest=largest, sorted=True)
            for r in range(n_rows):
                for j in range(kk):
                    picks.append(
                        (-float(vals[r, j]) if largest else float(vals[r, j]), int(idx[r, j]))
                    )
            for _, flat_i in sorted(set(picks), key=lambda t: (t[0], t[1])):
                fam_i = next(i for i in range(len(fams)) if offsets[i] <= flat_i < offsets[i + 1])
                shape = fams[fam_i].columns[col].shape[1:]
                local = flat_i - offsets[fam_i]
                idx_t = tuple(int(x) for x in torch.unravel_index(torch.tensor(local), shape))
                if (fam_i, idx_t) not in seen:
                    seen.add((fam_i, idx_t))
                    chosen.append((fam_i, idx_t))
            picks = []
    return chosen


def _families(shapes: list[tuple[int, ...]], rows: int, fill) -> list[_Family]:
    fams = []
    for shape in shapes:
        cols = {c: fill((rows, *shape)) for c in COLUMNS}
        fams.append(_Family(NodeKind.EMBEDDING, None, cols, lambda idx: embedding(0), "x"))
    return fams


@pytest.mark.parametrize("k", [1, 4, 10, 50])
def test_ranking_equals_concatenated_topk_on_a_real_table(tiny_runner, k):
    """On the tiny model's real columns (one and two rows), the ranking picks the same nodes in
    the same order as concatenating every column and taking one topk."""
    mary = tiny_runner.tokens.single_token(" Mary")
    john = tiny_runner.tokens.single_token(" John")
    for iv in ((), (specs.Intervention("blocks.0.mlp.hook_post", specs.Zero()),)):
        spec = AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=LogitDiffLoss((mary,), (john,)),
            top_k=k,
            interventions=iv,
        )
        cols = compute_columns(tiny_runner, spec)
        fams, rows = cols.families, cols.att.n_rows
        assert _topk_union(fams, k, rows) == _reference_topk_union(fams, k, rows)


@pytest.mark.parametrize("seed", range(6))
def test_ranking_equals_concatenated_topk_with_ties_nan_and_infinities(seed):
    """Random columns of many blocks, with heavy ties (values on a coarse grid), exact zeros,
    NaN and infinities: the same picks as the concatenated topk, in the same order."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3,), (7, 300), (2, 5, 61), (1000,)]

    def coarse(shape):
        return torch.randint(-3, 4, shape, generator=g).float()

    def smooth(shape):
        return torch.randn(shape, generator=g)

    for fill in (coarse, smooth):
        for rows in (1, 2):
            fams = _families(shapes, rows, fill)
            if seed % 2:
                fams[1].columns["direct_effect"][0, 0, 0] = float("nan")
                fams[3].columns["total_effect"][-1, 5] = float("inf")
                fams[2].columns["write_magnitude"][0, 0, 0, 0] = float("-inf")
            for k in (1, 3, 10, 40):
                assert _topk_union(fams, k, rows) == _reference_topk_union(fams, k, rows)


def test_pick_returns_the_topk_set_and_uses_topk_on_a_straddling_tie():
    """Without a tie across the boundary the pick is the k most extreme values; with one, it is
    exactly what topk keeps."""
    x = torch.arange(2000, dtype=torch.float32)[None]
    vals, idx = _pick([x[:, :700], x[:, 700:]], 5, True)[0]
    assert sorted(idx) == [1995, 1996, 1997, 1998, 1999] and sorted(vals) == [
        1995.0,
        1996.0,
        1997.0,
        1998.0,
        1999.0,
    ]
    tied = torch.zeros(1, 3000)
    tied[0, 17] = 5.0
    v, i = _pick([tied], 4, True)[0]
    ref_v, ref_i = tied.topk(4, dim=1)
    assert (v, i) == (ref_v[0].tolist(), ref_i[0].tolist())


def test_tables_are_equal_with_the_embedding_kept_or_recomputed(tiny_runner):
    """Neuron input tokens read from the kept normalized embedding equal a fresh computation;
    changing the embedding in place recomputes it."""
    mary = tiny_runner.tokens.single_token(" Mary")
    john = tiny_runner.tokens.single_token(" John")
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((mary,), (john,)), top_k=5
    )
    tiny_runner.derived.clear()
    fresh = attribute(tiny_runner, spec)
    assert any(k.startswith("normalized_embedding") for k in tiny_runner.derived)
    kept = attribute(tiny_runner, spec)
    assert fresh == kept
    assert any(r.input_tokens for r in kept.rows)

    neurons = [(0, 1), (1, 3)]
    before = _neuron_input_tokens(tiny_runner, neurons, 3)
    weight = tiny_runner.adapter.model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-1.0)  # every token's normalized embedding flips sign
        after = _neuron_input_tokens(tiny_runner, neurons, 3)
        tiny_runner.derived.clear()
        assert after == _neuron_input_tokens(tiny_runner, neurons, 3)
        assert after != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    tiny_runner.derived.clear()
    assert _neuron_input_tokens(tiny_runner, neurons, 3) == before


def test_an_embedding_over_the_budget_is_not_kept(tiny_runner, monkeypatch):
    """A normalized embedding larger than the budget is recomputed per request, not kept."""
    monkeypatch.setattr(attribution, "EMBEDDING_CACHE_MAX_BYTES", 0)
    tiny_runner.derived.clear()
    got = _neuron_input_tokens(tiny_runner, [(0, 2)], 2)
    assert not tiny_runner.derived
    monkeypatch.setattr(attribution, "EMBEDDING_CACHE_MAX_BYTES", math.inf)
    assert _neuron_input_tokens(tiny_runner, [(0, 2)], 2) == got


def _tables(runner, sparse: bool, monkeypatch) -> list:
    from tdb_core.ops.attribute import HeadTrace, LogProbLoss, NeuronTrace, Through

    monkeypatch.setattr(attribution, "SPARSE", sparse)
    mary = runner.tokens.single_token(" Mary")
    john = runner.tokens.single_token(" John")
    prompt = specs.Prompt(text=PROMPT)
    losses = [
        LogitDiffLoss((mary,), (john,)),
        LogitDiffLoss((mary, john), (5,), position=-3),
        LogProbLoss((mary,)),
        NeuronTrace(1, 3, position=-2),
        HeadTrace(1, 0, query_position=-1, key_position=2, through=Through.QK),
    ]
    specs_ = [AttributeSpec(prompt=prompt, loss=loss, top_k=6) for loss in losses]
    specs_.append(
        AttributeSpec(
            prompt=prompt,
            loss=losses[0],
            interventions=(specs.Intervention("blocks.0.attn.hook_pattern", specs.Zero()),),
            top_k=6,
        )
    )
    specs_.append(AttributeSpec(prompt=prompt, loss=losses[0], top_k=3, ig_steps=4))
    return [attribute(runner, s) for s in specs_]


def test_sparse_pass_gives_the_dense_pass_table(tiny_runner, monkeypatch):
    """Logits at the loss position only and gradient products only where the gradient is not
    zero give the same table as the dense pass: the same rows in the same order, the same node
    tokens, and values equal to float rounding (products of a different shape may round their
    last bit differently); exact zeros stay exact zeros."""
    dense = _tables(tiny_runner, False, monkeypatch)
    sparse = _tables(tiny_runner, True, monkeypatch)
    for a, b in zip(dense, sparse, strict=True):
        assert [r.node for r in a.rows] == [r.node for r in b.rows]
        for ra, rb in zip(a.rows, b.rows, strict=True):
            assert [t.token_id for t in ra.upvoted] == [t.token_id for t in rb.upvoted]
            assert [t.token_id for t in ra.input_tokens] == [t.token_id for t in rb.input_tokens]
            for va, vb in zip(ra.values, rb.values, strict=True):
                for c in COLUMNS:
                    assert vb[c] == pytest.approx(va[c], rel=1e-5, abs=1e-6), (rb.node.key, c)
                    assert (va[c] == 0) == (vb[c] == 0)
        for field in ("loss_values", "bias_direct_effect", "constant"):
            assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-5, abs=1e-6)
        for ta, tb in zip(a.token_attribution, b.token_attribution, strict=True):
            assert tb == pytest.approx(ta, rel=1e-5, abs=1e-6)
        assert a.prompts == b.prompts and a.loss_position == b.loss_position
