"""Interventions equal editing the computation by hand (plain torch hooks on the HF modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from tdb_core import errors, specs
from tdb_core.ops.ablate import AblateSpec, InterventionSet, ablate
from tdb_core.ops.forward import forward
from tdb_core.ops.patch_sweep import PatchSweepSpec, SweepBy, patch_sweep

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def ids(runner, text: str) -> list[int]:
    return list(runner.tokens.encode(specs.Prompt(text=text)))


@contextmanager
def hand_hook(module: torch.nn.Module, fn: Callable, pre: bool = False) -> Iterator[None]:
    h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        h.remove()


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    """The HF model run directly, no engine (the tdb attention function computes eager math)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).logits[0]


def run(runner, text: str, *ivs: specs.Intervention, sources=(), references=()) -> torch.Tensor:
    res = forward(
        runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=text),),
            captures=(specs.Capture("logits"),),
            interventions=ivs,
            sources=tuple(specs.Prompt(text=s) for s in sources),
            references=tuple(specs.Prompt(text=r) for r in references),
        ),
    )
    return res.captures[0].values[0]


def test_zero_neuron_equals_removing_its_contribution(tiny_runner):
    """Zeroing neuron n of layer l at position p equals removing that unit's input to c_proj at p."""
    model = tiny_runner.adapter.model
    tok = ids(tiny_runner, CLEAN)
    got = run(
        tiny_runner,
        CLEAN,
        specs.Intervention("blocks.1.mlp.hook_post", specs.Zero(), positions=(3,), units=(17,)),
    )

    def zero_input(mod, args):
        x = args[0].clone()
        x[:, 3, 17] = 0
        return (x,)

    with hand_hook(model.transformer.h[1].mlp.c_proj, zero_input, pre=True):
        want = hf_logits(model, tok)
    assert torch.equal(got, want)
    assert not torch.equal(got, hf_logits(model, tok))


@pytest.mark.parametrize(
    "op,edit",
    [
        (specs.SetValue(2.5), lambda x: torch.full_like(x, 2.5)),
        (specs.Scale(-3.0), lambda x: x * -3.0),
        (
            specs.SetTensor(torch.tensor([[1.0, -2.0]])),
            lambda x: torch.tensor([1.0, -2.0]).expand_as(x),
        ),
    ],
)
def test_set_scale_and_set_tensor_equal_hand_edits(tiny_runner, op, edit):
    """Set, scale and set-tensor on two neurons at two positions equal the same edit by hand."""
    model = tiny_runner.adapter.model
    tok = ids(tiny_runner, CLEAN)
    got = run(
        tiny_runner,
        CLEAN,
        specs.Intervention("blocks.0.mlp.hook_post", op, positions=(1, -1), units=(4, 9)),
    )
    pos = torch.tensor([1, len(tok) - 1])[:, None]
    units = torch.tensor([4, 9])[None, :]

    def hand(mod, args):
        x = args[0].clone()
        x[0, pos, units] = edit(x[0, pos, units])
        return (x,)

    with hand_hook(model.transformer.h[0].mlp.c_proj, hand, pre=True):
        want = hf_logits(model, tok)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_steering_vector_equals_adding_it_to_the_residual(tiny_runner):
    """AddVector on resid_post of layer 0 at every position equals adding it after block 0."""
    model = tiny_runner.adapter.model
    tok = ids(tiny_runner, CLEAN)
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    got = run(
        tiny_runner, CLEAN, specs.Intervention("blocks.0.hook_resid_post", specs.AddVector(v, 0.5))
    )
    with hand_hook(model.transformer.h[0], lambda mod, args, out: out + 0.5 * v):
        want = hf_logits(model, tok)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_mean_ablations_equal_hand_means(tiny_runner):
    """Mean over this prompt's positions and mean over reference prompts equal hand-computed means."""
    model = tiny_runner.adapter.model
    tok = ids(tiny_runner, CLEAN)
    refs = ["The quick brown fox jumps", "I ate an apple and a banana at the station."]
    captured = {}

    def grab(key):
        def fn(mod, args, out):
            captured[key] = out[0].detach()  # attn output [B, T, d]

        return fn

    with hand_hook(model.transformer.h[1].attn, grab("self")):
        hf_logits(model, tok)
    ref_rows = []
    for r in refs:
        with hand_hook(model.transformer.h[1].attn, grab("ref")):
            hf_logits(model, ids(tiny_runner, r))
        ref_rows.append(captured["ref"][0])
    self_mean = captured["self"][0].mean(0)
    ref_mean = torch.cat(ref_rows).mean(0)  # token-weighted mean over every reference position

    for op, mean, kw in [
        (specs.MeanOverPositions(), self_mean, {}),
        (specs.MeanOverReference(), ref_mean, {"references": refs}),
    ]:
        got = run(
            tiny_runner,
            CLEAN,
            specs.Intervention("blocks.1.hook_attn_out", op, positions=(-1,)),
            **kw,
        )

        def hand(mod, args, out, mean=mean):
            a = out[0].clone()
            a[0, -1] = mean
            return (a, *out[1:])

        with hand_hook(model.transformer.h[1].attn, hand):
            want = hf_logits(model, tok)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "site", ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_mid"]
)
def test_patching_whole_residual_reproduces_clean_logits(tiny_runner, site):
    """Patching a layer's whole residual stream from the clean prompt gives the clean logits
    (exactly for resid_pre/post; within one rounding for resid_mid, which is written through
    attn_out)."""
    clean = run(tiny_runner, CLEAN)
    patched = run(
        tiny_runner, CORRUPT, specs.Intervention(site, specs.PatchFrom(0)), sources=[CLEAN]
    )
    assert not torch.equal(run(tiny_runner, CORRUPT), clean)
    if "mid" in site:
        torch.testing.assert_close(patched, clean, atol=2e-6, rtol=0)
    else:
        assert torch.equal(patched, clean)


