"""AttributionService.Attribute over a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tdb_client import TdbClientError, losses
from tdb_client import interventions as iv
from tdb_core import specs
from tdb_core.attribution import AttributeSpec, LogitDiffLoss, attribute

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_attribute_over_grpc_equals_in_process(client, tiny_runner):
    """The table over gRPC is the in-process table: same nodes, values and token readouts."""
    res = client.attribute(PROMPT, target=" Mary", distractor=" John", top_k=4)
    t, d = tiny_runner.single_token(" Mary"), tiny_runner.single_token(" John")
    ref = attribute(
        tiny_runner,
        AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((t,), (d,)), top_k=4),
    )
    assert [r.node.key for r in res.rows] == [r.node.key for r in ref.rows]
    assert [r.node.name for r in res.rows] == [r.node.label for r in ref.rows]
    for got, want in zip(res.rows, ref.rows):
        np.testing.assert_allclose(
            [got.values[0].direct_effect, got.values[0].total_effect],
            [want.values[0]["direct_effect"], want.values[0]["total_effect"]],
            rtol=1e-5,
            atol=1e-6,
        )
        assert [x.token for x in got.upvoted] == [x.token for x in want.upvoted]
    assert res.loss_values[0] == pytest.approx(ref.loss_values[0], abs=1e-5)
    assert len(res.token_attribution[0]) == len(res.tokens[0])


def test_traces_and_two_row_tables(client):
    """Neuron and head traces run; baseline-vs-ablated tables have two values per node."""
    res = client.attribute(PROMPT, loss=losses.neuron(1, 3, position=5), top_k=3)
    assert res.loss_position == 5 and all(r.node.layer in (None, 0, 1) for r in res.rows)
    res = client.attribute(PROMPT, loss=losses.head(1, 0, -1, 2, "q"), top_k=3)
    assert res.rows
    res = client.attribute(
        PROMPT,
        target=" Mary",
        distractor=" John",
        top_k=3,
        interventions=[iv.zero("blocks.1.attn.hook_z[head=0]")],
    )
    assert len(res.loss_values) == 2 and all(len(r.values) == 2 for r in res.rows)


@pytest.mark.parametrize(
    "kwargs,code,text",
    [
        (
            dict(target=" Mary John", distractor=" John"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not one",
        ),
        (dict(target=[99999], distractor=" John"), grpc.StatusCode.OUT_OF_RANGE, "vocabulary"),
        (dict(loss=losses.latent("nope", 1)), grpc.StatusCode.NOT_FOUND, "not attached"),
        (dict(loss=losses.neuron(0, 5000)), grpc.StatusCode.OUT_OF_RANGE, "neuron 5000"),
        (
            dict(target=" Mary", distractor=" John", top_k=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "top_k",
        ),
    ],
)
def test_bad_attribute_requests(client, kwargs, code, text):
    """Bad specs get INVALID_ARGUMENT / OUT_OF_RANGE / NOT_FOUND with clear messages."""
    with pytest.raises(TdbClientError) as e:
        client.attribute(PROMPT, **kwargs)
    assert e.value.code == code and text in e.value.details
