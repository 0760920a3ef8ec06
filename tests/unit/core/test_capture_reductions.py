"""Reduced captures (positions, units, top-k, dtype) equal the same reduction applied by hand to
the whole site, for read sites and for sites computed only for what is kept (attn.hook_result).

Prompts of different lengths, so padding (masked keys, positions past a prompt's end) is in play.
"""

from __future__ import annotations

import pytest
import torch

from tdb_core import specs
from tdb_core.ops.forward import forward

PROMPTS = (
    specs.Prompt(text="When Mary and John went to the store, John gave a drink to"),
    specs.Prompt(text="The quick brown fox"),
)
SITES = (
    "blocks.1.attn.hook_result",
    "blocks.0.attn.hook_attn_scores",
    "blocks.1.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.1.mlp.hook_post",
    "blocks.0.ln1.hook_scale",
    "blocks.1.hook_resid_mid",
)


@pytest.fixture(scope="module")
def whole(tiny_runner):
    res = forward(
        tiny_runner,
        specs.ForwardSpec(prompts=PROMPTS, captures=tuple(specs.Capture(s) for s in SITES)),
    )
    lengths = [len(p.token_ids) for p in res.prompts]
    return {c.site: c for c in res.captures}, lengths


def _by_hand(tiny_runner, whole, cap: specs.Capture) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reduction of the whole capture, row by row."""
    caps, lengths = whole
    full = caps[cap.site]
    site = tiny_runner.schema.get(cap.site)
    pos_axis = site.kind.dims.index(site.kind.pos_dim)
    unit_axis = None if site.kind.unit_dim is None else site.kind.dims.index(site.kind.unit_dim)
    rows = []
    for b, n in enumerate(lengths):
        v = full.values[b]
        if cap.positions is not None:
            pos = torch.tensor([p + n if p < 0 else p for p in cap.positions])
            v = v.index_select(pos_axis, pos)
        if cap.units is not None:
            assert unit_axis is not None
            v = v.index_select(unit_axis, torch.tensor(cap.units))
        rows.append(v)
    values = torch.stack(rows)
    indices = None
    if cap.top_k is not None:
        values, indices = values.topk(min(cap.top_k.k, values.shape[-1]), dim=-1)
    if cap.dtype is not None:
        values = values.to(cap.dtype)
    return values, indices


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize(
    "how",
    [
        dict(positions=(0, -1)),
        dict(units=(3, 1)),
        dict(positions=(-2, 1), units=(2,)),
        dict(positions=(-1,), top_k=specs.TopK(3)),
        dict(dtype=torch.float16),
        dict(positions=(2,), units=(0, 3), top_k=specs.TopK(2), dtype=torch.bfloat16),
    ],
    ids=["positions", "units", "positions+units", "top_k", "float16", "everything"],
)
def test_reduced_capture_equals_reducing_the_whole_site(tiny_runner, whole, site, how):
    cap = specs.Capture(site, **how)
    s = tiny_runner.schema.get(site)
    if cap.units is not None and s.kind.unit_dim is None:
        pytest.skip("site has no unit axis")
    res = forward(tiny_runner, specs.ForwardSpec(prompts=PROMPTS, captures=(cap,)))
    want, want_idx = _by_hand(tiny_runner, whole, cap)
    got = res.captures[0]
    assert got.values.dtype == want.dtype and got.values.shape == want.shape
    assert torch.equal(got.values, want), site
    if want_idx is not None:
        assert got.indices is not None and torch.equal(got.indices, want_idx)
    if cap.positions is None:  # padding past each prompt's end is filled, as in the whole capture
        assert torch.equal(got.values.float(), want.float())


def test_a_derived_site_captured_whole_and_in_part_in_one_pass(tiny_runner, whole):
    """Two captures of hook_result in one request: the part equals the slice of the whole."""
    part = specs.Capture("blocks.1.attn.hook_result", positions=(-1,), units=(2,))
    res = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=PROMPTS, captures=(part, specs.Capture("blocks.1.attn.hook_result"))
        ),
    )
    got_part, got_whole = res.captures
    assert torch.equal(got_whole.values, whole[0]["blocks.1.attn.hook_result"].values)
    want, _ = _by_hand(tiny_runner, whole, part)
    assert torch.equal(got_part.values, want)
