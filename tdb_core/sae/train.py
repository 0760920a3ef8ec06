"""Train a ReLU (L1) or TopK (AuxK) sparse autoencoder on a stream of activations.

The recipe (OpenAI's TopK recipe, Gao et al. 2024, and the ReLU + L1 recipe with resampling):

* Data: an iterable of activation batches ``[n, d_in]`` (any n), re-cut into ``batch_size`` rows.
  The first ``eval_rows`` rows are held out for the checkpoint metrics; the next ``init_rows``
  (also trained on) set the decoder bias and the input scale. Shuffle the stream upstream: rows
  are used in the order they arrive.
* Units: training runs on ``s · x`` with ``s = sqrt(d_in / E‖x - x̄‖²)`` (so the total variance is
  d_in and one L1 coefficient fits every site). Saved SAEs read raw activations: the scale is
  folded back (b_dec /= s, b_enc /= s; W_enc, W_dec unchanged), which is exact because ReLU and
  TopK are positively homogeneous.
* Init: ``b_dec`` = geometric median (or mean, or 0) of the init sample; decoder rows random unit
  vectors; ``W_enc = W_decᵀ`` rescaled so random unit inputs reconstruct with norm ~1; b_enc = 0.
* Loss: ``recon = mean_rows ‖x̂ - x‖² / d_in`` (MSE over the data variance)
    - topk: ``recon + aux_coeff · ‖ê - e‖² / ‖e - ē‖²`` where ``e = x - x̂`` (no gradient) and
      ``ê`` decodes the ``k_aux`` largest pre-activations among dead latents (AuxK).
    - relu: ``recon + l1_coeff · mean_rows Σ_i z_i ‖W_dec[i]‖ / sqrt(d_in)``. The decoder is kept
      at unit norm, so this is the plain L1 of the latents relative to the typical input norm.
* Unit-norm decoder: before each Adam step the decoder gradient's component along its own row is
  projected out, and after it every row is renormalized to norm 1.
* Dead latents: a latent is dead when it has not fired in the last ``dead_tokens_threshold`` rows.
  TopK trains them with AuxK; ReLU resamples them every ``resample_every`` steps (rows picked
  with probability ∝ the square of their loss ‖x - x̂‖², as in Anthropic's resampling; decoder
  row = that input minus b_dec, unit norm; encoder column = the same direction at 0.2 times the
  mean alive encoder norm; b_enc = 0; Adam moments of those entries reset).
* Checkpoints every ``checkpoint_every`` steps and at the end: SAELens-format directory
  (``cfg.json``, ``sae_weights.safetensors``) plus ``metrics.json`` under ``out_dir``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import torch
from tqdm import tqdm

from tdb_core.errors import InvalidArgumentError
from tdb_core.sae.metrics import (
    CeLossResult,
    DensityHistogram,
    density_histogram,
    explained_variance,
)
from tdb_core.sae.model import (
    ReluArch,
    ReluSae,
    SaeConfig,
    SaeKind,
    SparseAutoencoder,
    TopKArch,
    TopKSae,
    build_sae,
)
from tdb_core.sae.saelens_format import save_sae

METRICS_FILENAME = "metrics.json"
EVAL_CHUNK_ROWS = 1024


class BDecInit(StrEnum):
    """How the decoder bias starts."""

    GEOMETRIC_MEDIAN = "geometric_median"
    MEAN = "mean"
    ZEROS = "zeros"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one SAE training run (see the module docstring for the recipe).

    kind                   relu or topk
    d_sae                  number of latents
    steps                  optimizer steps, each on ``batch_size`` rows
    lr                     Adam learning rate (betas 0.9, 0.999)
    k, k_aux, aux_coeff    topk: active latents; AuxK latents (default d_in // 2); AuxK weight
    l1_coeff               relu: weight of the L1 term
    dead_tokens_threshold  a latent silent for this many training rows is dead
    resample_every         relu: resample dead latents every N steps (None: never)
    b_dec_init             decoder bias start: geometric median, mean or zeros of the init rows
    init_rows, eval_rows   rows for the init statistics / the held-out eval set
    checkpoint_every       steps between checkpoints (None: only the final one)
    out_dir                where checkpoint directories go (None: keep metrics in memory only)
    seed                   seeds the initialization and resampling
    device                 where training runs
    site, model_name       recorded in the saved cfg.json (hook_name, model_name)
    """

    kind: SaeKind
    d_sae: int
    steps: int
    batch_size: int = 4096
    lr: float = 2e-4
    k: int = 32
    k_aux: int | None = None
    aux_coeff: float = 1 / 32
    l1_coeff: float = 0.1
    dead_tokens_threshold: int = 10_000_000
    resample_every: int | None = None
    b_dec_init: BDecInit = BDecInit.GEOMETRIC_MEDIAN
    init_rows: int = 16384
    eval_rows: int = 4096
    checkpoint_every: int | None = None
    out_dir: str | None = None
    seed: int = 0
    device: str = "cpu"
    site: str | None = None
    model_name: str | None = None


