"""SAEs attached to a model: latents as sites and nodes, spliced in exactly."""

from __future__ import annotations

import pytest
import torch

from tdb_core import errors, specs
from tdb_core.ops.attribute import (
    AttributeSpec,
    LatentTrace,
    LogitDiffLoss,
    attribute,
    compute_columns,
)
from tdb_core.ops.forward import forward
from tdb_core.runner import ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, TopKArch, build_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _sae(d_in: int, d_sae: int = 96, topk: bool = False, seed: int = 0, site: str | None = None):
    g = torch.Generator().manual_seed(seed)
    cfg = SaeConfig(
        d_in=d_in, d_sae=d_sae, architecture=TopKArch(k=8) if topk else ReluArch(), site=site
    )
    return build_sae(
        cfg,
        {
            "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
            "b_enc": torch.randn(d_sae, generator=g) * 0.05,
            "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.1,
            "b_dec": torch.randn(d_in, generator=g) * 0.05,
        },
    )


@pytest.fixture(scope="module")
def sae_runner(tiny_loaded):
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("res1", _sae(64, site="blocks.1.hook_resid_pre"), "memory")
    runner.saes.attach(
        "mlp0", _sae(256, topk=True, seed=1), "memory", site="blocks.0.mlp.hook_post"
    )
    return runner


def _forward(runner, *ivs, captures=("logits",)):
    return forward(
        runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            captures=tuple(specs.Capture(c) for c in captures),
            interventions=ivs,
        ),
    )


def test_schema_lists_sae_sites_after_their_input(sae_runner):
    """Attached SAEs add their sites, listed right after the site they read."""
    names = [s.name for s in sae_runner.schema.sites]
    i = names.index("blocks.1.hook_resid_pre")
    assert names[i + 1 : i + 6] == [
        f"sae.res1.{h}"
        for h in (
            "hook_sae_input",
            "hook_sae_acts_pre",
            "hook_sae_acts_post",
            "hook_sae_recons",
            "hook_sae_error",
        )
    ]
    acts = sae_runner.schema.get("sae.res1.hook_sae_acts_post")
    assert sae_runner.schema.shape(acts, 7) == (7, 96) and sae_runner.schema.unit_count(acts) == 96


def test_capturing_latents_equals_encode_and_changes_nothing(sae_runner, tiny_runner):
    """Captured latents equal encode() of the captured site; logits stay bit-identical."""
    res = _forward(
        sae_runner,
        captures=(
            "logits",
            "blocks.1.hook_resid_pre",
            "sae.res1.hook_sae_acts_post",
            "sae.mlp0.hook_sae_acts_post",
            "sae.res1.hook_sae_error",
        ),
    )
    plain = _forward(tiny_runner)
    assert torch.equal(res.captures[0].values, plain.captures[0].values)
    x = res.captures[1].values[0]
    torch.testing.assert_close(res.captures[2].values[0], sae_runner.saes.get("res1").sae.encode(x))
    err = res.captures[4].values[0]
    torch.testing.assert_close(err, x - sae_runner.saes.get("res1").sae(x)[1])
    assert int((res.captures[3].values[0] > 0).sum(-1).max()) <= 8  # TopK k=8


def test_splice_without_edit_leaves_output_unchanged(sae_runner, tiny_runner):
    """With the splice active (a no-op scale on the latents) the logits move by <= 1e-5."""
    res = _forward(
        sae_runner,
        specs.Intervention("sae.res1.hook_sae_acts_post", specs.Scale(1.0)),
        specs.Intervention("sae.mlp0.hook_sae_acts_post", specs.Scale(1.0)),
    )
    torch.testing.assert_close(
        res.captures[0].values, _forward(tiny_runner).captures[0].values, atol=1e-5, rtol=0
    )


def test_ablated_latent_changes_site_by_its_decoded_contribution(sae_runner):
    """Zeroing latent i at position p changes the SAE's site by exactly -z_i * W_dec[i] at p."""
    clean = _forward(
        sae_runner, captures=("blocks.1.hook_resid_pre", "sae.res1.hook_sae_acts_post")
    )
    z = clean.captures[1].values[0]
    p = 4
    i = int(z[p].argmax())
    assert float(z[p, i]) > 0
    edited = _forward(
        sae_runner,
        specs.Intervention("sae.res1.hook_sae_acts_post", specs.Zero(), positions=(p,), units=(i,)),
        captures=("blocks.1.hook_resid_pre",),
    )
    delta = edited.captures[0].values[0] - clean.captures[0].values[0]
    want = torch.zeros_like(delta)
    want[p] = -z[p, i] * sae_runner.saes.get("res1").sae.decoder_directions()[i]
    torch.testing.assert_close(delta, want, atol=2e-6, rtol=0)


