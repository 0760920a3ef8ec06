"""Quality measures of an SAE: sparsity, reconstruction, latent density, CE loss recovered.

L0                   mean number of non-zero latents per row
explained variance   1 - Σ_rows ‖x - x̂‖² / Σ_rows ‖x - x̄‖²     (x̄: mean row of the batch)
density of latent i  fraction of rows where latent i is non-zero
CE loss recovered    (CE_zero - CE_spliced) / (CE_zero - CE_clean)
                     CE_clean: the model's loss; CE_spliced: with the SAE's reconstruction
                     in place of the site; CE_zero: with the site zero-ablated (SAELens's
                     ce_loss_score). 1 = as good as the model, 0 = as bad as zeroing the site.
mean max cosine      for each true direction, the largest cosine with any learned decoder
                     row, averaged over true directions (dictionary recovery).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch

from tdb_core.errors import InvalidArgumentError

DEFAULT_LOG10_DENSITY_EDGES: tuple[float, ...] = tuple(-10.0 + 0.5 * i for i in range(21))
"""Bin edges of the feature-density histogram: log10(density) from -10 to 0 in steps of 0.5."""


@dataclass(frozen=True)
class CeLossResult:
    """Cross-entropy of the model clean, with the SAE spliced in, and with the site zeroed.

    ``recovered`` is ``(zero_ablated_ce - spliced_ce) / (zero_ablated_ce - clean_ce)``, or None
    when ``zero_ablated_ce == clean_ce`` (the fraction is undefined). Build with
    ``ce_loss_result``.
    """

    clean_ce: float
    spliced_ce: float
    zero_ablated_ce: float
    recovered: float | None


@dataclass(frozen=True)
class DensityHistogram:
    """Histogram of per-latent firing densities on a log10 scale.

    ``counts[i]`` latents have log10(density) in ``[log10_edges[i], log10_edges[i+1])`` (the last
    bin includes its right edge; densities below the first edge count in the first bin).
    ``never_fired`` latents had density 0 over the ``tokens`` rows measured.
    """

    log10_edges: tuple[float, ...]
    counts: tuple[int, ...]
    never_fired: int
    tokens: int


def ce_loss_recovered(clean_ce: float, spliced_ce: float, zero_ablated_ce: float) -> float | None:
    """``(zero - spliced) / (zero - clean)``; None when zero == clean (undefined)."""
    if zero_ablated_ce == clean_ce:
        return None
    return (zero_ablated_ce - spliced_ce) / (zero_ablated_ce - clean_ce)


def ce_loss_result(clean_ce: float, spliced_ce: float, zero_ablated_ce: float) -> CeLossResult:
    """A ``CeLossResult`` with its recovered fraction filled in."""
    for name, value in (
        ("clean_ce", clean_ce),
        ("spliced_ce", spliced_ce),
        ("zero_ablated_ce", zero_ablated_ce),
    ):
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value}")
    return CeLossResult(
        clean_ce=float(clean_ce),
        spliced_ce=float(spliced_ce),
        zero_ablated_ce=float(zero_ablated_ce),
        recovered=ce_loss_recovered(clean_ce, spliced_ce, zero_ablated_ce),
    )


def l0(latents: torch.Tensor) -> float:
    """Mean number of non-zero latents per row of ``latents [..., d_sae]``."""
    return (latents != 0).sum(dim=-1).float().mean().item()


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` over the rows of ``x, x_hat [n, d]`` (in float64)."""
    if x.shape != x_hat.shape or x.ndim != 2 or x.shape[0] < 2:
        raise InvalidArgumentError(
            f"explained_variance needs two [n, d] tensors of one shape with n >= 2, got "
            f"{list(x.shape)} and {list(x_hat.shape)}"
        )
    x64, x_hat64 = x.double(), x_hat.double()
    residual = (x64 - x_hat64).pow(2).sum()
    total = (x64 - x64.mean(dim=0, keepdim=True)).pow(2).sum()
    return (1.0 - residual / total).item()


def density_histogram(
    fire_counts: torch.Tensor,
    tokens: int,
    log10_edges: tuple[float, ...] = DEFAULT_LOG10_DENSITY_EDGES,
) -> DensityHistogram:
    """Histogram of ``fire_counts [d_sae] / tokens`` on log10 bins."""
    if tokens < 1:
        raise InvalidArgumentError(f"density needs tokens >= 1, got {tokens}")
    if len(log10_edges) < 2 or any(b <= a for a, b in pairwise(log10_edges)):
        raise InvalidArgumentError("log10_edges must be at least two increasing numbers")
    density = fire_counts.double() / tokens  # [d_sae]
    fired = density > 0
    log_density = density[fired].log10()  # [n_fired]
    inner = torch.tensor(log10_edges[1:-1], dtype=torch.float64)
    bins = torch.searchsorted(inner, log_density, right=True)  # [n_fired] in [0, n_bins)
    counts = torch.bincount(bins, minlength=len(log10_edges) - 1)
    return DensityHistogram(
        log10_edges=tuple(float(e) for e in log10_edges),
        counts=tuple(int(c) for c in counts.tolist()),
        never_fired=int((~fired).sum().item()),
        tokens=int(tokens),
    )


def mean_max_cosine(true_directions: torch.Tensor, learned_directions: torch.Tensor) -> float:
    """Mean over true directions ``[n, d]`` of the max cosine with any learned row ``[m, d]``."""
    if (
        true_directions.ndim != 2
        or learned_directions.ndim != 2
        or (true_directions.shape[1] != learned_directions.shape[1])
    ):
        raise InvalidArgumentError(
            f"mean_max_cosine needs [n, d] and [m, d] tensors, got "
            f"{list(true_directions.shape)} and {list(learned_directions.shape)}"
        )
    t = torch.nn.functional.normalize(true_directions.double(), dim=-1)  # [n, d]
    u = torch.nn.functional.normalize(learned_directions.double(), dim=-1)  # [m, d]
    return (t @ u.T).max(dim=1).values.mean().item()  # [n, m] -> [n] -> scalar