def test_head_ablation_removes_exactly_its_write(tiny_runner):
    """Zeroing hook_z[pos, head] equals subtracting z_h @ W_O[h] from the attention output at pos."""
    model = tiny_runner.adapter.model
    tok = ids(tiny_runner, CLEAN)
    got = run(
        tiny_runner,
        CLEAN,
        specs.Intervention("blocks.1.attn.hook_z", specs.Zero(), positions=(-1,), units=(2,)),
    )
    zs = {}

    def grab_z(mod, args):
        zs["z"] = args[0].detach()  # [1, T, H*dh]

    with hand_hook(model.transformer.h[1].attn.c_proj, grab_z, pre=True):
        hf_logits(model, tok)
    w = model.transformer.h[1].attn.c_proj.weight  # [H*dh, d]
    write = zs["z"][0, -1, 32:48] @ w[32:48]  # head 2 of d_head 16

    def hand(mod, args, out):
        a = out[0].clone()
        a[0, -1] -= write
        return (a, *out[1:])

    with hand_hook(model.transformer.h[1].attn, hand):
        want = hf_logits(model, tok)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_edit_leaves_earlier_positions_untouched(tiny_runner):
    """An intervention at position p changes nothing at positions < p, at any site."""
    base = forward(
        tiny_runner,
        specs.ForwardSpec(prompts=(specs.Prompt(text=CLEAN),), captures=(specs.Capture("*"),)),
    )
    p = 5
    edited = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=CLEAN),),
            captures=(specs.Capture("*"),),
            interventions=(
                specs.Intervention("blocks.0.hook_resid_pre", specs.SetValue(3.0), positions=(p,)),
            ),
        ),
    )
    changed_later = False
    for a, b in zip(base.captures, edited.captures, strict=True):
        axis = a.dims.index("q_pos" if "q_pos" in a.dims else "pos")
        early = torch.arange(p)
        assert torch.equal(
            a.values[0].index_select(axis, early), b.values[0].index_select(axis, early)
        ), a.site
        changed_later |= not torch.equal(a.values, b.values)
    assert changed_later


