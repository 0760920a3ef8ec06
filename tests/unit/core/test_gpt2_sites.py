"""GPT-2 conformance: every site equals an independent computation from the HF weights (fp32, 1e-5).

The reference below is written from the GPT-2 paper's math using only the checkpoint's tensors
(Conv1D weights are ``[in, out]``); it shares no code with the adapter or the hook engine.
"""

from __future__ import annotations

import math

import pytest
import torch

from tdb_core import specs
from tdb_core.ops.forward import forward

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The quick brown fox"]


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float):
    """(scale, normalized before gain and bias as TransformerLens's hook_normalized, output)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    scale = torch.sqrt(var + eps)
    normalized = (x - mean) / scale
    return scale, normalized, normalized * w + b


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def reference_gpt2(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """All sites of one prompt, computed by hand from the state dict. Shapes as the schema."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    H, D = cfg.n_head, cfg.n_embd
    dh = D // H
    T = len(ids)
    eps = cfg.layer_norm_epsilon
    acts: dict[str, torch.Tensor] = {}
    tok = sd["transformer.wte.weight"][ids]  # [T, D]
    pos = sd["transformer.wpe.weight"][:T]
    acts["hook_embed"], acts["hook_pos_embed"] = tok, pos
    x = tok + pos
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for L in range(cfg.n_layer):
        p = f"transformer.h.{L}."
        acts[f"blocks.{L}.hook_resid_pre"] = x
        s1, u1, n1 = _ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
        acts[f"blocks.{L}.ln1.hook_scale"], acts[f"blocks.{L}.ln1.hook_normalized"] = s1, u1
        qkv = n1 @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]  # [T, 3D]
        q, k, v = (t.reshape(T, H, dh) for t in qkv.split(D, dim=-1))
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh)
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = scores.softmax(-1)
        z = torch.einsum("hqk,khd->qhd", pattern, v)
        w_o = sd[p + "attn.c_proj.weight"].reshape(H, dh, D)
        result = torch.einsum("qhd,hdm->qhm", z, w_o)
        attn_out = result.sum(1) + sd[p + "attn.c_proj.bias"]
        for name, val in [
            ("attn.hook_q", q),
            ("attn.hook_k", k),
            ("attn.hook_v", v),
            ("attn.hook_attn_scores", scores),
            ("attn.hook_pattern", pattern),
            ("attn.hook_z", z),
            ("attn.hook_result", result),
            ("hook_attn_out", attn_out),
        ]:
            acts[f"blocks.{L}.{name}"] = val
        x = x + attn_out
        acts[f"blocks.{L}.hook_resid_mid"] = x
        s2, u2, n2 = _ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
        acts[f"blocks.{L}.ln2.hook_scale"], acts[f"blocks.{L}.ln2.hook_normalized"] = s2, u2
        pre = n2 @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"]
        post = _gelu_new(pre)
        mlp_out = post @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
        acts[f"blocks.{L}.mlp.hook_pre"], acts[f"blocks.{L}.mlp.hook_post"] = pre, post
        acts[f"blocks.{L}.hook_mlp_out"] = mlp_out
        x = x + mlp_out
        acts[f"blocks.{L}.hook_resid_post"] = x
    sf, uf, nf = _ln(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"], eps)
    acts["ln_final.hook_scale"], acts["ln_final.hook_normalized"] = sf, uf
    acts["logits"] = nf @ sd["transformer.wte.weight"].T
    return acts


def _assert_site_close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got = got.double()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{name}: -inf entries differ"
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=1e-5, msg=name)


def test_every_site_matches_reference(tiny_runner):
    """Each site of every layer equals the hand-written reference within 1e-5 (fp32)."""
    res = forward(
        tiny_runner,
        specs.ForwardSpec(prompts=(specs.Prompt(text=PROMPTS[0]),), captures=(specs.Capture("*"),)),
    )
    ref = reference_gpt2(tiny_runner.adapter.model, list(res.prompts[0].token_ids))
    got = {c.site: c.values[0] for c in res.captures}
    assert set(got) == set(ref), set(got) ^ set(ref)
    for name, want in ref.items():
        _assert_site_close(name, got[name], want)


def test_capture_leaves_logits_bit_identical(tiny_runner):
    """Logits with every site captured are bit-identical to logits with no capture at all."""
    prompts = tuple(specs.Prompt(text=p) for p in PROMPTS)
    plain = forward(
        tiny_runner, specs.ForwardSpec(prompts=prompts, captures=(specs.Capture("logits"),))
    )
    hooked = forward(
        tiny_runner,
        specs.ForwardSpec(prompts=prompts, captures=(specs.Capture("*"), specs.Capture("logits"))),
    )
    assert torch.equal(plain.captures[0].values, hooked.captures[-1].values)
    assert torch.equal(plain.logits_at, hooked.logits_at)


