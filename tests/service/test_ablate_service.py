"""Ablate and PatchSweep over a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tdb_client import TdbClientError
from tdb_client import interventions as iv

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


def test_ablate_compares_sets_with_baseline(client):
    """Each set's row differs from the baseline as Forward under the same interventions does."""
    sets = {
        "L1H0": [iv.zero("blocks.1.attn.hook_z[head=0,pos=-1]")],
        "L0 neurons": [iv.zero("blocks.0.mlp.hook_post[1|2|3]")],
    }
    res = client.ablate(
        CLEAN,
        sets,
        target=" Mary",
        distractor=" John",
        top_k=3,
        capture=["blocks.1.attn.hook_z"],
        positions=[-1],
    )
    assert [r.name for r in res.rows] == ["baseline", "L1H0", "L0 neurons"]
    fwd = client.forward(CLEAN, interventions=sets["L1H0"], top_k=3)
    assert res.row("L1H0").top.token_ids == fwd.top_logits[0][0].token_ids
    np.testing.assert_allclose(res.row("L1H0").top.logits, fwd.top_logits[0][0].logits, atol=1e-5)
    assert res.rows[0].logit_diff_change == 0 and res.rows[0].kl_from_baseline == 0
    assert res.activations["blocks.1.attn.hook_z"].shape == (3, 1, 4, 16)
    assert np.all(res.activations["blocks.1.attn.hook_z"][1, 0, 0] == 0)


def test_ablate_bad_specs(client):
    """Multi-token targets, missing distractors and bad interventions are INVALID_ARGUMENT/NOT_FOUND."""
    with pytest.raises(TdbClientError) as e:
        client.ablate(
            CLEAN,
            {"a": [iv.zero("blocks.0.hook_resid_pre")]},
            target=" Mary John",
            distractor=" John",
        )
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "not one" in e.value.details
    with pytest.raises(TdbClientError) as e:
        client.ablate(CLEAN, {"a": [iv.zero("blocks.0.hook_resid_pre")]}, target=" Mary")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TdbClientError) as e:
        client.ablate(CLEAN, {"a": [iv.zero("blocks.0.nope")]})
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TdbClientError) as e:
        client.ablate(CLEAN, {"a": [iv.patch("blocks.0.hook_resid_pre")]}, sources=["short"])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "equal lengths" in e.value.details


def test_patch_sweep_over_grpc(client):
    """PatchSweep returns the [layer, position] grid; the differing token recovers 100% at layer 0."""
    res = client.patch_sweep(
        CLEAN, CORRUPT, site="hook_resid_pre", target=" Mary", distractor=" John"
    )
    assert res.recovered.shape == (2, len(res.clean_tokens))
    j = int(np.argmax(res.recovered[0]))
    assert res.clean_tokens[j] != res.corrupted_tokens[j]
    assert abs(res.recovered[0, j] - 1) < 1e-5
    heads = client.patch_sweep(
        CLEAN,
        CORRUPT,
        site="attn.hook_z",
        target=" Mary",
        distractor=" John",
        by="head",
        layers=[1],
    )
    assert heads.recovered.shape == (1, 4) and heads.layers == [1]
