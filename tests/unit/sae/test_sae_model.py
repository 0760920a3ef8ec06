"""SparseAutoencoder math: every kind against its formula written out here, shapes and dtypes."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tdb_core.errors import InvalidArgumentError
from tdb_core.sae import (
    GatedArch,
    InputNorm,
    JumpReluArch,
    ReluArch,
    SaeConfig,
    SaeKind,
    SparseAutoencoder,
    TopKArch,
    build_sae,
)

D_IN, D_SAE, K = 12, 40, 5
ARCHS: dict[str, Any] = {
    "relu": ReluArch(),
    "topk": TopKArch(k=K),
    "jumprelu": JumpReluArch(),
    "gated": GatedArch(),
}
SAELENS_NAME = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 agreement to 1e-6."""
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def make(
    kind: str,
    saelens_tensors: Any,
    arch: Any = None,
    **config: Any,
) -> tuple[SparseAutoencoder, dict[str, torch.Tensor]]:
    tensors = saelens_tensors(SAELENS_NAME[kind])
    cfg = SaeConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch or ARCHS[kind], **config)
    return build_sae(cfg, tensors), tensors


def reference_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest entries per row (via a full sort), zeros elsewhere."""
    order = pre.argsort(dim=-1, descending=True)
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order[..., :k], True)
    return torch.where(keep, pre.clamp(min=0), torch.zeros_like(pre))


def reference(
    kind: str,
    t: dict[str, torch.Tensor],
    x: torch.Tensor,
    apply_b_dec: bool = True,
    rescale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, latents, reconstruction) of each kind, written from the SAELens/OpenAI formulas."""
    xc = x - t["b_dec"] if apply_b_dec else x
    if kind == "gated":
        gate = torch.einsum("...d,ds->...s", xc, t["W_enc"]) + t["b_gate"]
        pre = torch.einsum("...d,ds->...s", xc, t["W_enc"] * torch.exp(t["r_mag"])) + t["b_mag"]
        z = (gate > 0).float() * torch.clamp(pre, min=0)
    else:
        pre = torch.einsum("...d,ds->...s", xc, t["W_enc"]) + t["b_enc"]
        if kind == "relu":
            z = torch.clamp(pre, min=0)
        elif kind == "topk":
            if rescale:
                pre = pre * t["W_dec"].norm(dim=-1)
            z = reference_topk(pre, K)
        else:
            z = torch.clamp(pre, min=0) * (pre > t["threshold"]).float()
    w_dec = t["W_dec"]
    if rescale:
        z_scaled = z / t["W_dec"].norm(dim=-1)
        return pre, z, torch.einsum("...s,sd->...d", z_scaled, w_dec) + t["b_dec"]
    return pre, z, torch.einsum("...s,sd->...d", z, w_dec) + t["b_dec"]


@pytest.mark.parametrize("kind", list(ARCHS))
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_matches_formula(
    kind: str, apply_b_dec: bool, saelens_tensors: Any, inputs: torch.Tensor
) -> None:
    """encode_pre, encode, decode and forward equal each kind's formula computed independently."""
    sae, t = make(kind, saelens_tensors, apply_b_dec_to_input=apply_b_dec)
    pre, z, recon = reference(kind, t, inputs, apply_b_dec)
    close(sae.encode_pre(inputs), pre)
    close(sae.encode(inputs), z)
    close(sae.decode(z), recon)
    latents, reconstruction = sae(inputs)
    close(latents, z)
    close(reconstruction, recon)
    assert sae.kind is SaeKind(kind)
    assert (z > 0).any() and (z == 0).any()


