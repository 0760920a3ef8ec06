"""SAE metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdb_core.errors import InvalidArgumentError
from tdb_core.sae import (
    ce_loss_recovered,
    ce_loss_result,
    density_histogram,
    explained_variance,
    l0,
    mean_max_cosine,
)


def test_explained_variance_matches_numpy() -> None:
    """EV = 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖², checked against numpy; perfect = 1, mean-only = 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * 2 + 1
    x_hat = x + 0.3 * torch.randn(50, 6, generator=g)
    xn, hn = x.numpy().astype(np.float64), x_hat.numpy().astype(np.float64)
    expected = 1 - ((xn - hn) ** 2).sum() / ((xn - xn.mean(axis=0)) ** 2).sum()
    assert explained_variance(x, x_hat) == pytest.approx(expected, abs=1e-12)
    assert explained_variance(x, x) == 1.0
    assert explained_variance(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(
        0.0, abs=1e-12
    )
    with pytest.raises(InvalidArgumentError, match="n >= 2"):
        explained_variance(x[:1], x_hat[:1])


def test_l0_counts_nonzeros_per_row() -> None:
    """L0 is the mean count of non-zero entries per row, over any leading shape."""
    z = torch.tensor([[[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]], [[3.0, 3.0, 3.0], [0.0, 0.5, 0.0]]])
    assert l0(z) == pytest.approx((2 + 0 + 3 + 1) / 4)


def test_density_histogram_bins() -> None:
    """Densities land in their log10 bins; zeros count as never fired; tiny ones clamp low."""
    counts = torch.tensor([0, 1, 10, 100, 1000, 5, 0])
    hist = density_histogram(counts, tokens=1000)
    assert hist.never_fired == 2
    assert hist.tokens == 1000
    assert len(hist.counts) == len(hist.log10_edges) - 1 == 20
    expected = [0] * 20
    for log10 in (-3.0, -2.0, -1.0, 0.0, math.log10(0.005)):
        index = min(int((log10 + 10) // 0.5), 19)
        expected[index] += 1
    assert list(hist.counts) == expected
    assert hist.counts[14] == 1 and hist.counts[15] == 1 and hist.counts[19] == 1
    tiny = density_histogram(torch.tensor([1]), tokens=10**12)
    assert tiny.counts[0] == 1
    with pytest.raises(InvalidArgumentError, match="tokens >= 1"):
        density_histogram(counts, tokens=0)


def test_mean_max_cosine() -> None:
    """Mean over true directions of the best cosine with any learned row (scale-free)."""
    true = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    learned = torch.tensor([[2.0, 2.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0]])
    assert mean_max_cosine(true, learned) == pytest.approx((1 / math.sqrt(2) + 1.0) / 2)
    assert mean_max_cosine(true, 3 * true.flip(0)) == pytest.approx(1.0)
    with pytest.raises(InvalidArgumentError):
        mean_max_cosine(true, torch.zeros(4, 2))


def test_ce_loss_recovered() -> None:
    """recovered = (zero - spliced) / (zero - clean); undefined (None) when zero == clean."""
    result = ce_loss_result(clean_ce=2.0, spliced_ce=2.5, zero_ablated_ce=6.0)
    assert result.recovered == pytest.approx(0.875)
    assert (result.clean_ce, result.spliced_ce, result.zero_ablated_ce) == (2.0, 2.5, 6.0)
    assert ce_loss_recovered(3.0, 3.5, 3.0) is None
    assert ce_loss_recovered(2.0, 7.0, 6.0) == pytest.approx(-0.25)
    with pytest.raises(InvalidArgumentError, match="spliced_ce must be a finite number"):
        ce_loss_result(2.0, float("nan"), 6.0)
