"""Interventions on node keys: key positions of attention patterns against attention recomputed
from the HF model's own weights, and zeroing a node-table node's key removes exactly the write the
table attributes to it."""

from __future__ import annotations

import pytest
import torch

from tdb_core import errors, nodes, specs
from tdb_core.attribution import AttributeSpec, LogitDiffLoss, compute_columns

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _ids(runner) -> list[int]:
    return list(runner.encode(specs.Prompt(text=PROMPT)))


def _forward(runner, *ivs: specs.Intervention, captures=("logits",)):
    res = runner.forward(
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            captures=tuple(specs.Capture(c) for c in captures),
            interventions=ivs,
        )
    )
    return {c.site: c.values[0] for c in res.captures}


def _zero(sel: nodes.Selector) -> specs.Intervention:
    return specs.Intervention(
        sel.site,
        specs.Zero(),
        positions=sel.positions,
        units=sel.units,
        key_positions=sel.key_positions,
    )


def _hf_attention(model, layer: int, token_ids: list[int]):
    """GPT-2 attention of one layer recomputed from its weights: pattern [H, T, T], values
    [T, H, d_head] and the output projection rows per head [H, d_head, d_model]."""
    cfg = model.config
    assert cfg.scale_attn_weights and not cfg.scale_attn_by_inverse_layer_idx
    block = model.transformer.h[layer]
    seen = {}
    h = block.ln_1.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out.detach()))
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([token_ids]))
    finally:
        h.remove()
    x = seen["x"][0]  # [T, d_model]
    n_heads, d = cfg.n_head, cfg.n_embd
    d_head = d // n_heads
    qkv = x @ block.attn.c_attn.weight + block.attn.c_attn.bias  # Conv1D: [T, 3 d_model]
    q, k, v = (t.reshape(-1, n_heads, d_head) for t in qkv.split(d, dim=-1))  # [T, H, d_head]
    scores = torch.einsum("qhd,khd->hqk", q, k) / d_head**0.5  # [H, T, T]
    T = x.shape[0]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    w_o = block.attn.c_proj.weight.reshape(n_heads, d_head, d)  # [H, d_head, d_model]
    return pattern.detach(), v.detach(), w_o.detach()


def _logits_with_attn_delta(model, layer: int, token_ids: list[int], pos: int, delta):
    """Logits of the bare HF model with ``delta`` added to layer ``layer``'s attention output at
    ``pos``."""

    def hook(mod, args, out):
        a = out[0].clone()
        a[0, pos] += delta
        return (a, *out[1:])

    h = model.transformer.h[layer].attn.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(input_ids=torch.tensor([token_ids])).logits[0]
    finally:
        h.remove()


@pytest.mark.parametrize("keys", [(2,), (0, -1), (1, 3, 4)])
def test_zeroing_pattern_keys_removes_their_share_of_the_heads_write(tiny_runner, keys):
    """Zeroing pattern[h, q, k] for key positions k equals removing sum_k pattern[h, q, k] v[k, h]
    @ W_O[h] from the attention output at q, recomputed from the HF weights (no renormalization:
    the other keys keep their weights)."""
    model, tok = tiny_runner.adapter.model, _ids(tiny_runner)
    layer, head, q = 1, 2, len(tok) - 1
    got = _forward(
        tiny_runner,
        specs.Intervention(
            f"blocks.{layer}.attn.hook_pattern",
            specs.Zero(),
            positions=(-1,),
            units=(head,),
            key_positions=keys,
        ),
    )["logits"]
    pattern, v, w_o = _hf_attention(model, layer, tok)
    ks = [k % len(tok) for k in keys]
    share = sum(pattern[head, q, k] * v[k, head] for k in ks)  # [d_head]
    want = _logits_with_attn_delta(model, layer, tok, q, -(share @ w_o[head]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, _forward(tiny_runner)["logits"], atol=1e-4)


def test_zeroing_a_pattern_row_is_zeroing_z(tiny_runner):
    """A head node's key, pattern[h, q], zeroed removes the head's whole write at q: the same
    logits, bit for bit, as zeroing hook_z[q, h]."""
    head = nodes.attn_head(1, 3, 7)
    by_pattern = _forward(tiny_runner, _zero(head.selector()))["logits"]
    by_z = _forward(
        tiny_runner,
        specs.Intervention("blocks.1.attn.hook_z", specs.Zero(), positions=(7,), units=(3,)),
    )["logits"]
    assert torch.equal(by_pattern, by_z)


def test_key_positions_select_the_k_pos_axis_for_every_operation(tiny_runner):
    """Set, scale, a tensor shaped [positions, units, keys] and the mean over positions edit
    exactly the selected (query, head, key) entries of the pattern, which a capture then reads."""
    site = "blocks.0.attn.hook_pattern"
    base = _forward(tiny_runner, captures=(site,))[site]  # [H, T, T]
    T = base.shape[-1]
    sel = dict(positions=(4, -1), units=(1, 3), key_positions=(0, 2))
    qs, hs, ks = [4, T - 1], [1, 3], [0, 2]
    operand = torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) / 10  # [P, U, K]
    mean = base.mean(1)  # [H, T_k]: every position is real in a one-prompt batch
    cases = [
        (specs.SetValue(0.5), lambda p, h, k: 0.5),
        (specs.Scale(3.0), lambda p, h, k: 3.0 * float(base[h, p, k])),
        (
            specs.SetTensor(operand),
            lambda p, h, k: float(operand[qs.index(p), hs.index(h), ks.index(k)]),
        ),
        (specs.MeanOverPositions(), lambda p, h, k: float(mean[h, k])),
    ]
    for op, value in cases:
        got = _forward(tiny_runner, specs.Intervention(site, op, **sel), captures=(site,))[site]
        want = base.clone()
        for p in qs:
            for h in hs:
                for k in ks:
                    want[h, p, k] = value(p, h, k)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=type(op).__name__)


