"""GetWeights on every architecture: the returned parameters are the numbers the model computes
with. Each is checked by recomputing a site from the weights and the sites before it, against the
site the engine captured (itself checked against the float64 reference in test_conformance):
embeddings, queries and keys at position 0 (where rotary embeddings are the identity), values, per
head writes, MLP pre-activations and outputs, logits."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)
from tdb_core.ops.forward import forward
from tdb_core.ops.weights import ViewKind, WeightsSpec, WeightView, get_weights
from tests.unit.adapters.archs import ArchCase

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-5, msg=name)


def _norm_out(acts: dict[str, torch.Tensor], w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """A norm's output from its captured hook_normalized and the returned gain and bias."""
    out = acts[f"{name}.hook_normalized"] * w[f"{name}.w"]
    return out + w[f"{name}.b"] if f"{name}.b" in w else out


def test_weights_recompute_every_site(arch_case: ArchCase, arch_runner: Any) -> None:
    """Every parameter recomputes the sites it produces within 1e-5 (fp32)."""
    res = forward(
        arch_runner,
        specs.ForwardSpec(prompts=(specs.Prompt(text=PROMPT),), captures=(specs.Capture("*"),)),
    )
    acts = {c.site: c.values[0] for c in res.captures}
    ids = list(res.prompts[0].token_ids)
    w = {x.name: x.values for x in get_weights(arch_runner, WeightsSpec(names=("*",)))}
    dims = arch_runner.schema.dims
    gated = "mlp.hook_pre_linear" not in arch_case.absent
    _close("W_E", w["W_E"][ids], acts["hook_embed"])
    if "W_pos" in w:
        _close("W_pos", w["W_pos"][: len(ids)], acts["hook_pos_embed"])
    for L in range(dims.n_layers):
        p = f"blocks.{L}."
        x = _norm_out(acts, w, p + "ln1")  # [T, d_model]
        qk_norm = bool(getattr(arch_runner.adapter.model.config, "qk_layernorm", False))
        for q, site in (("Q", "hook_q"), ("K", "hook_k"), ("V", "hook_v")):
            if qk_norm and q != "V":
                continue  # hook_q / hook_k are the per-head q/k norms' outputs there
            got = torch.einsum("td,hde->the", x, w[p + "attn.W_" + q])
            if p + "attn.b_" + q in w:
                got = got + w[p + "attn.b_" + q]
            want = acts[p + "attn." + site]  # before rotary; keys and values per kv head
            want = want.repeat_interleave(dims.n_heads // want.shape[1], dim=1)
            _close(p + "W_" + q, got, want)
        _close(
            p + "W_O",
            torch.einsum("thd,hdm->thm", acts[p + "attn.hook_z"], w[p + "attn.W_O"]),
            acts[p + "attn.hook_result"],
        )
        mlp_in = _norm_out(acts, w, p + ("ln2" if p + "ln2.w" in w else "ln1"))
        pre = "W_gate" if gated else "W_in"
        got = mlp_in @ w[p + "mlp." + pre]
        if p + "mlp." + pre.replace("W_", "b_") in w:
            got = got + w[p + "mlp." + pre.replace("W_", "b_")]
        _close(p + pre, got, acts[p + "mlp.hook_pre"])
        if gated:
            got = mlp_in @ w[p + "mlp.W_in"]
            if p + "mlp.b_in" in w:
                got = got + w[p + "mlp.b_in"]
            _close(p + "W_in (up)", got, acts[p + "mlp.hook_pre_linear"])
        out = acts[p + "mlp.hook_post"] @ w[p + "mlp.W_out"]
        if p + "mlp.b_out" in w:
            out = out + w[p + "mlp.b_out"]
        if p + "ln2_post.w" in w:  # Gemma 2: RMSNorm with the returned (effective) gain
            eps = arch_runner.adapter.model.config.rms_norm_eps
            out = out / torch.sqrt(out.pow(2).mean(-1, keepdim=True) + eps) * w[p + "ln2_post.w"]
        _close(p + "W_out", out, acts[p + "hook_mlp_out"])
    logits = _norm_out(acts, w, "ln_final") @ w["W_U"]
    if "b_U" in w:
        logits = logits + w["b_U"]
    cap = arch_runner.adapter.logit_softcap()
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    _close("W_U", logits, acts["logits"])


def test_slices_and_views(arch_runner: Any) -> None:
    """Head and neuron slices cut the right axis; folded views equal the products of the returned
    parameters."""
    dims = arch_runner.schema.dims
    L = dims.n_layers - 1
    full = {x.name: x for x in get_weights(arch_runner, WeightsSpec(names=(f"blocks.{L}.*", "*")))}
    cut = get_weights(
        arch_runner,
        WeightsSpec(
            names=(f"blocks.{L}.attn.W_V", f"blocks.{L}.mlp.W_out", "W_E"),
            heads=(2, 0),
            neurons=(5,),
            dtype=torch.float16,
        ),
    )
    assert torch.equal(cut[0].values, full[f"blocks.{L}.attn.W_V"].values[[2, 0]].half())
    assert cut[0].kept == (2, 0) and cut[0].dims == ("head", "d_model", "d_head")
    assert torch.equal(cut[1].values, full[f"blocks.{L}.mlp.W_out"].values[[5]].half())
    assert cut[2].kept is None and cut[2].values.shape == full["W_E"].values.shape
    views = get_weights(
        arch_runner,
        WeightsSpec(
            views=(
                WeightView(ViewKind.NEURON_LOGITS, L, 5),
                WeightView(ViewKind.HEAD_OV, L, 1),
                WeightView(ViewKind.HEAD_QK, L, 1),
                WeightView(ViewKind.HEAD_OV, L, 1, source_token=7, destination_token=9),
                WeightView(ViewKind.HEAD_QK, L, 1, source_token=7, destination_token=9),
            )
        ),
    )
    w = {k: v.values.double() for k, v in full.items()}
    u = w[f"blocks.{L}.mlp.W_out"][5]
    if arch_runner.adapter.final_norm().kind == "layernorm":
        u = u - u.mean()
    _close("neuron logits", views[0].values, (u * w["ln_final.w"]) @ w["W_U"])
    ov = w[f"blocks.{L}.attn.W_V"][1] @ w[f"blocks.{L}.attn.W_O"][1]
    qk = w[f"blocks.{L}.attn.W_Q"][1] @ w[f"blocks.{L}.attn.W_K"][1].T
    _close("OV", views[1].values, ov)
    _close("QK", views[2].values, qk)
    _close("OV pair", views[3].values, w["W_E"][7] @ ov @ w["W_U"][:, 9])
    _close("QK pair", views[4].values, w["W_E"][9] @ qk @ w["W_E"][7])
    assert views[3].values.shape == ()


def test_bad_weight_requests(arch_runner: Any) -> None:
    """Unknown names, slices out of range, half token pairs and oversized responses are refused
    before any copy."""
    from dataclasses import replace

    dims = arch_runner.schema.dims
    with pytest.raises(NotFoundError, match=r"blocks\.L\.attn\.W_Q"):
        get_weights(arch_runner, WeightsSpec(names=("W_Q",)))
    with pytest.raises(NotFoundError, match="matches nothing"):
        get_weights(arch_runner, WeightsSpec(names=("blocks.*.nothing",)))
    with pytest.raises(OutOfRangeError, match="head"):
        get_weights(arch_runner, WeightsSpec(names=("W_E",), heads=(dims.n_heads,)))
    with pytest.raises(OutOfRangeError, match="neuron"):
        get_weights(arch_runner, WeightsSpec(names=("W_E",), neurons=(-1,)))
    with pytest.raises(InvalidArgumentError, match="both"):
        get_weights(arch_runner, WeightsSpec(views=(WeightView(ViewKind.HEAD_OV, 0, 0, 1),)))
    with pytest.raises(InvalidArgumentError, match="names"):
        get_weights(arch_runner, WeightsSpec())
    small = replace(arch_runner.limits, max_response_bytes=1000)
    before = arch_runner.limits
    arch_runner.limits = small
    try:
        with pytest.raises(ResourceExhaustedError, match="MiB"):
            get_weights(arch_runner, WeightsSpec(names=("W_E",)))
    finally:
        arch_runner.limits = before
