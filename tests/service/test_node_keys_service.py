"""Node keys over the wire, on the embedded toy model as `tdb serve` serves it (with its SAE and
shipped explanations): a node-table row's key, passed unchanged, is an intervention that removes
exactly that node's write and a node ExplainNode explains."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tdb.v1 import common_pb2 as cpb
from tdb_client import NodeKind, TdbClient, TdbClientError
from tdb_client import interventions as iv

PROMPT = "When Mary and John went to the store, John gave a drink to"
TEXTS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "After Alice and Bob arrived at the park, Bob handed the book to Alice.",
    "Random words: river cloud seven mirror river cloud seven mirror",
    "Emma put the egg in the box. When I opened the box, I found an egg.",
] * 3


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from services.server import build_server
    from services.settings import Settings

    db = tmp_path_factory.mktemp("catalog") / "explanations.sqlite"
    svc = build_server(Settings(host="127.0.0.1", port=0, explanations_db=str(db)))
    with TdbClient(f"127.0.0.1:{svc.port}", timeout=120) as c:
        yield c
    svc.stop(0)


@pytest.fixture(scope="module")
def table(toy):
    """Every head, head pair and neuron of the IOI prompt (top_k covers them all)."""
    return toy.attribute(
        PROMPT,
        target=" Mary",
        distractor=" John",
        top_k=1000,
        families=[NodeKind.ATTN_HEAD, "attn_head_pair", "mlp_neuron"],
        node_tokens=0,
    )


def _ablate(c, sets):
    return c.ablate(PROMPT, sets, target=" Mary", distractor=" John")


def test_head_row_key_zeroed_equals_zeroing_its_z_and_explains_the_head(toy, table):
    """The L0H0 row at the last position: its key zeroed via Ablate drops the logit difference
    exactly as zeroing blocks.0.attn.hook_z[head=0] at that position; the same key explains
    head 0 (its unit-level node)."""
    last = len(table.tokens[0]) - 1
    row = next(
        r
        for r in table.rows
        if r.node.kind is NodeKind.ATTN_HEAD and r.node.layer == 0 and r.node.unit == 0
        if r.node.position == last
    )
    assert row.node.key == f"blocks.0.attn.hook_pattern[0,pos={last}]"
    assert row.node.name == f"attn_L0_H0@{last}" and row.node.family == "attn_head"
    res = _ablate(
        toy,
        {
            "row": [iv.zero(row.node.key)],
            "z": [iv.zero(f"blocks.0.attn.hook_z[head=0,pos={last}]")],
        },
    )
    drop = res.row("row").logit_diff_change
    assert drop == pytest.approx(res.row("z").logit_diff_change, abs=1e-4)
    assert drop < -1.0, "L0H0 at the last token carries IOI in toy-gpt2"
    (expl,) = toy.explain(row.node.key, dataset=TEXTS, save=False, window_len=16)
    assert expl.node == "blocks.0.attn.hook_pattern[0]"
    (recs,) = toy.activation_records(row.node, dataset=TEXTS, window_len=16)
    assert recs.node == "blocks.0.attn.hook_pattern[0]" and recs.kind


def test_pair_rows_are_key_position_interventions(toy, table):
    """A head-pair row's key zeroes the head's attention from its query to its key only: the
    same as the raw message with key_positions, different from zeroing the whole row; it
    explains its head."""
    pair = max(
        (r for r in table.rows if r.node.kind is NodeKind.ATTN_HEAD_PAIR),
        key=lambda r: abs(r.values[0].total_effect),
    )
    n = pair.node
    assert (
        n.key
        == f"blocks.{n.layer}.attn.hook_pattern[{n.unit},pos={n.position},key={n.key_position}]"
    )
    raw = cpb.Intervention(
        site=f"blocks.{n.layer}.attn.hook_pattern",
        units=[n.unit],
        positions=[n.position],
        key_positions=[n.key_position],
        zero=cpb.ZeroOp(),
    )
    res = _ablate(
        toy,
        {
            "pair": [iv.zero(n.key)],
            "raw": [raw],
            "head": [iv.zero(n.node().unit_node().at(n.position))],
        },
    )
    assert res.row("pair").logit_diff_change == res.row("raw").logit_diff_change
    assert res.row("pair").logit_diff_change != 0.0
    assert res.row("pair").logit_diff_change != pytest.approx(
        res.row("head").logit_diff_change, abs=1e-6
    )
    (expl,) = toy.explain(n, dataset=TEXTS, save=False, window_len=16)
    assert expl.node == f"blocks.{n.layer}.attn.hook_pattern[{n.unit}]"


def test_neuron_rows_zero_their_neuron_and_find_its_shipped_explanation(toy, table):
    """A neuron row's key zeroes exactly that neuron at that position (as the old selector
    spelling does); its key finds the neuron's shipped explanation, which the row carries."""
    row = next(r for r in table.rows if r.node.kind is NodeKind.MLP_NEURON and r.explanation)
    n = row.node
    res = _ablate(
        toy,
        {
            "row": [iv.zero(n.key)],
            "old": [
                iv.zero(f"blocks.{n.layer}.mlp.hook_post[neuron={n.unit},position={n.position}]")
            ],
        },
    )
    assert res.row("row").logit_diff_change == res.row("old").logit_diff_change
    listed = toy.list_explanations(node=n.key)
    assert [e.node for e in listed] == [f"blocks.{n.layer}.mlp.hook_post[{n.unit}]"]
    assert listed[0].explanation == row.explanation.explanation
    (scored,) = [toy.score_explanation(n.key, listed[0].explanation, dataset=TEXTS, window_len=16)]
    assert scored.node == listed[0].node