@dataclass(frozen=True)
class CheckpointMetrics:
    """Measurements of one checkpoint (eval set = the held-out first ``eval_rows`` rows).

    ``train_*`` are means over the steps since the previous checkpoint: the total loss, its
    reconstruction term, and its unweighted second term (topk: the AuxK normalized MSE, 0 while
    no latent is dead; relu: the L1 term). ``resampled`` counts latents resampled in that window.
    ``dead_fraction`` is the fraction of latents that did not fire in the last
    ``dead_tokens_threshold`` training rows; ``density`` histograms firing densities over the
    training rows since the previous checkpoint. ``eval_mse`` (mean over elements),
    ``l0`` and ``explained_variance`` are measured on the eval set in raw units.
    """

    step: int
    tokens: int
    train_loss: float
    train_recon_loss: float
    train_aux_loss: float
    resampled: int
    eval_mse: float
    l0: float
    explained_variance: float
    dead_fraction: float
    density: DensityHistogram
    ce: CeLossResult | None
    path: str | None


@dataclass(frozen=True)
class TrainResult:
    """The trained SAE (reading raw activations) and every checkpoint's metrics."""

    sae: SparseAutoencoder
    checkpoints: tuple[CheckpointMetrics, ...]
    steps: int
    tokens: int
    input_scale: float


CeEval = Callable[[SparseAutoencoder], CeLossResult]


def geometric_median(
    points: torch.Tensor, max_iter: int = 200, tol: float = 1e-7, eps: float = 1e-8
) -> torch.Tensor:
    """Weiszfeld's iteration for ``argmin_y Σ_i ‖points_i - y‖`` of ``points [n, d]``."""
    pts = points.double()  # [n, d]
    y = pts.mean(dim=0)  # [d]
    for _ in range(max_iter):
        weights = 1.0 / (pts - y).norm(dim=-1).clamp_min(eps)  # [n]
        y_next = (weights[:, None] * pts).sum(dim=0) / weights.sum()  # [d]
        moved = (y_next - y).norm().item()
        y = y_next
        if moved <= tol * max(y.norm().item(), 1.0):
            break
    return y.to(points.dtype)


