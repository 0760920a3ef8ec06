"""The node table's cheaper paths against straightforward float64 computations from the HF weights:
head and head-pair write magnitudes (computed from W_O's triangular factors, never materializing a
per-head write), the writes of returned rows and their output tokens, neuron input tokens read in
the unembedding's product (tied embeddings) or from the normalized embedding, and the values kept
per weights being dropped when a weight changes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tdb_core import specs
from tdb_core.ops import attribute as attribution
from tdb_core.ops.attribute import AttributeSpec, LogitDiffLoss, attribute, compute_columns

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def spec(tiny_runner):
    mary = tiny_runner.tokens.single_token(" Mary")
    john = tiny_runner.tokens.single_token(" John")
    return AttributeSpec(
        prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((mary,), (john,)), top_k=8
    )


def _w_o(runner, layer: int) -> torch.Tensor:
    """W_O per head from the HF module (GPT-2's Conv1D: [H * d_head, d_model]), float64."""
    d = runner.schema.dims
    w = runner.adapter.model.transformer.h[layer].attn.c_proj.weight.detach().double()
    return w.reshape(d.n_heads, d.d_head, d.d_model)


def test_head_and_pair_write_magnitudes_equal_the_materialized_writes(tiny_runner, spec):
    """||z[t, h] @ W_O[h]|| for heads and |pattern| x ||v[k, h] @ W_O[h]|| for head pairs, both
    recomputed in float64 from the pass's z, v and pattern and the HF weights."""
    cols = compute_columns(tiny_runner, spec)
    g = cols.out.ctx.graph
    for L in range(tiny_runner.schema.dims.n_layers):
        w_o = _w_o(tiny_runner, L)
        z = g[f"blocks.{L}.attn.hook_z"][0].detach().double()  # [T, H, d_head]
        want = torch.einsum("thd,hdm->thm", z, w_o).norm(dim=-1)
        got = cols.family("attn_head", L).columns["write_magnitude"][0]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        v = g[f"blocks.{L}.attn.hook_v"][0].detach().double()  # [T_k, H, d_head]
        p = g[f"blocks.{L}.attn.hook_pattern"][0].detach().double()  # [H, T_q, T_k]
        vo = torch.einsum("khd,hdm->hkm", v, w_o).norm(dim=-1)  # [H, T_k]
        got = cols.family("attn_head_pair", L).columns["write_magnitude"][0]
        torch.testing.assert_close(got.double(), p.abs() * vo[:, None, :], rtol=1e-5, atol=1e-6)


def test_every_row_reads_its_write_through_the_unembedding(tiny_runner, spec):
    """Each row's up- and down-voted tokens are its write in float64 (embedding: resid_pre of
    block 0; head: z @ W_O[h]; head pair: pattern x v @ W_O[h]; neuron: post x W_out row) times
    ln_f's gain times W_U, mean-subtracted: the same tokens and the same scores."""
    cols = compute_columns(tiny_runner, spec)
    g = cols.out.ctx.graph
    hf = tiny_runner.adapter.model
    w_u = hf.lm_head.weight.detach().double().T  # [d_model, vocab]
    gain = hf.transformer.ln_f.weight.detach().double()
    kinds = set()
    rows = attribute(tiny_runner, spec).rows
    rows += attribute(tiny_runner, replace(spec, families=("attn_head_pair",))).rows
    for row in rows:
        node, L, pos = row.node, row.node.layer, row.node.position
        if node.kind == "embedding":
            write = g["blocks.0.hook_resid_pre"][0, pos].detach().double()
        elif node.kind == "attn_head":
            z = g[f"blocks.{L}.attn.hook_z"][0, pos, node.unit].detach().double()
            write = z @ _w_o(tiny_runner, L)[node.unit]
        elif node.kind == "attn_head_pair":
            v = g[f"blocks.{L}.attn.hook_v"][0, node.key_position, node.unit].detach().double()
            a = g[f"blocks.{L}.attn.hook_pattern"][0, node.unit, pos, node.key_position].detach()
            write = float(a) * (v @ _w_o(tiny_runner, L)[node.unit])
        else:
            assert node.kind == "mlp_neuron"
            post = float(g[f"blocks.{L}.mlp.hook_post"][0, pos, node.unit].detach())
            w_out = hf.transformer.h[L].mlp.c_proj.weight.detach().double()[node.unit]
            write = post * w_out
        logits = (write * gain) @ w_u
        logits = logits - logits.mean()
        k = len(row.upvoted)
        assert k == spec.node_tokens
        top, bottom = logits.topk(k), logits.topk(k, largest=False)
        assert [t.token_id for t in row.upvoted] == top.indices.tolist(), node.key
        assert [t.token_id for t in row.downvoted] == bottom.indices.tolist(), node.key
        for got, want in ((row.upvoted, top.values), (row.downvoted, bottom.values)):
            scores = torch.tensor([t.score for t in got], dtype=torch.double)
            torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-5)
        kinds.add(node.kind)
    assert kinds == {"embedding", "attn_head", "attn_head_pair", "mlp_neuron"}


