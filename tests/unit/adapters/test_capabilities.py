"""Attribute and SAE splicing run unchanged on every architecture, with their invariants."""

from __future__ import annotations

import pytest
import torch

from tdb_core import specs
from tdb_core.attribution import (
    AttributeSpec,
    HeadTrace,
    LatentTrace,
    LogitDiffLoss,
    NeuronTrace,
    Through,
    attribute,
    compute_columns,
)
from tdb_core.runner import ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, build_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _tokens(runner):
    ids = runner.encode(specs.Prompt(text=PROMPT))
    return (ids[1],), (ids[3],)


def test_direct_effects_add_up_on_every_architecture(arch_runner, arch_case):
    """Direct effects of embeddings, heads and neurons + biases + constant = the logit difference,
    and act x grad of neurons equals plain autograd through the engine."""
    t, d = _tokens(arch_runner)
    spec = AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss(t, d))
    cols = compute_columns(arch_runner, spec)
    res = attribute(arch_runner, spec)
    total = sum(
        float(f.columns["direct_effect"].sum())
        for f in cols.families
        if f.kind in ("embedding", "attn_head", "mlp_neuron")
    )
    assert total + res.bias_direct_effect[0] + res.constant[0] == pytest.approx(
        res.loss_values[0], abs=2e-5
    )
    heads = cols.family("attn_head", 0).columns["direct_effect"][0]
    pairs = cols.family("attn_head_pair", 0).columns["direct_effect"][0]
    torch.testing.assert_close(pairs.sum(-1).T, heads, atol=1e-5, rtol=1e-4)
    for loss in (
        NeuronTrace(1, 3, position=5),
        HeadTrace(1, 0, -1, 2, Through.QK),
        HeadTrace(1, 1, -1, None, Through.V),
    ):
        assert attribute(
            arch_runner, AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=loss, top_k=3)
        ).rows


def test_sae_splice_on_every_architecture(arch_loaded):
    """An SAE on hook_mlp_out: capturing latents leaves logits bit-identical; a no-op splice moves
    them by <= 1e-5; a latent trace runs."""
    runner = ModelRunner(arch_loaded)
    d_model = runner.schema.dims.d_model
    g = torch.Generator().manual_seed(0)
    sae = build_sae(
        SaeConfig(d_in=d_model, d_sae=48, architecture=ReluArch(), site="blocks.0.hook_mlp_out"),
        {
            "W_enc": torch.randn(d_model, 48, generator=g),
            "b_enc": torch.zeros(48),
            "W_dec": torch.randn(48, d_model, generator=g) * 0.1,
            "b_dec": torch.zeros(d_model),
        },
    )
    runner.attach_sae("s", sae, "memory")

    def logits(*ivs, caps=()):
        return (
            runner.forward(
                specs.ForwardSpec(
                    prompts=(specs.Prompt(text=PROMPT),),
                    interventions=ivs,
                    captures=(specs.Capture("logits"), *(specs.Capture(c) for c in caps)),
                )
            )
            .captures[0]
            .values
        )

    plain = logits()
    assert torch.equal(logits(caps=("sae.s.hook_sae_acts_post",)), plain)
    torch.testing.assert_close(
        logits(specs.Intervention("sae.s.hook_sae_acts_post", specs.Scale(1.0))),
        plain,
        atol=1e-5,
        rtol=0,
    )
    res = attribute(
        runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LatentTrace("s", 0, 4), top_k=2),
    )
    assert res.rows
