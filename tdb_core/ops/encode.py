"""Encode and decode with an attached SAE: prompts (run through the model) or raw activations in,
per-token top-k (or dense) latents, L0 and reconstruction error out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.plan import check_response_bytes
from tdb_core.runner import ModelRunner
from tdb_core.sae.model import InputNorm, InputStats, SparseAutoencoder


@dataclass(frozen=True)
class EncodeSpec:
    """Give prompts or activations ``[n, d_in]`` (or ``[batch, pos, d_in]``), not both."""

    sae: str
    prompts: tuple[specs.Prompt, ...] = ()
    activations: torch.Tensor | None = None
    top_k: int = 16
    dense: bool = False
    prepend_bos: bool | None = None


@dataclass(frozen=True)
class EncodeResult:
    prompts: tuple[specs.PromptTokens, ...]  # empty for activation input
    top_values: torch.Tensor  # [batch, pos, k] (0-filled past a prompt's end)
    top_indices: torch.Tensor  # [batch, pos, k] int64
    dense: torch.Tensor | None  # [batch, pos, d_sae]
    l0: torch.Tensor  # [batch, pos] active latents per token
    mse: torch.Tensor  # [batch, pos] mean squared reconstruction error per token
    explained_variance: float  # 1 - sum ||x - x_hat||^2 / sum ||x - mean||^2 over real tokens
    mean_l0: float


def _stats_of(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    z: torch.Tensor | None,
    stats: InputStats | None,
    k: int,
) -> tuple[torch.Tensor, ...]:
    """top values/indices, l0, per-token mse of rows ``[..., d]``: from the dense latents ``z``,
    or (None) fused from ``x`` without them (SparseAutoencoder.encode_sparse)."""
    code = sae.encode_sparse(x, k) if z is None else sae.sparse_code_of(z, k, stats)
    mse = (x.float() - code.reconstruction.float()).pow(2).mean(-1)
    return code.values, code.indices, code.l0, mse, code.reconstruction


def _explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = x.float(), x_hat.float()
    resid = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0, keepdim=True)).pow(2).sum()
    return float(1 - resid / total) if total > 0 else float("nan")


def encode(runner: ModelRunner, spec: EncodeSpec) -> EncodeResult:
    """Per-token latents of prompts (run through the model up to the SAE's site) or of raw
    activations, with L0, reconstruction error and explained variance."""
    att = runner.saes.get(spec.sae)
    sae = att.sae
    checks.top_k(spec.top_k)
    if spec.prompts and spec.activations is not None:
        raise InvalidArgumentError("Encode takes prompts or activations, not both")
    if spec.activations is None:
        checks.non_empty(spec.prompts, "prompts")
    if spec.activations is not None:
        x = spec.activations
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != sae.d_in:
            raise InvalidArgumentError(
                f"activations must be [n, {sae.d_in}] or [batch, pos, "
                f"{sae.d_in}] for SAE '{spec.sae}', got {list(spec.activations.shape)}"
            )
        n_bytes = (
            x.shape[0]
            * x.shape[1]
            * (sae.d_sae if spec.dense else 3 * min(spec.top_k, sae.d_sae))
            * 8
        )
        check_response_bytes(n_bytes, runner.limits.max_response_bytes)
        n_tokens = x.shape[0] * x.shape[1]
        if n_tokens == 0:
            raise InvalidArgumentError(
                f"activations of shape {list(spec.activations.shape)} hold no vectors; give at "
                f"least one [{sae.d_in}] vector"
            )
        need, describe = activations_need(runner, spec.sae, n_tokens)
        with runner.admission.admitted(need, describe), runner.admission.exclusive():
            return _encode_activations(runner, sae, x, spec)

    batch = runner.tokens.make_batch(spec.prompts, prepend_bos=spec.prepend_bos)
    n = batch.n_prompts
    T = batch.max_len
    n_bytes = n * T * (sae.d_sae * 4 if spec.dense else min(spec.top_k, sae.d_sae) * 12 + 16)
    check_response_bytes(n_bytes, runner.limits.max_response_bytes)
    got = runner.read(batch, (att.input, att.acts))
    x, z = got[att.input][:n], got[att.acts][:n]
    with torch.no_grad():
        stats = sae.input_stats(x)
        top_v, top_i, l0, mse, x_hat = _stats_of(sae, x, z, stats, spec.top_k)
    valid = (
        torch.arange(T, device=z.device)[None, :]
        < torch.tensor(batch.lengths[:n], device=z.device)[:, None]
    )
    keep = valid[..., None]
    top_v, top_i = top_v * keep, top_i * keep
    l0, mse = l0 * valid, mse * valid
    dense = (z * keep).cpu() if spec.dense else None
    return EncodeResult(
        prompts=tuple(specs.PromptTokens(r, runner.tokens.strings(r)) for r in batch.rows[:n]),
        top_values=top_v.float().cpu(),
        top_indices=top_i.cpu(),
        dense=dense,
        l0=l0.cpu(),
        mse=mse.cpu(),
        explained_variance=_explained_variance(x[valid], x_hat[valid]),
        mean_l0=float(l0[valid].float().mean()),
    )


def activations_need(
    runner: ModelRunner, sae_id: str, n_tokens: int
) -> tuple[int, Callable[[], str]]:
    """Working memory of encoding ``n_tokens`` raw activation vectors: the input in the SAE's
    dtype, its reconstruction and error, and the latents (dense)."""
    sae = runner.saes.get(sae_id).sae

    def describe() -> str:
        return f"{n_tokens} activation vectors through SAE '{sae_id}'"

    return n_tokens * (3 * sae.d_in + 2 * sae.d_sae) * 4, describe


def check_activations_shape(runner: ModelRunner, sae_id: str, shape: Sequence[int]) -> None:
    """Refuse raw activations over the memory budget from their shape alone, before the request's
    bytes are turned into a tensor (NOT_FOUND for an unknown SAE)."""
    if not 1 <= len(shape) <= checks.MAX_TENSOR_RANK or any(
        not 0 <= d <= checks.MAX_TENSOR_DIM for d in shape
    ):
        return  # the tensor checks say what is wrong with it
    n_tokens = 1
    for d in shape[:-1]:
        n_tokens *= d
    need, describe = activations_need(runner, sae_id, n_tokens)
    runner.admission.check_budget(need, describe)


@dataclass(frozen=True)
class DecodeSpec:
    """Latents ``[..., d_sae]`` of an attached SAE."""

    sae: str
    latents: torch.Tensor


def decode(runner: ModelRunner, spec: DecodeSpec) -> torch.Tensor:
    """``b_dec + latents @ W_dec`` ``[..., d_in]`` (for input-normalizing SAEs, in the SAE's
    normalized input space: shift 0, scale 1)."""
    sae_id, latents = spec.sae, spec.latents
    sae = runner.saes.get(sae_id).sae
    if latents.dim() < 1 or latents.shape[-1] != sae.d_sae:
        raise InvalidArgumentError(
            f"latents must be [..., {sae.d_sae}] for SAE '{sae_id}', got {list(latents.shape)}"
        )
    check_response_bytes(
        latents.numel() * sae.d_in // max(sae.d_sae, 1) * 4, runner.limits.max_response_bytes
    )
    with torch.no_grad():
        z = latents.to(runner.device, sae.dtype)
        stats = None
        if sae.config.input_norm is not InputNorm.NONE:
            ones = torch.ones(*z.shape[:-1], 1, device=z.device, dtype=z.dtype)
            stats = InputStats(shift=torch.zeros_like(ones), scale=ones)
        return sae.decode(z, stats).cpu()


def _encode_activations(
    runner: ModelRunner, sae: SparseAutoencoder, x: torch.Tensor, spec: EncodeSpec
) -> EncodeResult:
    """Encode raw activations ``[batch, pos, d_in]`` (admitted, the execution lock held)."""
    with torch.no_grad():
        x = x.to(runner.device, sae.dtype)
        z = stats = None
        if spec.dense:
            _, z, stats = sae.encode_with_stats(x)
        top_v, top_i, l0, mse, x_hat = _stats_of(sae, x, z, stats, spec.top_k)
    return EncodeResult(
        (),
        top_v.cpu(),
        top_i.cpu(),
        z.cpu() if z is not None else None,
        l0.cpu(),
        mse.cpu(),
        _explained_variance(x.reshape(-1, sae.d_in), x_hat.reshape(-1, sae.d_in)),
        float(l0.float().mean()),
    )
