"""Head and head-pair write magnitudes on every architecture (grouped-query attention, post
norms, untied embeddings) equal the materialized per-head writes, recomputed in float64 from the
pass's activations and the adapter's W_O."""

from __future__ import annotations

import torch

from tdb_core import specs
from tdb_core.ops.attribute import AttributeSpec, LogitDiffLoss, attribute, compute_columns

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_write_magnitudes_equal_the_materialized_writes(arch_runner):
    ids = arch_runner.tokens.encode(specs.Prompt(text=PROMPT))
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((ids[1],), (ids[3],)), top_k=4
    )
    cols = compute_columns(arch_runner, spec)
    g, adapter, dims = cols.out.ctx.graph, arch_runner.adapter, arch_runner.schema.dims
    for L in range(dims.n_layers):
        w_o = adapter.W_O(L).detach().double()  # [H, d_head, d_model]
        z = g[f"blocks.{L}.attn.hook_z"][0].detach().double()  # [T, H, d_head]
        v = g[f"blocks.{L}.attn.hook_v"][0].detach().double()  # [T_k, H_kv, d_head]
        v = v.repeat_interleave(dims.n_heads // v.shape[1], dim=1)
        p = g[f"blocks.{L}.attn.hook_pattern"][0].detach().double()  # [H, T_q, T_k]
        result = torch.einsum("thd,hdm->thm", z, w_o)  # [T, H, d_model]
        vo = torch.einsum("khd,hdm->hkm", v, w_o)  # [H, T_k, d_model]
        norm = adapter.post_attn_norm(L)
        if norm is None:
            heads, pairs = result.norm(dim=-1), p.abs() * vo.norm(dim=-1)[:, None, :]
        else:  # the raw write through the post norm's gain / scale at the query position
            b = adapter.b_O(L)
            raw = result.sum(1) + (b.detach().double() if b is not None else 0.0)
            gain = norm.gain()
            f = (gain.double() if gain is not None else 1.0) / norm.scale(raw.float()).double()
            heads = (result * f[:, None, :]).norm(dim=-1)
            pairs = p.abs() * torch.einsum("hkm,qm->hqk", vo.pow(2), f.pow(2)).sqrt()
        got = cols.family("attn_head", L).columns["write_magnitude"][0].double()
        torch.testing.assert_close(got, heads, rtol=1e-4, atol=1e-5)
        got = cols.family("attn_head_pair", L).columns["write_magnitude"][0].double()
        torch.testing.assert_close(got, pairs, rtol=1e-4, atol=1e-5)
    assert attribute(arch_runner, spec).rows