def test_attribute_ranks_latents_and_traces_them(sae_runner):
    """Latents get all four columns (direct effect = z * W_dec[i] . gradient); a latent trace's
    loss is its pre-activation."""
    t, d = sae_runner.tokens.single_token(" Mary"), sae_runner.tokens.single_token(" John")
    cols = compute_columns(
        sae_runner, AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((t,), (d,)))
    )
    fam = [f for f in cols.families if f.kind == "sae_latent"]
    assert len(fam) == 2
    res1 = next(f for f in fam if f.decode((0, 0)).sae_id == "res1")
    z = res1.columns["activation"][0]
    grad = cols.grads["blocks.1.hook_resid_post"][0]
    want = z * (grad @ sae_runner.saes.get("res1").sae.decoder_directions().T)
    torch.testing.assert_close(res1.columns["direct_effect"][0], want, atol=1e-6, rtol=1e-5)
    table = attribute(
        sae_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=LogitDiffLoss((t,), (d,)),
            families=("sae_latent",),
            top_k=3,
        ),
    )
    assert table.rows and all(r.node.kind == "sae_latent" for r in table.rows)
    pre = _forward(sae_runner, captures=("sae.res1.hook_sae_acts_pre",)).captures[0].values[0]
    traced = attribute(
        sae_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT), loss=LatentTrace("res1", 5, position=6), top_k=3
        ),
    )
    assert traced.loss_values[0] == pytest.approx(float(pre[6, 5]), abs=1e-5)
    assert all(r.node.layer in (None, 0) for r in traced.rows)


def test_attach_refuses_mismatches(tiny_loaded):
    """A width mismatch, an unknown site, a missing site and a duplicate id are clear errors."""
    runner = ModelRunner(tiny_loaded)
    with pytest.raises(errors.InvalidArgumentError, match="d_in=32"):
        runner.saes.attach("a", _sae(32), "x.pt", site="blocks.0.hook_resid_pre")
    with pytest.raises(errors.NotFoundError):
        runner.saes.attach("a", _sae(64), "x.pt", site="blocks.0.hook_nope")
    with pytest.raises(errors.InvalidArgumentError, match="does not name the site"):
        runner.saes.attach("a", _sae(64), "x.pt")
    runner.saes.attach("a", _sae(64), "x.pt", site="blocks.0.hook_resid_post")
    with pytest.raises(errors.InvalidArgumentError, match="already attached"):
        runner.saes.attach("a", _sae(64), "x.pt", site="blocks.0.hook_resid_post")
    with pytest.raises(errors.NotFoundError, match="not attached"):
        runner.saes.get("zzz")


def test_latent_total_effect_is_activation_times_its_own_gradient(sae_runner, tiny_runner):
    """A latent's total effect is z_i times d loss / d z_i with the latents as their own node (the
    error term held at its value), recomputed by hand on the HF model; and nodes upstream of the
    SAE keep exactly the gradient they have without it."""
    t, d = sae_runner.tokens.single_token(" Mary"), sae_runner.tokens.single_token(" John")
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((t,), (d,)), freeze_norm_scale=False
    )  # the plain gradient, as autograd gives it
    cols = compute_columns(sae_runner, spec)
    res1 = next(
        f for f in cols.families if f.kind == "sae_latent" and f.decode((0, 0)).sae_id == "res1"
    )
    ids = torch.tensor([attribute(sae_runner, spec).prompts[0].token_ids])
    sae = sae_runner.saes.get("res1").sae
    hf = sae_runner.adapter.model
    z_var = {}

    def splice(module, args):
        x = args[0]
        z = sae.encode(x).detach().requires_grad_(True)
        z_var["z"] = z
        recon = sae.decode(z)
        return (x + recon - recon.detach(),)

    handle = hf.transformer.h[1].register_forward_pre_hook(splice)
    try:
        logits = hf(input_ids=ids).logits[0, -1]
        (logits[t] - logits[d]).backward()
    finally:
        handle.remove()
    z = z_var["z"]
    want = (z * z.grad)[0].detach()
    got = res1.columns["total_effect"][0]
    assert float(want.abs().max()) > 1e-3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    plain = compute_columns(tiny_runner, spec)
    emb = next(f for f in cols.families if f.kind == "embedding").columns["total_effect"]
    emb_plain = next(f for f in plain.families if f.kind == "embedding").columns["total_effect"]
    torch.testing.assert_close(emb, emb_plain, atol=1e-5, rtol=1e-4)


