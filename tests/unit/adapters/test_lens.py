"""Logit lens on every architecture: cells equal a manual read-out of the captured residual
through the final norm's formula and the returned unembedding; the last layer's recomputed lens is
the model's own logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.errors import InvalidArgumentError, OutOfRangeError
from tdb_core.ops.forward import forward
from tdb_core.ops.lens import LensScale, LensSpec, logit_lens
from tdb_core.ops.weights import WeightsSpec, get_weights

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _manual(runner: Any, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The final norm written out (LayerNorm or RMSNorm, gain as returned by GetWeights)."""
    w = {
        v.name: v.values.double()
        for v in get_weights(runner, WeightsSpec(names=("ln_final.*", "?_U")))
    }
    x = x.double()
    norm = runner.adapter.final_norm()
    centred = x - x.mean(-1, keepdim=True) if norm.kind == "layernorm" else x
    if scale is None:
        scale = torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + norm.eps)
    y = centred / scale.double() * w["ln_final.w"]
    if "ln_final.b" in w:
        y = y + w["ln_final.b"]
    logits = y @ w["W_U"]
    if "b_U" in w:
        logits = logits + w["b_U"]
    cap = runner.adapter.logit_softcap()
    return logits if cap is None else cap * torch.tanh(logits / cap)


def test_lens_matches_manual_read_out(arch_runner: Any) -> None:
    """Every cell's top-k equals the manual read-out of the captured residual (1e-5), with the
    scale recomputed or frozen to the final residual's; the last layer recomputed is the logits."""
    dims = arch_runner.schema.dims
    res = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            captures=(
                specs.Capture("blocks.*.hook_resid_post"),
                specs.Capture("ln_final.hook_scale"),
                specs.Capture("logits"),
            ),
        ),
    )
    acts = {c.site: c.values[0] for c in res.captures}
    for mode in LensScale:
        lens = logit_lens(arch_runner, LensSpec(specs.Prompt(text=PROMPT), top_k=3, scale=mode))
        assert lens.layers == tuple(range(dims.n_layers))
        assert lens.positions == tuple(range(len(res.prompts[0].token_ids)))
        for i, L in enumerate(lens.layers):
            x = acts[f"blocks.{L}.hook_resid_post"]
            scale = acts["ln_final.hook_scale"] if mode is LensScale.FROZEN else None
            want = _manual(arch_runner, x, scale)  # [T, vocab]
            torch.testing.assert_close(lens.logits[i].double(), want, atol=1e-5, rtol=1e-5)
            for j, q in enumerate(lens.positions):
                cell = lens.cells[i * len(lens.positions) + j]
                assert (cell.layer, cell.position) == (L, q)
                top = want[q].topk(3)
                torch.testing.assert_close(
                    torch.tensor(cell.logits, dtype=torch.float64), top.values, atol=1e-5, rtol=0
                )
        last = lens.logits[-1]
        torch.testing.assert_close(last, acts["logits"].float(), atol=1e-5, rtol=1e-5)


def test_lens_selections_and_errors(arch_runner: Any) -> None:
    """Layers and (negative) positions select the grid; bad sites, layers and positions are
    refused."""
    p = specs.Prompt(text=PROMPT)
    lens = logit_lens(arch_runner, LensSpec(p, site="hook_resid_pre", layers=(1,), positions=(-1,)))
    assert lens.layers == (1,) and len(lens.cells) == 1
    assert lens.positions == (len(lens.prompt.token_ids) - 1,)
    with pytest.raises(InvalidArgumentError, match="residual-stream"):
        logit_lens(arch_runner, LensSpec(p, site="mlp.hook_post"))
    with pytest.raises(OutOfRangeError, match="layer"):
        logit_lens(arch_runner, LensSpec(p, layers=(99,)))
    with pytest.raises(OutOfRangeError, match="position"):
        logit_lens(arch_runner, LensSpec(p, positions=(500,)))
