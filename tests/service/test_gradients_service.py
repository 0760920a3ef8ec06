"""Gradient captures, attribution patching, GetWeights and LogitLens over a real channel: the
client gets what the operations compute in process, and bad requests get the right status."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from tdb_client import TdbClientError, WeightView, losses
from tdb_client import interventions as iv
from tdb_core import specs
from tdb_core.ops import attribute as A
from tdb_core.ops.forward import forward
from tdb_core.ops.lens import LensSpec, logit_lens
from tdb_core.ops.weights import WeightsSpec, get_weights

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def test_forward_gradients_equal_in_process(client, tiny_runner):
    """Forward with a loss and grad captures returns the in-process gradients and losses (two
    prompts, per-prompt loss positions); logits are unchanged."""
    ids = [tiny_runner.tokens.single_token(t, "t") for t in (" Mary", " John")]
    got = client.forward(
        [CLEAN, "The quick brown fox"],
        capture=["logits"],
        loss=losses.logit_diff(" Mary", " John"),
        grad=["blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern"],
        top_k=3,
    )
    want = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=CLEAN), specs.Prompt(text="The quick brown fox")),
            loss=A.LogitDiffLoss((ids[0],), (ids[1],)),
            grad_captures=(
                specs.Capture("blocks.0.hook_resid_pre"),
                specs.Capture("blocks.1.attn.hook_pattern"),
            ),
        ),
    )
    assert got.loss_values == pytest.approx(list(want.loss_values), abs=1e-6)
    for c in want.grad_captures:
        np.testing.assert_array_equal(got.grads[c.site], c.values.numpy())
    plain = client.forward([CLEAN, "The quick brown fox"], capture=["logits"], top_k=3)
    np.testing.assert_array_equal(got.activations["logits"], plain.activations["logits"])


def test_ablate_rows_carry_gradients(client):
    """Ablate returns the loss and gradient of every row; a zeroed head's row differs."""
    res = client.ablate(
        CLEAN,
        {"L1H0": [iv.zero("blocks.1.attn.hook_z[head=0]")]},
        target=" Mary",
        distractor=" John",
        loss=losses.logit_diff(" Mary", " John"),
        grad=["blocks.1.hook_resid_pre"],
    )
    assert len(res.loss_values) == 2
    assert res.loss_values[0] == pytest.approx(res.rows[0].logit_diff, abs=1e-5)
    assert res.loss_values[1] == pytest.approx(res.rows[1].logit_diff, abs=1e-5)
    g = res.grads["blocks.1.hook_resid_pre"]
    assert g.shape[0] == 2 and not np.array_equal(g[0], g[1])


def test_patch_sweep_attribution_method(client):
    """method='attribution' comes back labelled, with exact's clean and corrupted differences."""
    kw = dict(site="attn.hook_z", target=" Mary", distractor=" John", by="head")
    exact = client.patch_sweep(CLEAN, CORRUPT, **kw)
    atp = client.patch_sweep(CLEAN, CORRUPT, method="attribution", **kw)
    assert (exact.method, atp.method) == ("exact", "attribution")
    assert atp.recovered.shape == exact.recovered.shape
    assert atp.clean_logit_diff == pytest.approx(exact.clean_logit_diff, abs=1e-5)
    with pytest.raises(ValueError):
        client.patch_sweep(CLEAN, CORRUPT, method="guess", **kw)


def test_get_weights_and_views(client, tiny_runner):
    """GetWeights streams the parameters (sliced) and views the operation computes."""
    w = client.weights(
        ["W_E", "blocks.*.attn.W_Q", "blocks.1.mlp.W_out"],
        heads=[1],
        neurons=[3, 4],
        views=[WeightView("neuron_logits", 1, 3), WeightView("head_qk", 0, 2, 5, 6)],
    )
    want = get_weights(
        tiny_runner,
        WeightsSpec(("W_E", "blocks.*.attn.W_Q", "blocks.1.mlp.W_out"), (1,), (3, 4)),
    )
    for x in want:
        np.testing.assert_array_equal(w[x.name], x.values.numpy())
    assert w.kept["blocks.0.attn.W_Q"] == [1] and w.dims["blocks.0.attn.W_Q"][0] == "head"
    assert w["blocks.1.mlp.W_out"].shape == (2, 64)
    assert w["neuron_logits[blocks.1.mlp.W_out[3]]"].shape == (tiny_runner.schema.dims.d_vocab,)
    assert w["head_qk[blocks.0.attn[2]][5->6]"].shape == ()
    everything = client.weights("*", dtype="float16")
    assert everything["W_U"].dtype == np.float16


def test_logit_lens_equals_in_process(client, tiny_runner):
    """LogitLens returns the grid the operation computes; frozen scale is labelled."""
    res = client.logit_lens(CLEAN, positions=[-2, -1], top_k=2, scale="frozen")
    want = logit_lens(tiny_runner, LensSpec(specs.Prompt(text=CLEAN), positions=(-2, -1), top_k=2))
    assert res.scale == "frozen" and res.layers == [0, 1]
    assert res.positions == list(want.positions)
    recomputed = client.logit_lens(CLEAN, positions=[-2, -1], top_k=2)
    for i, row in enumerate(recomputed.grid):
        for j, cell in enumerate(row):
            w = want.cells[i * 2 + j]
            assert cell.token_ids == list(w.token_ids)
            assert cell.logits == pytest.approx(list(w.logits), abs=1e-5)
    assert recomputed.cell(1, want.positions[-1]).tokens == list(want.cells[-1].tokens)


@pytest.mark.parametrize(
    ("call", "code", "words"),
    [
        (lambda c: c.forward(CLEAN, grad=["blocks.0.hook_resid_pre"]), "INVALID_ARGUMENT", "loss"),
        (
            lambda c: c.forward(
                CLEAN, loss=losses.neuron(0, 1, 3), grad=["blocks.1.hook_resid_pre"]
            ),
            "INVALID_ARGUMENT",
            "zero by causality",
        ),
        (lambda c: c.weights("W_Q"), "NOT_FOUND", "no parameter"),
        (lambda c: c.weights("W_E", heads=[9]), "OUT_OF_RANGE", "head 9"),
        (lambda c: c.logit_lens(CLEAN, layers=[7]), "OUT_OF_RANGE", "layer 7"),
        (lambda c: c.logit_lens(CLEAN, site="logits"), "INVALID_ARGUMENT", "residual"),
    ],
)
def test_bad_requests_get_clear_errors(client, call, code, words):
    """Bad gradient, weight and lens requests: status and message; the server keeps serving."""
    with pytest.raises(TdbClientError) as e:
        call(client)
    assert e.value.code == getattr(grpc.StatusCode, code)
    assert words in e.value.details
    assert client.forward(CLEAN, top_k=1).top_logits


def test_loss_message_reaches_attribute_semantics(tiny_runner):
    """The Loss message converts to the same loss as AttributeRequest's oneof."""
    from services import convert
    from tdb.v1 import attribution_pb2 as apb
    from tdb_client.client import loss_message

    msg = loss_message(losses.head(1, 2, -1, 3, "q"))
    loss = convert.loss_from_pb(tiny_runner, msg)
    assert loss == A.HeadTrace(1, 2, -1, 3, A.Through.Q)
    assert isinstance(msg, apb.Loss)
    vec = loss_message(losses.direction("blocks.0.hook_resid_post", np.ones(64, np.float32)))
    got = convert.loss_from_pb(tiny_runner, vec)
    assert isinstance(got, A.DirectionLoss) and torch.equal(got.vector, torch.ones(64))
