"""Scores: pooled Pearson correlation, ROC AUC with ties, balanced accuracy, detection (worked examples)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.scoring import (
    balanced_accuracy,
    correlation_score,
    detection_score,
    pearson,
    roc_auc,
)


def test_pooled_correlation_worked_example() -> None:
    """x=[0,1,2,3], y=[0,2,3,3] pooled: r = 5/sqrt(30); per-sequence values are kept, None when constant."""
    result = correlation_score([[0, 1], [2, 3]], [[0, 2], [3, 3]])
    assert result.score == pytest.approx(5 / math.sqrt(30), abs=1e-12)
    assert result.per_sequence == (pytest.approx(1.0), None)
    assert result.n_tokens == 4 and result.n_sequences == 2 and result.reason is None


def test_pooled_correlation_is_not_the_mean_of_per_sequence_correlations() -> None:
    """Pooling matters: two perfectly correlated sequences at different offsets pool to r < 1."""
    result = correlation_score([[0, 1], [10, 11]], [[0, 1], [0, 1]])
    assert result.per_sequence == (pytest.approx(1.0), pytest.approx(1.0))
    assert result.score is not None and result.score < 0.2


def test_correlation_matches_numpy() -> None:
    """Pooled correlation equals numpy.corrcoef of the concatenated sequences."""
    rng = np.random.default_rng(0)
    true = [rng.normal(size=n).tolist() for n in (5, 9, 3)]
    pred = [rng.normal(size=n).tolist() for n in (5, 9, 3)]
    expected = np.corrcoef(np.concatenate(true), np.concatenate(pred))[0, 1]
    assert correlation_score(true, pred).score == pytest.approx(expected, abs=1e-12)


def test_constant_predictions_give_none_with_reason_not_zero() -> None:
    """Undefined correlation is reported as None with a reason, never 0."""
    result = correlation_score([[0.0, 1.0, 2.0]], [[3.0, 3.0, 3.0]])
    assert result.score is None and "constant" in (result.reason or "")
    assert pearson([1.0, 1.0], [0.0, 1.0]) == (
        None,
        "the true activations are constant, so their correlation is undefined",
    )
    assert correlation_score([], []).score is None


def test_correlation_rejects_mismatched_lengths() -> None:
    """Sequences of different lengths are an InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match="must match"):
        correlation_score([[1.0, 2.0]], [[1.0]])


def test_roc_auc_worked_example_with_ties() -> None:
    """labels [1,1,0,0], scores [.9,.5,.5,.1]: pairs won 1, 1, 1/2 (tie), 1 -> 3.5/4."""
    assert roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == (0.875, None)
    assert roc_auc([1, 0], [0.0, 0.0]) == (0.5, None)
    assert roc_auc([1, 1], [0.1, 0.2])[0] is None


def _brute_force_auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    won = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return won / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), min_size=2, max_size=30))
def test_roc_auc_equals_pairwise_definition(data: list[tuple[bool, int]]) -> None:
    """The mid-rank AUC equals the pairwise count (ties 1/2) on arbitrary tied inputs."""
    labels = [int(y) for y, _ in data]
    scores = [float(s) for _, s in data]
    auc, reason = roc_auc(labels, scores)
    if 0 < sum(labels) < len(labels):
        assert auc == pytest.approx(_brute_force_auc(labels, scores), abs=1e-12)
    else:
        assert auc is None and reason is not None


def test_balanced_accuracy_worked_example() -> None:
    """labels [1,1,1,0], predictions [1,0,1,0]: TPR 2/3, TNR 1, balanced accuracy 5/6."""
    bacc, tpr, tnr, reason = balanced_accuracy([1, 1, 1, 0], [1, 0, 1, 0])
    assert (
        bacc == pytest.approx(5 / 6)
        and tpr == pytest.approx(2 / 3)
        and tnr == 1.0
        and reason is None
    )
    assert balanced_accuracy([1, 1], [1, 0])[0] is None


def test_detection_score_worked_example() -> None:
    """Records fire when their max >= 0.1 of the overall max; predicted fire when the simulated max >= 1."""
    true = [
        [0.0, 5.0],
        [0.2, 0.0],
        [0.0, 0.9],
        [0.0, 0.0],
    ]  # max 5 -> threshold 0.5: fires, no, yes, no
    predicted = [[0.0, 9.0], [0.5, 0.0], [0.0, 0.2], [3.0, 0.0]]  # predicted: yes, no, no, yes
    score = detection_score(true, predicted)
    assert (score.n_positive, score.n_negative) == (2, 2)
    assert score.true_positive_rate == 0.5 and score.true_negative_rate == 0.5
    assert score.balanced_accuracy == 0.5
    assert score.roc_auc == pytest.approx(_brute_force_auc([1, 0, 1, 0], [9.0, 0.5, 0.2, 3.0]))


def test_detection_without_both_classes_is_none_with_reason() -> None:
    """Only firing records: balanced accuracy is undefined, reported with a reason."""
    score = detection_score([[1.0], [2.0]], [[5.0], [5.0]])
    assert score.balanced_accuracy is None and score.reason is not None and score.n_negative == 0


def test_scores_random_inputs_are_bounded() -> None:
    """Sanity on random data: |r| <= 1 and 0 <= AUC <= 1."""
    rng = random.Random(3)
    for _ in range(20):
        xs = [rng.random() for _ in range(12)]
        ys = [rng.random() for _ in range(12)]
        r, _ = pearson(xs, ys)
        assert r is not None and -1.0 <= r <= 1.0
        auc, _ = roc_auc([int(x > 0.5) for x in xs], ys)
        assert auc is None or 0.0 <= auc <= 1.0