class _RowStream:
    """Re-cuts an iterable of ``[n, d_in]`` batches into exact row counts."""

    def __init__(self, batches: Iterable[torch.Tensor], device: torch.device) -> None:
        self._it: Iterator[torch.Tensor] = iter(batches)
        self._device = device
        self._pending: list[torch.Tensor] = []
        self._rows = 0
        self.d_in: int | None = None

    def _pull(self) -> bool:
        try:
            batch = next(self._it)
        except StopIteration:
            return False
        if not isinstance(batch, torch.Tensor) or batch.ndim != 2 or not batch.is_floating_point():
            raise InvalidArgumentError(
                "training batches must be floating-point tensors [n, d_in], got "
                f"{getattr(batch, 'shape', type(batch).__name__)}"
            )
        if self.d_in is None:
            self.d_in = batch.shape[1]
        if batch.shape[1] != self.d_in:
            raise InvalidArgumentError(
                f"training batch has width {batch.shape[1]} but earlier batches had {self.d_in}; "
                "every batch must be [n, d_in] with one d_in"
            )
        self._pending.append(batch.detach().to(self._device, torch.float32))
        self._rows += batch.shape[0]
        return True

    def take(self, n: int, keep: bool = False) -> torch.Tensor | None:
        """The next ``n`` rows ``[n, d_in]`` (left in the stream if ``keep``); None if short."""
        while self._rows < n:
            if not self._pull():
                return None
        rows = torch.cat(self._pending, dim=0) if len(self._pending) > 1 else self._pending[0]
        head, tail = rows[:n], rows[n:]
        if not keep:
            self._pending = [tail] if tail.shape[0] else []
            self._rows = tail.shape[0]
        else:
            self._pending = [rows]
        return head


