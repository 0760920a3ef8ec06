"""The client commands' rendering (tdb_client.render): whole tokens, TDB's sort, explanations."""

from __future__ import annotations

import json

import numpy as np

from tdb_client import render
from tdb_client.nodes import NodeKind
from tdb_client.types import (
    AttributeResult,
    Explanation,
    ForwardResult,
    Node,
    NodeRow,
    NodeValues,
    TokenScore,
)

TOKENS = ["<|endoftext|>", "When", " Mary", " and", " John", " to"]


def _row(key, kind, site, unit, pos, keypos, direct, explanation=None) -> NodeRow:
    node = Node(key, kind, site, unit, pos, keypos, 0, None, key)
    return NodeRow(
        node,
        [NodeValues(1.0, 2.0, direct, 0.5)],
        [TokenScore(5, " Mary", 1.0)],
        [],
        [],
        explanation,
    )


EXPL = Explanation(
    "toy", "", "blocks.0.mlp.hook_post[7]", "baseline", "baseline", 'the token " to"', 0.62, "",
    {}, {}, 0.0, 0.0,
)  # fmt: skip
RESULT = AttributeResult(
    model="toy",
    tokens=[TOKENS],
    loss_values=[3.0],
    rows=[
        _row(
            "sae.r.hook_sae_acts_post[1,pos=5]",
            NodeKind.SAE_LATENT,
            "sae.r.hook_sae_acts_post",
            1,
            5,
            None,
            0.2,
        ),
        _row(
            "blocks.0.attn.hook_pattern[0,pos=5,key=4]",
            NodeKind.ATTN_HEAD_PAIR,
            "blocks.0.attn.hook_pattern",
            0,
            5,
            4,
            1.5,
        ),
        _row(
            "blocks.0.mlp.hook_post[7,pos=5]",
            NodeKind.MLP_NEURON,
            "blocks.0.mlp.hook_post",
            7,
            5,
            None,
            -0.4,
            EXPL,
        ),
        _row(
            "blocks.0.hook_resid_pre[pos=2]",
            NodeKind.EMBEDDING,
            "blocks.0.hook_resid_pre",
            None,
            2,
            None,
            0.9,
        ),
    ],
    token_attribution=[[0.0] * 6],
    bias_direct_effect=[0.0],
    constant=[0.0],
    loss_position=5,
    nodes_ranked=4,
)


def test_table_sorts_by_direct_effect_descending_over_every_kind():
    """TDB's default: one ranking by direct effect, whatever the node kind."""
    lines = render.attribute_table(RESULT, "direct_effect")
    keys = [line.split()[0] for line in lines[1:] if not line.startswith(" ")]
    assert keys == [
        "blocks.0.attn.hook_pattern[0,pos=5,key=4]",
        "blocks.0.hook_resid_pre[pos=2]",
        "sae.r.hook_sae_acts_post[1,pos=5]",
        "blocks.0.mlp.hook_post[7,pos=5]",
    ]
    asc = render.attribute_table(RESULT, "direct_effect", ascending=True)
    assert asc[1].startswith("blocks.0.mlp.hook_post[7,pos=5]")


def test_head_pair_tokens_are_whole_and_rows_show_explanations():
    """A head pair shows both tokens whole (key -> query); a row with a stored explanation has it,
    with its score, on the next line."""
    text = "\n".join(render.attribute_table(RESULT, "direct_effect"))
    assert "' John' -> ' to'" in text
    assert '    explanation (+0.62, baseline): the token " to"' in text


def test_json_rows_keep_the_explanation():
    """--json: every row has an "explanation" (null without one), and the kind as its string."""
    rows = [json.loads(json.dumps(render.attribute_json_row(r))) for r in RESULT.rows]
    by_key = {r["node"]["key"]: r for r in rows}
    assert by_key["blocks.0.mlp.hook_post[7,pos=5]"]["explanation"]["explanation"] == (
        'the token " to"'
    )
    assert by_key["blocks.0.hook_resid_pre[pos=2]"]["explanation"] is None
    assert by_key["blocks.0.hook_resid_pre[pos=2]"]["node"]["kind"] == "embedding"


def test_attention_heatmap_marks_the_attended_key():
    """One row per query position, a full-weight key drawn '@', and the top keys named."""
    pattern = np.zeros((1, 2, 2, 6), dtype=np.float32)  # [batch, head, q_pos, k_pos]
    pattern[0, 0, :, 0] = 1.0
    pattern[0, 1, 0, 0] = 1.0
    pattern[0, 1, 1, 2] = 0.75
    pattern[0, 1, 1, 4] = 0.25
    site = "blocks.0.attn.hook_pattern"
    out = ForwardResult("toy", [[0] * 6], [TOKENS], {site: pattern}, {}, {site: np.array([[4, 5]])})
    lines = render.attention_heatmap(out, site)
    head1 = lines[lines.index(next(x for x in lines if x.strip().startswith("head 1"))) :]
    assert head1[2].split("|")[1] == "  # : "  # 0.75 -> '#', 0.25 -> ':'
    assert head1[2].split("|")[0].split(maxsplit=1) == ["5", "' to' "]
    assert "-> ' Mary' 0.75, ' John' 0.25" in head1[2]
    assert render.is_attention_pattern(("batch", "head", "q_pos", "k_pos"))
    assert not render.is_attention_pattern(("batch", "pos", "d_mlp"))