def test_zeroing_a_latent_rows_key_removes_exactly_its_write(sae_runner):
    """A latent row's key (sae.ID.hook_sae_acts_post[F,pos=P]), zeroed, changes the residual the
    SAE reconstructs by minus the write the node table attributes to the latent."""
    from tdb_core.nodes import parse_selector

    t, d = sae_runner.tokens.single_token(" Mary"), sae_runner.tokens.single_token(" John")
    cols = compute_columns(
        sae_runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((t,), (d,))),
    )
    fam = next(
        f for f in cols.families if f.kind == "sae_latent" and f.decode((0, 0)).sae_id == "res1"
    )
    z = fam.columns["activation"][0]  # [T, d_sae]
    p, i = (int(x) for x in torch.unravel_index(z.argmax(), z.shape))
    node = fam.decode((p, i))
    assert node.key == f"sae.res1.hook_sae_acts_post[{i},pos={p}]"
    sel = parse_selector(node.key)
    site = "blocks.1.hook_resid_pre"
    before = _forward(sae_runner, captures=(site,)).captures[0].values[0]
    iv = specs.Intervention(sel.site, specs.Zero(), positions=sel.positions, units=sel.units)
    after = _forward(sae_runner, iv, captures=(site,)).captures[0].values[0]
    assert fam.write is not None
    torch.testing.assert_close(after[p] - before[p], -fam.write(0, (p, i)), atol=1e-5, rtol=0)


def test_a_latent_on_the_final_norm_is_traced_through_it(tiny_loaded):
    """A latent of an SAE reading ln_final.hook_normalized is traced like a logit: from the last
    residual stream through the final norm (scale held), so every block's nodes count and their
    direct effects plus the bias and constant terms add up to the latent's pre-activation."""
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("fin", _sae(64, seed=3), "memory", site="ln_final.hook_normalized")
    res = attribute(
        runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT), loss=LatentTrace("fin", 4, position=-1), top_k=3
        ),
    )
    cols = compute_columns(
        runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LatentTrace("fin", 4, position=-1)),
    )
    assert {f.layer for f in cols.families if f.kind == "mlp_neuron"} == {0, 1}
    total = sum(
        float(f.columns["direct_effect"].sum())
        for f in cols.families
        if f.kind in ("embedding", "attn_head", "mlp_neuron")
    )
    pre = _forward(runner, captures=("sae.fin.hook_sae_acts_pre",)).captures[0].values[0]
    assert res.loss_values[0] == pytest.approx(float(pre[-1, 4]), abs=1e-5)
    assert total + res.bias_direct_effect[0] + res.constant[0] == pytest.approx(
        res.loss_values[0], abs=1e-4
    )


def test_edits_of_the_sae_input_and_pre_activations_take_effect(sae_runner):
    """An edit of ``hook_sae_input`` is what the SAE reads and what the site carries on (zeroing
    it equals zeroing the site); an edit of ``hook_sae_acts_pre`` is activated again (for a ReLU
    SAE, zeroing a latent's pre-activation equals zeroing the latent). Neither is ignored."""
    base = _forward(sae_runner).captures[0].values
    site = "blocks.1.hook_resid_pre"
    zero_in = _forward(sae_runner, specs.Intervention("sae.res1.hook_sae_input", specs.Zero()))
    zero_site = _forward(sae_runner, specs.Intervention(site, specs.Zero()))
    assert float((zero_in.captures[0].values - base).abs().max()) > 1e-2
    torch.testing.assert_close(
        zero_in.captures[0].values, zero_site.captures[0].values, atol=1e-5, rtol=0
    )
    z = _forward(sae_runner, captures=("sae.res1.hook_sae_acts_post",)).captures[0].values[0]
    i = int(z[4].argmax())

    def zero_latent(site: str) -> torch.Tensor:
        iv = specs.Intervention(site, specs.Zero(), positions=(4,), units=(i,))
        return _forward(sae_runner, iv).captures[0].values

    pre = zero_latent("sae.res1.hook_sae_acts_pre")
    post = zero_latent("sae.res1.hook_sae_acts_post")
    assert float((post - base).abs().max()) > 1e-3
    torch.testing.assert_close(pre, post, atol=1e-6, rtol=0)


