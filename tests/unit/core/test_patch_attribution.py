"""Attribution patching (PatchSweep ``method=ATTRIBUTION``): exact where the logit difference is
linear in the cell, close in ranking to exact patching elsewhere."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.ops.patch_sweep import Method, PatchSweepSpec, SweepBy, patch_sweep

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation with average ranks for ties."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        sx = x[order]
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and sx[j + 1] == sx[i]:
                j += 1
            r[order[i : j + 1]] = (i + j) / 2
            i = j + 1
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.fixture(scope="module")
def linear_runner() -> Any:
    """The toy model with its final LayerNorm replaced by the identity and its last MLP writing
    zero: the logit difference is then linear in every write of the last attention layer."""
    import adapters
    from tdb_core.runner import ModelRunner
    from tdb_core.toy import TOY_MODEL_DIR

    loaded = adapters.load_model("toy-linear", str(TOY_MODEL_DIR))
    model = loaded.adapter.model
    model.transformer.ln_f = torch.nn.Identity()
    with torch.no_grad():
        last_mlp = model.transformer.h[-1].mlp.c_proj
        last_mlp.weight.zero_()
        last_mlp.bias.zero_()
    return ModelRunner(loaded)


def _pair(runner: Any, site: str, by: SweepBy, **kw: Any) -> tuple[Any, Any]:
    ids = runner.tokens
    spec = PatchSweepSpec(
        specs.Prompt(text=CLEAN),
        specs.Prompt(text=CORRUPT),
        site,
        (ids.single_token(" Mary", "target"),),
        (ids.single_token(" John", "distractor"),),
        by=by,
        **kw,
    )
    exact = patch_sweep(runner, spec)
    atp = patch_sweep(runner, replace(spec, method=Method.ATTRIBUTION))
    return exact, atp


@pytest.mark.parametrize(
    ("site", "by"),
    [
        ("attn.hook_result", SweepBy.HEAD),
        ("attn.hook_z", SweepBy.HEAD),
        ("hook_attn_out", SweepBy.POSITION),
    ],
)
def test_attribution_is_exact_where_the_cell_is_linear(
    linear_runner: Any, site: str, by: SweepBy
) -> None:
    """Patching a last-layer head's write (hook_result, or z through W_O) or the attention output
    changes the logit difference linearly when no norm or MLP follows: the estimate equals exact
    patching (1e-4 of the largest effect: fp32 logits of a few hundred)."""
    last = linear_runner.schema.dims.n_layers - 1
    exact, atp = _pair(linear_runner, site, by, layers=(last,))
    assert atp.method is Method.ATTRIBUTION and exact.method is Method.EXACT
    assert atp.clean_logit_diff == pytest.approx(exact.clean_logit_diff, abs=1e-5)
    assert atp.corrupted_logit_diff == pytest.approx(exact.corrupted_logit_diff, abs=1e-5)
    want = exact.logit_diffs - exact.corrupted_logit_diff  # each cell's effect
    got = atp.logit_diffs - atp.corrupted_logit_diff
    biggest = float(want.abs().max())
    assert biggest > 0.1
    assert float((got - want).abs().max()) <= 1e-4 * biggest


def test_attribution_is_first_order_elsewhere(tiny_runner: Any) -> None:
    """With the final norm (and earlier layers) in the way the estimate differs from exact
    patching, but cells before the first differing token stay exactly unchanged in both."""
    exact, atp = _pair(tiny_runner, "hook_resid_pre", SweepBy.POSITION)
    assert atp.logit_diffs.shape == exact.logit_diffs.shape
    first = next(
        i
        for i, (a, b) in enumerate(zip(exact.clean.token_ids, exact.corrupted.token_ids))
        if a != b
    )
    assert bool((atp.recovered[:, :first] == 0).all())
    assert bool((exact.recovered[:, :first] == 0).all())
    assert not torch.allclose(atp.logit_diffs, exact.logit_diffs, atol=1e-4)


def test_attribution_ranks_like_exact_patching_on_the_toy_ioi(toy_runner: Any) -> None:
    """On the toy model's IOI prompts the per-head estimate ranks cells as exact patching does
    (Spearman >= 0.8 pooled over prompts; measured 0.97 over 10 prompts, see the README)."""
    from tdb_core.toy import corpus

    exact_all, atp_all = [], []
    for e in corpus.generate_task("ioi", 4, seed=123, split="heldout"):
        assert isinstance(e, corpus.IOIExample)
        k = e.prompt.rfind(e.s_name)
        corrupt = e.prompt[:k] + e.io_name + e.prompt[k + len(e.s_name) :]
        spec = PatchSweepSpec(
            specs.Prompt(text=e.prompt),
            specs.Prompt(text=corrupt),
            "attn.hook_z",
            (toy_runner.tokens.single_token(" " + e.io_name, "target"),),
            (toy_runner.tokens.single_token(" " + e.s_name, "distractor"),),
            by=SweepBy.HEAD,
        )
        exact_all.append(patch_sweep(toy_runner, spec).recovered.flatten())
        atp_all.append(
            patch_sweep(toy_runner, replace(spec, method=Method.ATTRIBUTION)).recovered.flatten()
        )
    assert spearman(torch.cat(exact_all), torch.cat(atp_all)) >= 0.8


def test_spearman_helper() -> None:
    """The rank correlation used above: 1 for monotone data, -1 reversed, ties averaged."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 2.0])) == pytest.approx(
        1
    )