def test_input_tokens_from_the_unembedding_product_equal_the_normalized_embedding(
    tiny_runner, spec, monkeypatch
):
    """With tied embeddings, neurons' input tokens come from the rows' W_U product and each
    token's mean and scale; read from the normalized embedding instead (as for untied weights),
    the tokens are the same and the scores equal to float rounding."""
    assert attribution._tied_embedding(tiny_runner)
    tied = attribute(tiny_runner, spec)
    monkeypatch.setattr(attribution, "_tied_embedding", lambda runner: False)
    untied = attribute(tiny_runner, spec)
    neurons = [(a, b) for a, b in zip(tied.rows, untied.rows, strict=True) if a.input_tokens]
    assert len(neurons) >= 2
    for a, b in neurons:
        assert [t.token_id for t in a.input_tokens] == [t.token_id for t in b.input_tokens]
        for x, y in zip(a.input_tokens, b.input_tokens, strict=True):
            assert x.score == pytest.approx(y.score, rel=1e-5, abs=1e-5)
    assert [r.upvoted for r in tied.rows] == [r.upvoted for r in untied.rows]


def test_values_kept_per_weights_are_dropped_when_a_weight_changes(tiny_runner, spec):
    """W_O's factors and W_out's row norms are kept between requests; scaling a weight in place
    changes the table as a fresh computation does, and restoring it restores the table."""
    before = compute_columns(tiny_runner, spec)
    w_o = tiny_runner.adapter.model.transformer.h[0].attn.c_proj.weight
    w_out = tiny_runner.adapter.model.transformer.h[0].mlp.c_proj.weight
    saved = (w_o.detach().clone(), w_out.detach().clone())
    try:
        with torch.no_grad():
            w_o.mul_(2.0)
            w_out.mul_(3.0)
        after = compute_columns(tiny_runner, spec)
        attribution._WEIGHT_CACHES.clear()
        fresh = compute_columns(tiny_runner, spec)
    finally:
        with torch.no_grad():
            w_o.copy_(saved[0])
            w_out.copy_(saved[1])
    for kind in ("attn_head", "attn_head_pair", "mlp_neuron"):
        got = after.family(kind, 0).columns["write_magnitude"]
        assert torch.equal(got, fresh.family(kind, 0).columns["write_magnitude"])
        assert not torch.allclose(got, before.family(kind, 0).columns["write_magnitude"])
    restored = compute_columns(tiny_runner, spec)
    for kind in ("attn_head", "attn_head_pair", "mlp_neuron"):
        assert torch.equal(
            restored.family(kind, 0).columns["write_magnitude"],
            before.family(kind, 0).columns["write_magnitude"],
        )


def test_a_logit_difference_reads_only_its_logits_and_leaves_the_head_as_it_was(tiny_runner, spec):
    """A logit-difference table computes the unembedding for its tokens only (every other logit
    of the pass is 0), gets the HF model's logit difference, and leaves the unembedding module
    untouched afterwards: a plain forward's logits are HF's, bit for bit."""
    hf = tiny_runner.adapter.model
    head = hf.get_output_embeddings()
    ids = torch.tensor([tiny_runner.tokens.encode(specs.Prompt(text=PROMPT))])
    with torch.no_grad():
        full = hf(input_ids=ids).logits[0, -1]
    seen = []
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    try:
        table = attribute(tiny_runner, spec)
    finally:
        handle.remove()
    (logits,) = seen
    cols = sorted({*spec.loss.target_ids, *spec.loss.distractor_ids})
    others = torch.ones(logits.shape[-1], dtype=torch.bool)
    others[cols] = False
    assert not logits[..., others].any() and logits[..., cols].all()
    assert "forward" not in vars(head)
    want = float(full[spec.loss.target_ids[0]] - full[spec.loss.distractor_ids[0]])
    assert table.loss_values[0] == pytest.approx(want, abs=1e-5)
    with torch.no_grad():
        again = hf(input_ids=ids).logits[0, -1]
    assert torch.equal(again, full)