def test_topk_keeps_exactly_k(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """TopK latents have at most k non-zeros per row (exactly k where the top-k are positive)."""
    sae, _ = make("topk", saelens_tensors)
    z = sae.encode(inputs)
    assert int((z != 0).sum(dim=-1).max()) <= K
    assert int((z != 0).sum(dim=-1).max()) == K


def test_topk_rescale_by_decoder_norm(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """rescale_acts_by_decoder_norm scales pre by ‖W_dec_i‖ and decodes with unit rows."""
    sae, t = make("topk", saelens_tensors, arch=TopKArch(k=K, rescale_acts_by_decoder_norm=True))
    pre, z, recon = reference("topk", t, inputs, rescale=True)
    close(sae.encode_pre(inputs), pre)
    close(sae.encode(inputs), z)
    close(sae(inputs)[1], recon)
    close(sae.decoder_directions().norm(dim=-1), torch.ones(D_SAE))


def test_jumprelu_threshold_gates_positive_preactivations(
    saelens_tensors: Any, inputs: torch.Tensor
) -> None:
    """JumpReLU zeroes latents with 0 < pre <= threshold and passes pre > threshold unchanged."""
    sae, t = make("jumprelu", saelens_tensors)
    pre, z = sae.encode_pre(inputs), sae.encode(inputs)
    below = (pre > 0) & (pre <= t["threshold"])
    above = pre > t["threshold"]
    assert below.any() and above.any()
    assert torch.all(z[below] == 0)
    assert torch.equal(z[above], pre[above])


def test_gated_gate_and_magnitude_paths(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """Gated latents are non-zero exactly where the gate is open and the magnitude positive."""
    sae, t = make("gated", saelens_tensors)
    gate = (inputs - t["b_dec"]) @ t["W_enc"] + t["b_gate"]
    mag = sae.encode_pre(inputs)
    z = sae.encode(inputs)
    closed_but_positive = (gate <= 0) & (mag > 0)
    assert closed_but_positive.any()
    assert torch.all(z[closed_but_positive] == 0)
    assert torch.equal((z != 0), (gate > 0) & (mag > 0))


@pytest.mark.parametrize("kind", list(ARCHS))
def test_decode_is_bias_plus_directions(kind: str, saelens_tensors: Any) -> None:
    """decode(z) == b_dec + z @ decoder_directions() for arbitrary z (not only encoded ones)."""
    sae, t = make(kind, saelens_tensors)
    z = torch.rand(4, 2, D_SAE, generator=torch.Generator().manual_seed(5))
    close(sae.decode(z), t["b_dec"] + z @ sae.decoder_directions())
    close(sae.decoder_directions(), t["W_dec"])


def test_layer_norm_input(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """layer_norm: LN(x) = (x - mean)/(unbiased std + 1e-5) before encoding; x̂ = y·std + mean."""
    sae, t = make("topk", saelens_tensors, input_norm=InputNorm.LAYER_NORM)
    mu = inputs.mean(dim=-1, keepdim=True)
    centred = inputs - mu
    std = torch.sqrt((centred**2).sum(dim=-1, keepdim=True) / (D_IN - 1))
    x_n = centred / (std + 1e-5)
    pre, z, recon_n = reference("topk", t, x_n)
    close(sae.encode_pre(inputs), pre)
    close(sae.encode(inputs), z)
    latents, recon = sae(inputs)
    close(latents, z)
    close(recon, recon_n * std + mu)
    stats = sae.input_stats(inputs)
    assert stats is not None
    close(stats.shift, mu)
    close(stats.scale, std)
    close(sae.decode(z, stats), recon_n * std + mu)


def test_layer_norm_write_vector(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """With input norm, one latent's write is z_i · scale · D[i] (scale from the input row)."""
    sae, _ = make("relu", saelens_tensors, input_norm=InputNorm.LAYER_NORM)
    stats = sae.input_stats(inputs)
    assert stats is not None
    z = sae.encode(inputs)
    i = int(z.flatten(0, -2).sum(dim=0).argmax())
    without_i = z.clone()
    without_i[..., i] = 0
    write = sae.decode(z, stats) - sae.decode(without_i, stats)
    expected = z[..., i : i + 1] * stats.scale * sae.decoder_directions()[i]
    torch.testing.assert_close(write, expected, atol=1e-5, rtol=1e-5)
    close(
        sae.decode(z, stats),
        stats.shift + stats.scale * (sae.b_dec.detach() + z @ sae.decoder_directions()),
    )


def test_constant_norm_rescale_input(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """constant_norm_rescale: x·sqrt(d_in)/‖x‖ before encoding, divided back after decoding."""
    sae, t = make("relu", saelens_tensors, input_norm=InputNorm.CONSTANT_NORM_RESCALE)
    coeff = math.sqrt(D_IN) / inputs.norm(dim=-1, keepdim=True)
    pre, z, recon_n = reference("relu", t, inputs * coeff)
    close(sae.encode_pre(inputs), pre)
    latents, recon = sae(inputs)
    close(latents, z)
    close(recon, recon_n / coeff)


def test_decode_requires_stats_exactly_when_normalizing(
    saelens_tensors: Any, inputs: torch.Tensor
) -> None:
    """decode without stats on a normalizing SAE (or with stats on a plain one) is refused."""
    normed, _ = make("relu", saelens_tensors, input_norm=InputNorm.LAYER_NORM)
    plain, _ = make("relu", saelens_tensors)
    z = normed.encode(inputs)
    with pytest.raises(InvalidArgumentError, match="input_stats"):
        normed.decode(z)
    stats = normed.input_stats(inputs)
    with pytest.raises(InvalidArgumentError, match="no input normalization"):
        plain.decode(z, stats)
    assert plain.input_stats(inputs) is None


@pytest.mark.parametrize("kind", list(ARCHS))
def test_any_leading_shape(kind: str, saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """Inputs [a, b, d_in], [n, d_in] and [d_in] give the same rows of latents."""
    sae, _ = make(kind, saelens_tensors)
    flat = inputs.reshape(-1, D_IN)
    z3 = sae.encode(inputs)
    assert z3.shape == (3, 7, D_SAE)
    close(z3.reshape(-1, D_SAE), sae.encode(flat))
    close(sae.encode(flat[4]), sae.encode(flat)[4])
    assert sae(inputs)[1].shape == inputs.shape
    assert sae.decode(z3).shape == inputs.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["relu", "jumprelu", "gated"])
def test_low_precision(
    dtype: torch.dtype, kind: str, saelens_tensors: Any, inputs: torch.Tensor
) -> None:
    """In bf16/fp16 the SAE computes in its dtype and stays close to the fp32 result."""
    sae, _ = make(kind, saelens_tensors)
    _, recon32 = sae(inputs)
    low = sae.to(dtype=dtype)
    assert low.dtype == dtype
    latents, recon = low(inputs)  # fp32 input is cast to the SAE dtype
    assert latents.dtype == dtype and recon.dtype == dtype
    err = (recon.float() - recon32).norm() / recon32.norm()
    assert err < 3e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_topk(dtype: torch.dtype, saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """TopK in bf16/fp16 returns k latents per row and a reconstruction close to fp32."""
    sae, _ = make("topk", saelens_tensors)
    _, recon32 = sae(inputs)
    latents, recon = sae.to(dtype=dtype)(inputs.to(dtype))
    assert latents.dtype == dtype
    assert int((latents != 0).sum(dim=-1).max()) <= K
    assert (recon.float() - recon32).norm() / recon32.norm() < 5e-2


def test_flatten_heads(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """A hook_z SAE accepts [..., n_heads, d_head] and returns the reconstruction in that shape."""
    sae, _ = make("relu", saelens_tensors, flatten_heads=True, site="blocks.0.attn.hook_z")
    heads = inputs.reshape(3, 7, 3, 4)  # n_heads=3, d_head=4
    close(sae.encode(heads), sae.encode(inputs))
    _, recon = sae(heads)
    assert recon.shape == heads.shape
    close(recon.reshape(3, 7, D_IN), sae(inputs)[1])
    plain, _ = make("relu", saelens_tensors)
    with pytest.raises(InvalidArgumentError, match=r"\[\.\.\., 12\]"):
        plain.encode(heads)


def test_bad_inputs_are_refused(saelens_tensors: Any) -> None:
    """Wrong widths and non-float inputs raise InvalidArgumentError saying what is allowed."""
    sae, _ = make("relu", saelens_tensors)
    with pytest.raises(InvalidArgumentError, match=r"shape \[2, 13\].*\[\.\.\., 12\]"):
        sae.encode(torch.zeros(2, 13))
    with pytest.raises(InvalidArgumentError, match="floating-point"):
        sae.encode(torch.zeros(2, D_IN, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="d_sae=40"):
        sae.decode(torch.zeros(2, D_SAE + 1))


def test_build_validates_tensors(saelens_tensors: Any) -> None:
    """build_sae refuses missing/extra tensors, wrong widths, int dtypes, mixed dtypes, bad k."""
    cfg = SaeConfig(d_in=D_IN, d_sae=D_SAE, architecture=ReluArch())
    good = saelens_tensors("standard")
    cases: list[tuple[dict[str, torch.Tensor], SaeConfig, str]] = [
        ({k: v for k, v in good.items() if k != "b_enc"}, cfg, r"missing tensor\(s\) \['b_enc'\]"),
        ({**good, "threshold": torch.zeros(D_SAE)}, cfg, r"unexpected tensor\(s\) \['threshold'\]"),
        (
            {**good, "W_dec": torch.zeros(D_SAE, D_IN + 1)},
            cfg,
            r"W_dec has shape \[40, 13\].*\[40, 12\]",
        ),
        ({**good, "b_enc": torch.zeros(D_SAE, dtype=torch.int32)}, cfg, "floating point"),
        ({**good, "b_enc": good["b_enc"].double()}, cfg, "mixed dtypes"),
        (good, SaeConfig(d_in=D_IN, d_sae=D_SAE, architecture=TopKArch(k=D_SAE + 1)), "k=41"),
    ]
    for tensors, config, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            build_sae(config, tensors)


def test_parameters_start_frozen_and_to_moves(saelens_tensors: Any) -> None:
    """Built SAEs need no gradients for their parameters; .to(dtype) casts every tensor."""
    sae, t = make("gated", saelens_tensors)
    assert not any(p.requires_grad for p in sae.parameters())
    assert sae.site is None and sae.d_in == D_IN and sae.d_sae == D_SAE
    half = sae.to(torch.device("cpu"), torch.float16)
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    assert torch.equal(half.r_mag.float(), t["r_mag"].half().float())


def test_gradients_flow_to_inputs(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """encode_pre is differentiable in x (what attribution needs): d pre / d x = W_encᵀ rows."""
    sae, t = make("relu", saelens_tensors)
    x = inputs[0, 0].clone().requires_grad_(True)
    pre = sae.encode_pre(x)
    (grad,) = torch.autograd.grad(pre[3], x)
    close(grad, t["W_enc"][:, 3])
