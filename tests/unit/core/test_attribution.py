"""Attribution: columns checked against autograd on the bare HF model, finite differences, the
direct-effect sum rule, and recomputed traced nodes."""

from __future__ import annotations

import pytest
import torch

from tdb_core import errors, specs
from tdb_core.ops.attribute import (
    AttributeSpec,
    DirectionLoss,
    HeadTrace,
    LatentTrace,
    LogitDiffLoss,
    LogProbLoss,
    NeuronTrace,
    Through,
    attribute,
    compute_columns,
)
from tdb_core.ops.forward import forward

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tokens(tiny_runner):
    return tiny_runner.tokens.single_token(" Mary"), tiny_runner.tokens.single_token(" John")


def _ids(runner) -> torch.Tensor:
    return torch.tensor([runner.tokens.encode(specs.Prompt(text=PROMPT))])


def _hf_logit_diff_and_post(runner, tokens, layer, edit=None):
    """Logit diff from the bare HF model, with the MLP post-activations of `layer` as a leaf."""
    model = runner.adapter.model
    leaf = {}

    def pre(mod, args):
        x = args[0].detach().clone()
        if edit is not None:
            x = edit(x)
        x.requires_grad_(True)
        leaf["post"] = x
        return (x,)

    h = model.transformer.h[layer].mlp.c_proj.register_forward_pre_hook(pre)
    try:
        with torch.enable_grad():
            logits = model(input_ids=_ids(runner)).logits[0, -1]
            ld = logits[tokens[0]] - logits[tokens[1]]
    finally:
        h.remove()
    return ld, leaf["post"]


def test_act_times_grad_matches_autograd_and_finite_differences(tiny_runner, tokens):
    """With the norm scale not frozen, a neuron's total effect equals activation x dL/dactivation
    from autograd on the bare HF model, and a central finite difference of the loss."""
    cols = compute_columns(
        tiny_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=LogitDiffLoss(tokens[:1], tokens[1:]),
            freeze_norm_scale=False,
        ),
    )
    fam = cols.family("mlp_neuron", 0)
    ld, post = _hf_logit_diff_and_post(tiny_runner, tokens, 0)
    (g,) = torch.autograd.grad(ld, [post])
    want = post.detach()[0] * g[0]  # [T, d_mlp]
    torch.testing.assert_close(fam.columns["total_effect"][0], want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(float(cols.losses[0]), float(ld.detach()), atol=1e-5, rtol=0)
    # finite differences on the three largest entries, in float64 for a clean estimate
    tiny_runner.adapter.model.double()
    try:
        for flat in want.abs().flatten().topk(3).indices.tolist():
            p, n = divmod(flat, want.shape[1])
            eps = 1e-4

            def shifted(delta, p=p, n=n):
                def edit(x):
                    x = x.clone()
                    x[0, p, n] += delta
                    return x

                return float(_hf_logit_diff_and_post(tiny_runner, tokens, 0, edit)[0].detach())

            act = float(post.detach()[0, p, n])
            fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
            assert abs(act * fd - float(want[p, n])) < 1e-4 * max(1.0, abs(float(want[p, n])))
    finally:
        tiny_runner.adapter.model.float()


def test_direct_effects_sum_to_the_frozen_scale_logit_diff(tiny_runner, tokens):
    """Direct effects of embeddings, heads and neurons plus the bias and constant terms add up to
    the logit difference; the constant is exactly the final LayerNorm bias's share; head-pair
    direct effects sum to their head's."""
    cols = compute_columns(
        tiny_runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss(tokens[:1], tokens[1:])),
    )
    res = attribute(
        tiny_runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss(tokens[:1], tokens[1:])),
    )
    total = sum(
        float(f.columns["direct_effect"].sum())
        for f in cols.families
        if f.kind in ("embedding", "attn_head", "mlp_neuron")
    )
    assert total + res.bias_direct_effect[0] + res.constant[0] == pytest.approx(
        res.loss_values[0], abs=1e-5
    )
    model = tiny_runner.adapter.model
    u = model.lm_head.weight[tokens[0]] - model.lm_head.weight[tokens[1]]
    assert res.constant[0] == pytest.approx(float(model.transformer.ln_f.bias @ u), abs=1e-5)
    # the bias term is every b_O and b_out dotted with the gradient at the last position
    d = cols.grads["blocks.1.hook_resid_post"][0, -1]
    bias = sum(
        float(
            (model.transformer.h[L].attn.c_proj.bias + model.transformer.h[L].mlp.c_proj.bias) @ d
        )
        for L in range(2)
    )
    assert res.bias_direct_effect[0] == pytest.approx(bias, abs=1e-5)
    for L in range(2):
        heads = cols.family("attn_head", L).columns["direct_effect"][0]  # [T, H]
        pairs = cols.family("attn_head_pair", L).columns["direct_effect"][0]  # [H, Tq, Tk]
        torch.testing.assert_close(pairs.sum(-1).T, heads, atol=1e-6, rtol=1e-5)