def _validate(config: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InvalidArgumentError(f"TrainConfig: {message}")

    need(
        config.kind in (SaeKind.RELU, SaeKind.TOPK),
        f"kind must be relu or topk for training, got {config.kind!r}",
    )
    need(config.d_sae >= 1, f"d_sae must be >= 1, got {config.d_sae}")
    need(config.steps >= 1, f"steps must be >= 1, got {config.steps}")
    need(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    need(config.lr > 0, f"lr must be > 0, got {config.lr}")
    need(config.eval_rows >= 2, f"eval_rows must be >= 2, got {config.eval_rows}")
    need(config.init_rows >= 2, f"init_rows must be >= 2, got {config.init_rows}")
    need(
        config.dead_tokens_threshold >= 1,
        f"dead_tokens_threshold must be >= 1, got {config.dead_tokens_threshold}",
    )
    if config.kind is SaeKind.TOPK:
        need(1 <= config.k <= config.d_sae, f"k must be in [1, d_sae], got {config.k}")
        need(config.k_aux is None or config.k_aux >= 1, f"k_aux must be >= 1, got {config.k_aux}")
        need(config.aux_coeff >= 0, f"aux_coeff must be >= 0, got {config.aux_coeff}")
    else:
        need(config.l1_coeff >= 0, f"l1_coeff must be >= 0, got {config.l1_coeff}")
    need(
        config.resample_every is None or config.resample_every >= 1,
        f"resample_every must be None or >= 1, got {config.resample_every}",
    )
    need(
        config.checkpoint_every is None or config.checkpoint_every >= 1,
        f"checkpoint_every must be None or >= 1, got {config.checkpoint_every}",
    )


def _init_sae(
    config: TrainConfig, d_in: int, b_dec: torch.Tensor, gen: torch.Generator
) -> ReluSae | TopKSae:
    """A fresh SAE in training units: unit decoder rows, tied encoder, given b_dec."""
    arch: ReluArch | TopKArch = TopKArch(k=config.k) if config.kind is SaeKind.TOPK else ReluArch()
    sae_config = SaeConfig(
        d_in=d_in,
        d_sae=config.d_sae,
        architecture=arch,
        site=config.site,
        model_name=config.model_name,
    )
    w_dec = torch.randn(config.d_sae, d_in, generator=gen)  # [d_sae, d_in]
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {
        "W_enc": w_dec.T.contiguous(),  # [d_in, d_sae]
        "b_enc": torch.zeros(config.d_sae),
        "W_dec": w_dec,
        "b_dec": b_dec.float().cpu(),
    }
    built = build_sae(sae_config, tensors, where="train_sae init", copy=False)
    if not isinstance(built, (ReluSae, TopKSae)):
        raise TypeError(f"expected a relu or topk SAE, built {type(built).__name__}")
    sae = built.to(b_dec.device)
    with torch.no_grad():
        probe = torch.randn(256, d_in, generator=gen).to(b_dec.device)  # [256, d_in]
        probe = probe / probe.norm(dim=-1, keepdim=True) + sae.b_dec
        _, recon = sae(probe)
        recon_norm = (recon - sae.b_dec).norm(dim=-1).mean().item()  # [256] -> scalar
        if recon_norm > 0:
            sae.W_enc.div_(recon_norm)
    return sae.requires_grad_(True)


def _folded(sae: ReluSae | TopKSae, scale: float) -> SparseAutoencoder:
    """A copy of ``sae`` (trained on ``scale · x``) that reads raw ``x``."""
    tensors = {name: t.detach().clone() for name, t in sae.named_tensors().items()}
    tensors["b_dec"] = tensors["b_dec"] / scale  # [d_in]
    tensors["b_enc"] = tensors["b_enc"] / scale  # [d_sae]
    return build_sae(sae.config, tensors, where="train_sae checkpoint", copy=False)


def _resample_dead(
    sae: ReluSae | TopKSae,
    optimizer: torch.optim.Adam,
    dead: torch.Tensor,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    gen: torch.Generator,
) -> int:
    """Re-initialize dead ReLU latents on badly reconstructed inputs; returns how many."""
    n_dead = int(dead.sum().item())
    if n_dead == 0:
        return 0
    with torch.no_grad():
        err = (x - x_hat).pow(2).sum(dim=-1)  # [bs]
        weights = err.pow(2)
        if weights.sum() <= 0:
            return 0
        rows = torch.multinomial(weights.cpu(), n_dead, replacement=True, generator=gen)
        v = x[rows.to(x.device)] - sae.b_dec  # [n_dead, d_in]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = sae.W_enc[:, alive].norm(dim=0).mean().item() if alive.any() else 1.0
        sae.W_dec[dead] = v
        sae.W_enc[:, dead] = v.T * (0.2 * enc_norm)
        sae.b_enc[dead] = 0.0
        moments = ("exp_avg", "exp_avg_sq")
        for param in (sae.W_dec, sae.b_enc):  # latent is the first dimension
            state = optimizer.state.get(param, {})
            for key in moments:
                if key in state:
                    state[key][dead] = 0.0
        state = optimizer.state.get(sae.W_enc, {})  # latent is the second dimension
        for key in moments:
            if key in state:
                state[key][:, dead] = 0.0
    return n_dead


def _metrics_json(metrics: CheckpointMetrics, config: TrainConfig) -> str:
    body = asdict(metrics)
    body["train_config"] = {
        key: (value.value if isinstance(value, StrEnum) else value)
        for key, value in asdict(config).items()
    }
    return json.dumps(body, indent=2) + "\n"


def _input_scale_and_b_dec(
    config: TrainConfig, init_x: torch.Tensor, device: torch.device
) -> tuple[float, torch.Tensor]:
    """The input scale (the scaled init sample's total variance is d_in) and the initial b_dec."""
    d_in = init_x.shape[-1]
    total_var = (init_x - init_x.mean(dim=0)).pow(2).sum(dim=-1).mean().item()
    if not total_var > 0:
        raise InvalidArgumentError("the init sample has zero variance; cannot train an SAE on it")
    scale = math.sqrt(d_in / total_var)
    if config.b_dec_init is BDecInit.GEOMETRIC_MEDIAN:
        b_dec = geometric_median(init_x * scale)
    elif config.b_dec_init is BDecInit.MEAN:
        b_dec = (init_x * scale).mean(dim=0)
    else:
        b_dec = torch.zeros(d_in, device=device)
    return scale, b_dec


def _encode(
    sae: ReluSae | TopKSae, x: torch.Tensor, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activations and latents ``[bs, d_sae]`` of the (scaled) batch ``x``."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # [bs, d_sae]
    if config.kind is SaeKind.TOPK:
        top = torch.topk(pre, k=config.k, dim=-1)  # [bs, k]
        return pre, torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return pre, torch.relu(pre)


def _sparsity_term(
    sae: ReluSae | TopKSae,
    config: TrainConfig,
    pre: torch.Tensor,
    z: torch.Tensor,
    x: torch.Tensor,
    x_hat: torch.Tensor,
    dead: torch.Tensor,
    k_aux: int,
) -> tuple[torch.Tensor, float]:
    """The second loss term and its coefficient: AuxK over the dead latents (topk: how well they
    reconstruct the residual error) or the decoder-norm weighted L1 / sqrt(d_in) (relu)."""
    if config.kind is SaeKind.TOPK:
        second = torch.zeros((), device=x.device)
        n_dead = int(dead.sum().item())
        if n_dead > 0 and config.aux_coeff > 0:
            aux_pre = pre.masked_fill(~dead, float("-inf"))  # [bs, d_sae]
            aux_top = torch.topk(aux_pre, k=min(k_aux, n_dead), dim=-1)
            z_aux = torch.zeros_like(pre).scatter(
                -1, aux_top.indices, torch.relu(aux_top.values)
            )  # [bs, d_sae]
            e = (x - x_hat).detach()  # [bs, d_in]
            e_hat = z_aux @ sae.W_dec  # [bs, d_in]
            aux = (e_hat - e).pow(2).sum(dim=-1).mean() / (
                (e - e.mean(dim=0)).pow(2).sum(dim=-1).mean()
            )
            second = aux.nan_to_num(0.0)
        return second, config.aux_coeff
    l1 = (z * sae.W_dec.norm(dim=-1)).sum(dim=-1).mean()  # decoder-norm weighted
    return l1 / math.sqrt(x.shape[-1]), config.l1_coeff


def train_sae(
    config: TrainConfig,
    batches: Iterable[torch.Tensor],
    *,
    ce_eval: CeEval | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an SAE on ``batches`` (``[n, d_in]`` activation tensors) as ``config`` says.

    Trains for ``config.steps`` steps, or until the stream runs out (then the result and the
    last checkpoint record the steps actually done). ``ce_eval``, if given, is called with the
    checkpoint SAE (reading raw activations) and its result stored in the metrics.

    Raises:
        InvalidArgumentError: bad config, malformed batches, or a stream too short for the
            eval set, the init sample and one training step.
    """
    _validate(config)
    device = torch.device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    stream = _RowStream(batches, device)

    eval_x = stream.take(config.eval_rows)  # [eval_rows, d_in]
    init_x = stream.take(config.init_rows, keep=True) if eval_x is not None else None
    if eval_x is None or init_x is None or stream.d_in is None:
        raise InvalidArgumentError(
            f"the activation stream ended early: training needs eval_rows ({config.eval_rows}) "
            f"+ init_rows ({config.init_rows}) rows before the first step"
        )
    d_in = stream.d_in
    scale, b_dec = _input_scale_and_b_dec(config, init_x, device)
    sae = _init_sae(config, d_in, b_dec, gen)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    k_aux = min(config.k_aux if config.k_aux is not None else d_in // 2, config.d_sae)
    k_aux = max(k_aux, 1)

    tokens_since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    window_fires = torch.zeros(config.d_sae, dtype=torch.long, device=device)
    window_tokens = 0
    window_loss, window_recon, window_aux, window_steps, window_resampled = 0.0, 0.0, 0.0, 0, 0
    checkpoints: list[CheckpointMetrics] = []
    step, tokens = 0, 0
    out_dir = Path(config.out_dir) if config.out_dir is not None else None

    def checkpoint() -> None:
        nonlocal window_fires, window_tokens, window_loss, window_recon, window_aux
        nonlocal window_steps, window_resampled
        folded = _folded(sae, scale)
        with torch.no_grad():  # in chunks: latents of the whole eval set can be large
            parts = [folded(chunk) for chunk in torch.split(eval_x, EVAL_CHUNK_ROWS)]
            x_hat = torch.cat([recon for _, recon in parts])  # [eval_rows, d_in]
            active = torch.cat([(z != 0).sum(dim=-1) for z, _ in parts])  # [eval_rows]
        dead = tokens_since_fired >= config.dead_tokens_threshold
        path: Path | None = None
        if out_dir is not None:
            path = out_dir / f"step_{step:08d}"
        metrics = CheckpointMetrics(
            step=step,
            tokens=tokens,
            train_loss=window_loss / max(window_steps, 1),
            train_recon_loss=window_recon / max(window_steps, 1),
            train_aux_loss=window_aux / max(window_steps, 1),
            resampled=window_resampled,
            eval_mse=(x_hat - eval_x).pow(2).mean().item(),
            l0=active.float().mean().item(),
            explained_variance=explained_variance(eval_x, x_hat),
            dead_fraction=dead.float().mean().item(),
            density=density_histogram(window_fires.cpu(), max(window_tokens, 1)),
            ce=ce_eval(folded) if ce_eval is not None else None,
            path=str(path) if path is not None else None,
        )
        if path is not None:
            save_sae(folded, path)
            (path / METRICS_FILENAME).write_text(_metrics_json(metrics, config), encoding="utf-8")
        checkpoints.append(metrics)
        window_fires = torch.zeros_like(window_fires)
        window_tokens, window_steps, window_resampled = 0, 0, 0
        window_loss, window_recon, window_aux = 0.0, 0.0, 0.0

    bar = tqdm(
        total=config.steps, desc="train sae", unit="step", file=sys.stderr, disable=not progress
    )
    try:
        while step < config.steps:
            batch = stream.take(config.batch_size)
            if batch is None:
                break
            x = batch * scale  # [bs, d_in]
            pre, z = _encode(sae, x, config)  # [bs, d_sae] each
            x_hat = z @ sae.W_dec + sae.b_dec  # [bs, d_in]
            recon = (x_hat - x).pow(2).sum(dim=-1).mean() / d_in

            fired = (z > 0).detach()  # [bs, d_sae]
            window_fires += fired.sum(dim=0)
            tokens_since_fired += x.shape[0]
            tokens_since_fired[fired.any(dim=0)] = 0
            dead = tokens_since_fired >= config.dead_tokens_threshold  # [d_sae]

            second, coeff = _sparsity_term(sae, config, pre, z, x, x_hat, dead, k_aux)
            loss = recon + coeff * second

            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
            with torch.no_grad():
                w, g = sae.W_dec, sae.W_dec.grad
                if g is not None:
                    g -= (g * w).sum(dim=-1, keepdim=True) * w  # [d_sae, d_in]
            optimizer.step()
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

            step += 1
            tokens += x.shape[0]
            window_tokens += x.shape[0]
            window_loss += loss.item()
            window_recon += recon.item()
            window_aux += second.item()
            window_steps += 1

            if (
                config.kind is SaeKind.RELU
                and config.resample_every is not None
                and step % config.resample_every == 0
                and step < config.steps
            ):
                n_resampled = _resample_dead(sae, optimizer, dead, x, x_hat.detach(), gen)
                if n_resampled:
                    tokens_since_fired[dead] = 0
                    window_resampled += n_resampled

            bar.update(1)
            if step % 10 == 0 or step == config.steps:
                bar.set_postfix(loss=f"{loss.item():.4f}", dead=int(dead.sum().item()))
            if config.checkpoint_every is not None and step % config.checkpoint_every == 0:
                checkpoint()
    finally:
        bar.close()

    if step == 0:
        raise InvalidArgumentError(
            f"the activation stream ended before the first training step: it needs eval_rows "
            f"({config.eval_rows}) + batch_size ({config.batch_size}) rows at least"
        )
    if not checkpoints or checkpoints[-1].step != step:
        checkpoint()
    final = _folded(sae, scale)
    final.requires_grad_(False)
    return TrainResult(
        sae=final,
        checkpoints=tuple(checkpoints),
        steps=step,
        tokens=tokens,
        input_scale=scale,
    )


__all__ = [
    "BDecInit",
    "CeEval",
    "CheckpointMetrics",
    "TrainConfig",
    "TrainResult",
    "geometric_median",
    "train_sae",
]