def test_logits_equal_hf_eager_model(tiny_runner, tiny_gpt2_dir):
    """The served model computes what HF's own eager GPT-2 computes, and sdpa within 1e-5."""
    from transformers import AutoModelForCausalLM

    res = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[0]),), captures=(specs.Capture("logits"),)
        ),
    )
    ids = torch.tensor([res.prompts[0].token_ids])
    for impl in ("eager", "sdpa"):
        hf = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, attn_implementation=impl).eval()
        with torch.no_grad():
            want = hf(ids).logits[0]
        if impl == "eager":
            assert torch.equal(res.captures[0].values[0], want)
        else:
            torch.testing.assert_close(res.captures[0].values[0], want, atol=1e-5, rtol=1e-5)


def test_batch_of_different_lengths_matches_single_prompts(tiny_runner):
    """Right-padded batching gives each prompt the values it gets alone (1e-5), padding zeroed."""
    both = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=p) for p in PROMPTS), captures=(specs.Capture("*"),)
        ),
    )
    lengths = [len(p.token_ids) for p in both.prompts]
    assert lengths[0] != lengths[1]
    for i, text in enumerate(PROMPTS):
        alone = forward(
            tiny_runner,
            specs.ForwardSpec(prompts=(specs.Prompt(text=text),), captures=(specs.Capture("*"),)),
        )
        for cb, ca in zip(both.captures, alone.captures, strict=True):
            n = lengths[i]
            got, want = cb.values[i], ca.values[0]
            if "attn_scores" in cb.site or "pattern" in cb.site:
                sl = got[:, :n, :n]
                _assert_site_close(cb.site, sl, want.double())
                pad = got[:, n:, :]
            else:
                _assert_site_close(cb.site, got[:n], want.double())
                pad = got[n:]
            fill = float("-inf") if "attn_scores" in cb.site else 0.0
            assert bool((pad == fill).all()), f"{cb.site}: padding not filled with {fill}"
        assert both.top_logits[i][0].token_ids == alone.top_logits[0][0].token_ids


@pytest.mark.parametrize(
    "site",
    ["blocks.1.mlp.hook_post", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_z", "hook_embed"],
)
def test_reductions_select_positions_units_and_top_k(tiny_runner, site):
    """positions (negative from the end), units and top-k reduce server-side to the right values."""
    full = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[1]),), captures=(specs.Capture(site),)
        ),
    ).captures[0]
    red = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[1]),),
            captures=(
                specs.Capture(site, positions=(0, -1), units=(1, 3)),
                specs.Capture(site, positions=(-1,), top_k=specs.TopK(2)),
                specs.Capture(
                    site, top_k=specs.TopK(2, specs.TopKMode.SMALLEST), dtype=torch.float16
                ),
            ),
        ),
    ).captures
    v = full.values[0]
    T = v.shape[full.dims.index("q_pos") if "q_pos" in full.dims else full.dims.index("pos")]
    kind_dims = full.dims
    pos_axis = kind_dims.index("q_pos" if "q_pos" in kind_dims else "pos")
    unit_axis = 0 if kind_dims[0] == "head" else 1
    sel = v.index_select(pos_axis, torch.tensor([0, T - 1])).index_select(
        unit_axis, torch.tensor([1, 3])
    )
    assert torch.equal(red[0].values[0], sel)
    assert red[0].positions.tolist() == [[0, T - 1]]
    last = v.index_select(pos_axis, torch.tensor([T - 1]))
    vals, idx = last.topk(2, dim=-1)
    assert torch.equal(red[1].values[0], vals) and torch.equal(red[1].indices[0], idx)
    svals, _ = v.topk(2, dim=-1, largest=False)
    assert red[2].values.dtype == torch.float16
    assert torch.equal(red[2].values[0], svals.half())


def test_glob_resolves_in_forward_order(tiny_runner):
    """A glob such as blocks.*.mlp.hook_post captures every matching site, in layer order."""
    res = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text="hi"),), captures=(specs.Capture("blocks.*.mlp.hook_post"),)
        ),
    )
    assert [c.site for c in res.captures] == ["blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post"]


def test_read_scores_are_masked_in_place_with_the_same_bits(tiny_runner):
    """A read-only capture of attention scores writes its -inf into the scores (no copy); an
    identity edit at the same site takes the copying path. Both give the same capture (padding
    included) and the same logits as a pass that reads nothing."""
    prompts = tuple(specs.Prompt(text=t) for t in PROMPTS)
    site = "blocks.1.attn.hook_attn_scores"

    def run(*interventions: specs.Intervention, capture: bool = True) -> specs.ForwardResult:
        return forward(
            tiny_runner,
            specs.ForwardSpec(
                prompts=prompts,
                captures=(specs.Capture(site), specs.Capture("logits")) if capture else (),
                interventions=interventions,
                top_k=5,
            ),
        )

    read = run()
    edited = run(specs.Intervention(site, specs.Scale(1.0)))
    assert torch.equal(read.captures[0].values, edited.captures[0].values)
    assert torch.equal(read.captures[1].values, edited.captures[1].values)
    assert bool(torch.isneginf(read.captures[0].values[0, 0, 0, 1:]).all())  # causal
    assert read.top_logits == run(capture=False).top_logits