def test_neuron_trace_gradient_equals_recomputed_preactivation(tiny_runner):
    """Tracing a neuron: the loss is its pre-activation, and the gradient at resid_mid equals
    differentiating the pre-activation recomputed from resid_mid with the ln2 scale held constant."""
    layer, neuron, pos = 1, 77, 6
    cols = compute_columns(
        tiny_runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=NeuronTrace(layer, neuron, pos)),
    )
    cap = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            captures=(
                specs.Capture(f"blocks.{layer}.mlp.hook_pre"),
                specs.Capture(f"blocks.{layer}.hook_resid_mid"),
            ),
        ),
    )
    assert float(cols.losses[0]) == pytest.approx(
        float(cap.captures[0].values[0, pos, neuron]), abs=1e-6
    )
    blk = tiny_runner.adapter.model.transformer.h[layer]
    x = cap.captures[1].values[0, pos].clone().requires_grad_(True)
    mean = x.mean()
    scale = ((x - mean) ** 2).mean().add(blk.ln_2.eps).sqrt().detach()
    pre = ((x - mean) / scale * blk.ln_2.weight + blk.ln_2.bias) @ blk.mlp.c_fc.weight[
        :, neuron
    ] + blk.mlp.c_fc.bias[neuron]
    (want,) = torch.autograd.grad(pre, [x])
    got = cols.grads[f"blocks.{layer}.hook_resid_mid"][0, pos]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # only nodes before the neuron are ranked: no MLP of its own layer
    assert {f.layer for f in cols.families if f.kind == "mlp_neuron"} == {0}


@pytest.mark.parametrize("through", [Through.Q, Through.K, Through.QK])
def test_head_trace_through_q_or_k_cuts_the_other_side(tiny_runner, through):
    """Tracing a score through Q reaches the residual stream only at the query position, through
    K only at the key position, through QK at both; the loss is the captured score."""
    q, k = 13, 3
    cols = compute_columns(
        tiny_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=HeadTrace(1, 2, query_position=q, key_position=k, through=through),
        ),
    )
    cap = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            captures=(specs.Capture("blocks.1.attn.hook_attn_scores"),),
        ),
    )
    assert float(cols.losses[0]) == pytest.approx(
        float(cap.captures[0].values[0, 2, q, k]), abs=1e-5
    )
    g = cols.grads["blocks.1.hook_resid_pre"][0]  # [T, d_model]
    reached = {int(p) for p in torch.nonzero(g.abs().sum(-1)).flatten()}
    assert reached == {Through.Q: {q}, Through.K: {k}, Through.QK: {q, k}}[through]


def test_value_trace_and_other_losses_run(tiny_runner, tokens):
    """V traces, log-prob and direction losses produce finite tables."""
    for loss in (
        HeadTrace(1, 0, query_position=-1, through=Through.V),
        LogProbLoss(tokens[:1]),
        DirectionLoss("blocks.1.hook_resid_mid", torch.ones(64), position=4),
    ):
        res = attribute(
            tiny_runner, AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=loss, top_k=3)
        )
        assert res.rows and all(abs(v) < 1e6 for r in res.rows for v in r.values[0].values())