def test_backward_edits_replace_the_gradient(tiny_runner):
    """A backward Scale doubles the gradient upstream of it; a backward Zero on the last residual
    stream zeroes every gradient before it; the forward values are unchanged."""
    batch = tiny_runner.tokens.make_batch((specs.Prompt(text=CLEAN),))

    def grad_of_embed(*ivs: specs.Intervention) -> tuple[torch.Tensor, torch.Tensor]:
        planner = tiny_runner.planner(batch)
        for iv in ivs:
            planner.add_intervention(iv, [0])
        planner.plan.grad_sites.add("hook_embed")
        out = tiny_runner.run(batch, planner.plan, grad=True)
        (g,) = torch.autograd.grad(out.logits[0, -1, 5], [out.ctx.graph["hook_embed"]])
        return out.logits.detach(), g

    logits, g = grad_of_embed()
    logits2, g2 = grad_of_embed(
        specs.Intervention("blocks.1.hook_resid_post", specs.Scale(2.0), pass_=specs.Pass.BACKWARD)
    )
    assert torch.equal(logits, logits2)
    torch.testing.assert_close(g2, 2 * g, atol=1e-7, rtol=1e-6)
    _, g0 = grad_of_embed(
        specs.Intervention("blocks.1.hook_resid_post", specs.Zero(), pass_=specs.Pass.BACKWARD)
    )
    assert torch.count_nonzero(g0) == 0


BAD = [
    (
        "shape mismatch",
        specs.Intervention("blocks.0.hook_resid_pre", specs.SetTensor(torch.ones(3))),
        errors.InvalidArgumentError,
        "does not broadcast",
    ),
    (
        "unknown site",
        specs.Intervention("blocks.0.hook_nope", specs.Zero()),
        errors.NotFoundError,
        "unknown",
    ),
    (
        "unit out of range",
        specs.Intervention("blocks.0.attn.hook_z", specs.Zero(), units=(4,)),
        errors.OutOfRangeError,
        "0..3",
    ),
    (
        "position out of range",
        specs.Intervention("blocks.0.attn.hook_z", specs.Zero(), positions=(99,)),
        errors.OutOfRangeError,
        "position 99",
    ),
    (
        "missing source",
        specs.Intervention("blocks.0.hook_resid_pre", specs.PatchFrom(0)),
        errors.OutOfRangeError,
        "source",
    ),
    (
        "backward patch",
        specs.Intervention(
            "blocks.0.hook_resid_pre", specs.PatchFrom(0), pass_=specs.Pass.BACKWARD
        ),
        errors.InvalidArgumentError,
        "backward",
    ),
    (
        "mean without references",
        specs.Intervention("blocks.0.hook_resid_pre", specs.MeanOverReference()),
        errors.InvalidArgumentError,
        "reference",
    ),
]


@pytest.mark.parametrize("name,iv,cls,text", BAD, ids=[b[0] for b in BAD])
def test_bad_interventions_are_refused_before_work(tiny_runner, name, iv, cls, text):
    """Bad interventions raise the right error class with a message saying what is allowed."""
    with pytest.raises(cls, match=text):
        run(tiny_runner, CLEAN, iv)


def test_patch_source_of_another_length_is_refused(tiny_runner):
    """A patch source with a different token count is INVALID_ARGUMENT, naming both lengths."""
    with pytest.raises(errors.InvalidArgumentError, match="equal lengths"):
        run(
            tiny_runner,
            CLEAN,
            specs.Intervention("blocks.0.hook_resid_pre", specs.PatchFrom(0)),
            sources=["short"],
        )


# -- Ablate and patch sweeps --------------------------------------------------------------------