@pytest.mark.parametrize(
    "iv,cls,text",
    [
        (
            specs.Intervention("blocks.0.attn.hook_z", specs.Zero(), key_positions=(1,)),
            errors.InvalidArgumentError,
            "k_pos axis",
        ),
        (
            specs.Intervention("blocks.0.attn.hook_pattern", specs.Zero(), key_positions=(99,)),
            errors.OutOfRangeError,
            "key position 99",
        ),
        (
            specs.Intervention("blocks.0.attn.hook_pattern", specs.Zero(), key_positions=()),
            errors.InvalidArgumentError,
            "empty key position list",
        ),
        (
            specs.Intervention(
                "blocks.0.attn.hook_pattern",
                specs.SetTensor(torch.zeros(3)),
                positions=(1,),
                key_positions=(0, 1),
            ),
            errors.InvalidArgumentError,
            r"shaped \[1, 4, 2\]",
        ),
    ],
)
def test_bad_key_positions_are_refused(tiny_runner, iv, cls, text):
    with pytest.raises(cls, match=text):
        _forward(tiny_runner, iv)


def test_zeroing_a_table_nodes_key_removes_exactly_its_write(tiny_runner):
    """For nodes of every family of the node table, zeroing the node's key changes what its
    writer adds to the residual stream at the node's position by minus the write the table
    attributes to it (embedding: resid_pre 0; heads and head pairs: attn_out; neurons: mlp_out)."""
    t, d = tiny_runner.single_token(" Mary"), tiny_runner.single_token(" John")
    spec = AttributeSpec(prompt=specs.Prompt(text=PROMPT), loss=LogitDiffLoss((t,), (d,)))
    cols = compute_columns(tiny_runner, spec)
    checked = set()
    for fam in cols.families:
        shape = fam.columns["activation"].shape[1:]
        for flat in (3, fam.columns["activation"][0].numel() // 2):
            idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), shape))
            node = fam.decode(idx)
            assert fam.write is not None
            write = fam.write(0, idx)
            writer = {
                nodes.NodeKind.EMBEDDING: nodes.EMBEDDING_SITE,
                nodes.NodeKind.MLP_NEURON: f"blocks.{node.layer}.hook_mlp_out",
                nodes.NodeKind.ATTN_HEAD: f"blocks.{node.layer}.hook_attn_out",
                nodes.NodeKind.ATTN_HEAD_PAIR: f"blocks.{node.layer}.hook_attn_out",
            }[node.kind]
            before = _forward(tiny_runner, captures=(writer,))[writer]
            sel = nodes.parse_selector(node.key)  # the row's key, as a client would send it
            after = _forward(tiny_runner, _zero(sel), captures=(writer,))[writer]
            torch.testing.assert_close(
                after[node.position] - before[node.position], -write, atol=2e-5, rtol=0
            )
            checked.add(node.kind)
    assert len(checked) == 4