def test_table_is_union_of_top_and_bottom_k_and_deterministic(tiny_runner, tokens):
    """Every column's top-k (and bottom-k except activation and write magnitude) across all
    families is in the table; running twice gives the same rows in the same order."""
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss(tokens[:1], tokens[1:]), top_k=4
    )
    a, b = attribute(tiny_runner, spec), attribute(tiny_runner, spec)
    assert [r.node for r in a.rows] == [r.node for r in b.rows]
    cols = compute_columns(tiny_runner, spec)
    names = {r.node.key for r in a.rows}
    for col in ("direct_effect", "total_effect"):
        flat = [
            (
                float(v),
                f.decode(
                    tuple(
                        int(i)
                        for i in torch.unravel_index(torch.tensor(j), f.columns[col].shape[1:])
                    )
                ).key,
            )
            for f in cols.families
            for j, v in enumerate(f.columns[col][0].flatten())
        ]
        flat.sort()
        assert {n for _, n in flat[-4:]} <= names and {n for _, n in flat[:4]} <= names
    pairs = attribute(
        tiny_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            top_k=4,
            loss=LogitDiffLoss(tokens[:1], tokens[1:]),
            families=("attn_head_pair",),
        ),
    )
    assert pairs.rows and all(r.node.kind == "attn_head_pair" for r in pairs.rows)
    assert all(r.node.key_position <= r.node.position for r in pairs.rows)
    assert all(r.upvoted for r in a.rows if r.node.kind == "mlp_neuron")


def test_two_rows_baseline_and_ablated_are_aligned(tiny_runner, tokens):
    """With interventions, row 1 is the ablated copy: same nodes, the ablated head silent there."""
    iv = specs.Intervention("blocks.1.attn.hook_z", specs.Zero(), positions=(-1,), units=(0,))
    res = attribute(
        tiny_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=LogitDiffLoss(tokens[:1], tokens[1:]),
            interventions=(iv,),
            top_k=5,
        ),
    )
    assert len(res.loss_values) == 2 and res.loss_values[0] != res.loss_values[1]
    n = len(res.prompts[0].token_ids)
    cols = compute_columns(
        tiny_runner,
        AttributeSpec(
            prompt=specs.Prompt(text=PROMPT),
            loss=LogitDiffLoss(tokens[:1], tokens[1:]),
            interventions=(iv,),
        ),
    )
    head = cols.family("attn_head", 1).columns["activation"]
    assert float(head[1, n - 1, 0]) == 0 and float(head[0, n - 1, 0]) > 0
    assert all(len(r.values) == 2 for r in res.rows)


def test_integrated_gradients_are_complete(tiny_runner, tokens):
    """IG over a layer's neurons sums to L(x) - L(layer zeroed) (completeness), within the error
    of the midpoint rule."""
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT),
        loss=LogitDiffLoss(tokens[:1], tokens[1:]),
        ig_steps=32,
        freeze_norm_scale=False,
        families=("mlp_neuron",),
    )
    cols = compute_columns(tiny_runner, spec)
    ig = float(cols.family("mlp_neuron", 1).columns["total_effect"].sum())
    res = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            interventions=(specs.Intervention("blocks.1.mlp.hook_post", specs.Zero()),),
            top_k=0,
        ),
    )
    zeroed = res.logits_at[0, -1]
    drop = float(cols.losses[0]) - float(zeroed[tokens[0]] - zeroed[tokens[1]])
    assert ig == pytest.approx(drop, abs=2e-3 * max(1.0, abs(drop)))


BAD = [
    (LogitDiffLoss((99999,), (1,)), errors.OutOfRangeError, "vocabulary"),
    (LogitDiffLoss((), (1,)), errors.InvalidArgumentError, "target"),
    (NeuronTrace(5, 0), errors.OutOfRangeError, "layer 5"),
    (NeuronTrace(0, 9999), errors.OutOfRangeError, "neuron 9999"),
    (HeadTrace(0, 9), errors.OutOfRangeError, "head 9"),
    (HeadTrace(0, 1, through=Through.Q), errors.InvalidArgumentError, "key position"),
    (HeadTrace(0, 1, query_position=2, key_position=5), errors.InvalidArgumentError, "after query"),
    (LatentTrace("nope", 3), errors.NotFoundError, "not attached"),
    (
        DirectionLoss("blocks.0.mlp.hook_post", torch.ones(64)),
        errors.InvalidArgumentError,
        "residual",
    ),
    (DirectionLoss("blocks.0.hook_resid_pre", torch.ones(3)), errors.InvalidArgumentError, "shape"),
]