def test_ablate_rows_match_forward_runs(tiny_runner):
    """Ablate's baseline equals a plain run; each set's row equals Forward with its interventions;
    KL is 0 for a no-op set and positive otherwise; logit differences are computed by hand."""
    t, d = tiny_runner.tokens.single_token(" Mary"), tiny_runner.tokens.single_token(" John")
    zero_head = specs.Intervention(
        "blocks.1.attn.hook_z", specs.Zero(), positions=(-1,), units=(0,)
    )
    noop = specs.Intervention("blocks.1.hook_resid_post", specs.Scale(1.0))
    res = ablate(
        tiny_runner,
        AblateSpec(
            prompt=specs.Prompt(text=CLEAN),
            sets=(InterventionSet("L1H0", (zero_head,)), InterventionSet("noop", (noop,))),
            target_ids=(t,),
            distractor_ids=(d,),
            top_k=3,
            captures=(specs.Capture("blocks.1.attn.hook_z", positions=(-1,)),),
        ),
    )
    assert [r.name for r in res.rows] == ["baseline", "L1H0", "noop"]
    base = run(tiny_runner, CLEAN)[-1]
    abl = run(tiny_runner, CLEAN, zero_head)[-1]
    torch.testing.assert_close(res.rows[0].logit_diff, float(base[t] - base[d]), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.rows[1].logit_diff, float(abl[t] - abl[d]), atol=1e-5, rtol=0)
    assert res.rows[1].logit_diff_change == pytest.approx(
        res.rows[1].logit_diff - res.rows[0].logit_diff
    )
    assert res.rows[2].kl_from_baseline < 1e-6 < res.rows[1].kl_from_baseline
    assert res.rows[0].top.token_ids == tuple(base.topk(3).indices.tolist())
    z = res.captures[0].values  # [rows, 1, head, d_head]
    assert torch.all(z[1, 0, 0] == 0) and torch.any(z[0, 0, 0] != 0)


def test_patch_sweep_finds_the_differing_token(tiny_runner):
    """Patching layer 0's residual input at the one position where clean and corrupted differ
    recovers exactly 100%; every other position recovers 0%."""
    t, d = tiny_runner.tokens.single_token(" Mary"), tiny_runner.tokens.single_token(" John")
    res = patch_sweep(
        tiny_runner,
        PatchSweepSpec(
            clean=specs.Prompt(text=CLEAN),
            corrupted=specs.Prompt(text=CORRUPT),
            site="hook_resid_pre",
            target_ids=(t,),
            distractor_ids=(d,),
        ),
        max_rows_per_pass=7,
    )
    diff = [
        i for i, (a, b) in enumerate(zip(res.clean.token_ids, res.corrupted.token_ids)) if a != b
    ]
    assert len(diff) == 1
    row0 = res.recovered[0]
    torch.testing.assert_close(row0[diff[0]], torch.tensor(1.0), atol=1e-5, rtol=0)
    others = torch.ones_like(row0, dtype=torch.bool)
    others[diff[0]] = False
    assert torch.all(row0[others].abs() < 1e-5)
    heads = patch_sweep(
        tiny_runner,
        PatchSweepSpec(
            clean=specs.Prompt(text=CLEAN),
            corrupted=specs.Prompt(text=CORRUPT),
            site="attn.hook_z",
            target_ids=(t,),
            distractor_ids=(d,),
            by=SweepBy.HEAD,
        ),
    )
    assert heads.recovered.shape == (2, 4) and heads.column_labels[0] == "H0"


def test_patch_sweep_refuses_unequal_lengths_and_bad_sites(tiny_runner):
    """Unequal prompt lengths and non-layer sites are refused with clear errors."""
    t, d = tiny_runner.tokens.single_token(" Mary"), tiny_runner.tokens.single_token(" John")
    with pytest.raises(errors.InvalidArgumentError, match="equal length"):
        patch_sweep(
            tiny_runner,
            PatchSweepSpec(
                specs.Prompt(text=CLEAN), specs.Prompt(text="hi"), "hook_resid_pre", (t,), (d,)
            ),
        )
    with pytest.raises(errors.NotFoundError, match="per-layer site"):
        patch_sweep(
            tiny_runner,
            PatchSweepSpec(
                specs.Prompt(text=CLEAN), specs.Prompt(text=CORRUPT), "logits", (t,), (d,)
            ),
        )
    with pytest.raises(errors.InvalidArgumentError, match="head axis"):
        patch_sweep(
            tiny_runner,
            PatchSweepSpec(
                specs.Prompt(text=CLEAN),
                specs.Prompt(text=CORRUPT),
                "hook_resid_pre",
                (t,),
                (d,),
                by=SweepBy.HEAD,
            ),
        )