def test_sae_latent_keys_and_old_names(toy):
    """SAE latent keys explain their latent; an old display name still works, as its key."""
    out = toy.forward(PROMPT, capture=["sae.toy-res.hook_sae_acts_post"])
    acts = out.activations["sae.toy-res.hook_sae_acts_post"][0]  # [T, d_sae]
    p, f = np.unravel_index(int(np.argmax(acts)), acts.shape)
    key = f"sae.toy-res.hook_sae_acts_post[{f},pos={p}]"
    listed = toy.list_explanations(node=key)
    assert all(e.node == f"sae.toy-res.hook_sae_acts_post[{f}]" for e in listed)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        legacy = iv.zero(f"sae_toy-res_F{f}@{p}")
    res = _ablate(toy, {"key": [iv.zero(key)], "legacy": [legacy]})
    assert res.row("key").logit_diff_change == res.row("legacy").logit_diff_change
    (recs,) = toy.activation_records(f"mlp_L1_N3@{p}", dataset=TEXTS, window_len=16)
    assert recs.node == "blocks.1.mlp.hook_post[3]"


@pytest.mark.parametrize(
    "node,code,text",
    [
        ("blocks.1.mlp.hook_post[1|2]", grpc.StatusCode.INVALID_ARGUMENT, "SITE[UNIT,pos=P"),
        ("blocks.1.hook_resid_pre[pos=3]", grpc.StatusCode.INVALID_ARGUMENT, "names no unit"),
        ("blocks.9.mlp.hook_post[3]", grpc.StatusCode.OUT_OF_RANGE, "layer 9"),
        ("blocks.1.mlp.hook_post[99999,pos=2]", grpc.StatusCode.OUT_OF_RANGE, "99999"),
    ],
)
def test_bad_keys_get_clear_errors(toy, node, code, text):
    with pytest.raises(TdbClientError) as e:
        toy.activation_records(node, dataset=TEXTS, window_len=16)
    assert e.value.code == code and text in e.value.details


def test_key_positions_on_a_site_without_keys_is_invalid(toy):
    with pytest.raises(TdbClientError) as e:
        toy.forward(PROMPT, interventions=[iv.zero("blocks.0.attn.hook_z[0,key=1]")])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "k_pos" in e.value.details