@pytest.mark.parametrize("loss,cls,text", BAD)
def test_bad_specs_are_refused(tiny_runner, loss, cls, text):
    """Bad losses and traces of missing nodes raise the right error with a useful message."""
    with pytest.raises(cls, match=text):
        attribute(tiny_runner, AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=loss))


def test_integrated_gradients_cost_is_limited_before_work(tiny_loaded, tokens):
    """IG whose passes exceed the row budget is RESOURCE_EXHAUSTED before any pass runs."""
    from tdb_core.runner import Limits, ModelRunner

    runner = ModelRunner(tiny_loaded, Limits(max_pass_rows=100))
    with pytest.raises(errors.ResourceExhaustedError, match="integrated gradients"):
        attribute(
            runner,
            AttributeSpec(
                prompt=specs.Prompt(text=PROMPT),
                loss=LogitDiffLoss(tokens[:1], tokens[1:]),
                ig_steps=64,
            ),
        )
    assert runner.stats["passes"] == 0


def test_unequal_prompts_and_unknown_families_are_refused(tiny_runner, tokens):
    loss = LogitDiffLoss(tokens[:1], tokens[1:])
    with pytest.raises(errors.InvalidArgumentError, match="equal length"):
        attribute(
            tiny_runner,
            AttributeSpec(
                prompt=specs.Prompt(text=PROMPT), loss=loss, second=specs.Prompt(text="short")
            ),
        )
    with pytest.raises(errors.InvalidArgumentError, match="unknown node families"):
        attribute(
            tiny_runner, AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=loss, families=("x",))
        )
    with pytest.raises(errors.NotFoundError, match="not available"):
        attribute(
            tiny_runner,
            AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=loss, families=("sae_latent",)),
        )


def test_neuron_rows_read_their_tokens_from_the_hf_weights(tiny_runner, tokens):
    """A neuron row's pushed-up/down output tokens are its W_out row times ln_f's gain times
    W_U (mean-subtracted); its input tokens are the LayerNorm-centred, unit-RMS embeddings read
    through ln_2's gain and its W_in column: both recomputed from the HF modules."""
    spec = AttributeSpec(
        prompt=specs.Prompt(text=PROMPT),
        loss=LogitDiffLoss(tokens[:1], tokens[1:]),
        top_k=3,
        families=("mlp_neuron",),
        node_tokens=4,
    )
    table = attribute(tiny_runner, spec)
    hf = tiny_runner.adapter.model
    emb = hf.transformer.wte.weight.detach().double()  # [vocab, d_model]
    centred = emb - emb.mean(-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True) * emb.shape[-1] ** 0.5
    checked = 0
    for row in table.rows:
        block = hf.transformer.h[row.node.layer]
        n = row.node.unit
        # the row's write is its activation times its W_out row: a negative one flips the tokens
        sign = 1.0 if row.values[0]["activation"] >= 0 else -1.0
        write = sign * block.mlp.c_proj.weight.detach().double()[n]  # Conv1D: [d_mlp, d_model]
        logits = (
            write * hf.transformer.ln_f.weight.double()
        ) @ hf.lm_head.weight.detach().double().T
        logits = logits - logits.mean()
        assert [t.token_id for t in row.upvoted] == logits.topk(4).indices.tolist()
        assert [t.token_id for t in row.downvoted] == logits.topk(4, largest=False).indices.tolist()
        col = block.mlp.c_fc.weight.detach().double()[:, n] * block.ln_2.weight.double()
        scores = unit @ col
        assert [t.token_id for t in row.input_tokens] == scores.topk(4).indices.tolist()
        assert torch.allclose(
            torch.tensor([t.score for t in row.input_tokens], dtype=torch.double),
            scores.topk(4).values,
            rtol=1e-4,
            atol=1e-5,
        )
        checked += 1
    assert checked >= 3