def test_admission_counts_the_sae_tensors_of_a_pass(tiny_loaded):
    """The working-memory estimate adds an attached SAE's latent-sized tensors when a pass touches
    its sites (2 per row read, 4 spliced, 6 spliced with gradients), so a request that reads a
    wide SAE is refused before work when they do not fit, while a pass not touching it is not."""
    from tdb_core.admission import sae_bytes_per_row
    from tdb_core.checks import Limits
    from tdb_core.hooks import HookPlan

    d_sae = 2**15
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("wide", _sae(64, d_sae=d_sae, site="blocks.1.hook_resid_pre"), "memory")
    acts = "sae.wide.hook_sae_acts_post"
    T = 10
    per_tensor = T * d_sae * 4
    assert sae_bytes_per_row(runner.schema, T, HookPlan(), grad=False) == 0
    read = HookPlan(observers={acts: lambda t: None})
    assert sae_bytes_per_row(runner.schema, T, read, grad=False) == 2 * per_tensor
    spliced = HookPlan(grad_sites={acts})
    assert sae_bytes_per_row(runner.schema, T, spliced, grad=False) == 4 * per_tensor
    assert sae_bytes_per_row(runner.schema, T, spliced, grad=True) == 6 * per_tensor
    # ids may contain dots: splicing "wide.b" does not count "wide" as spliced
    runner.saes.attach("wide.b", _sae(64, d_sae=8, site="blocks.0.hook_resid_pre"), "memory")
    both = HookPlan(observers={acts: lambda t: None}, grad_sites={"sae.wide.b.hook_sae_acts_post"})
    assert sae_bytes_per_row(runner.schema, T, both, grad=False) == 2 * per_tensor + 4 * T * 8 * 4

    needs: list[int] = []
    estimate = runner.estimate

    def recorded(*a, **k):
        need, describe = estimate(*a, **k)
        needs.append(need)
        return need, describe

    runner.estimate = recorded  # type: ignore[method-assign]
    _forward(runner, captures=("logits",))
    _forward(runner, captures=("logits", acts))
    plain, with_sae = needs
    runner.limits = Limits(max_working_bytes=(plain + with_sae) // 2)
    runner.admission.limits = runner.limits
    passes = runner.stats["passes"]
    with pytest.raises(errors.ResourceExhaustedError, match="working memory"):
        _forward(runner, captures=("logits", acts))
    assert runner.stats["passes"] == passes
    assert _forward(runner, captures=("logits",)).top_logits


def test_a_bf16_sae_on_a_float32_model_splices_within_float32_rounding(tiny_loaded):
    """Found in review: the splice summed the error term in the SAE's dtype, so a bf16 SAE (the
    file's dtype is kept) on a float32 model moved the logits by 4e-3 and the input's gradient
    by 1.8e-3 whenever a gradient or edit spliced it. The error term and the sum now run in the
    wider dtype: both stay within float32 rounding of the model without the SAE."""
    site = "blocks.1.hook_resid_pre"
    loss = LogitDiffLoss((5, 9), (7,))
    plain = ModelRunner(tiny_loaded)
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("half", _sae(64, site=site).to(torch.bfloat16), "memory")

    def grad_pass(r, grad_site):
        return forward(
            r,
            specs.ForwardSpec(
                prompts=(specs.Prompt(text=PROMPT),),
                captures=(specs.Capture("logits"),),
                grad_captures=(specs.Capture(grad_site),),
                loss=loss,
                freeze_norm_scale=False,
            ),
        )

    want = grad_pass(plain, site)
    got = grad_pass(runner, "sae.half.hook_sae_input")

    def rel(a, b):
        return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()

    assert rel(got.captures[0].values, want.captures[0].values) < 1e-5
    assert rel(got.grad_captures[0].values, want.grad_captures[0].values) < 1e-5
