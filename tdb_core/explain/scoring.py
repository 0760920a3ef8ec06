"""Scores: how well an explanation's predictions match a node's real activations. Pure functions.

* :func:`correlation_score` — the original's preferred score (``ev_correlation_score``): the
  Pearson correlation of true activations and simulated expected values over **all tokens of all
  scored sequences pooled** (not a mean of per-sequence correlations). Computed on raw true
  activations; Pearson is invariant to the simulator's 0..10 scale.
* :func:`detection_score` — does the explanation pick out the records where the node fires?
  A record's true label is "fires" when its max activation reaches ``fire_fraction`` (default 0.1,
  i.e. a normalized value >= 1) of the max over the scored records; its predicted label is "fires"
  when the simulation's max reaches ``predicted_threshold`` on the 0..10 scale (default 1.0).
  Reported as balanced accuracy, (TPR + TNR) / 2, plus the threshold-free ROC AUC of the
  record-level simulated max.
* :func:`roc_auc` — area under the ROC curve with ties counted one half (the Mann-Whitney
  statistic with mid-ranks); TDB scores attention-head explanations with it.

Undefined is never reported as 0: a correlation with a constant side, a balanced accuracy or AUC
with one class absent, gives ``score=None`` and a ``reason``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tdb_core.errors import InvalidArgumentError


@dataclass(frozen=True)
class CorrelationScore:
    """Pooled Pearson correlation; ``score`` None (with ``reason``) when undefined."""

    score: float | None
    reason: str | None
    n_sequences: int
    n_tokens: int
    per_sequence: tuple[float | None, ...]


@dataclass(frozen=True)
class DetectionScore:
    """Record-level detection: balanced accuracy at fixed thresholds, and ROC AUC of simulated maxima."""

    balanced_accuracy: float | None
    roc_auc: float | None
    true_positive_rate: float | None
    true_negative_rate: float | None
    n_positive: int
    n_negative: int
    reason: str | None


def _as_float_array(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidArgumentError(f"{what} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"{what} contain NaN or infinite values")
    return array


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, str | None]:
    """Pearson correlation of two equal-length sequences, or (None, reason) when undefined."""
    a, b = _as_float_array(x, "true activations"), _as_float_array(y, "predicted activations")
    if a.shape != b.shape:
        raise InvalidArgumentError(
            f"{a.size} true values but {b.size} predicted values; they must match"
        )
    if a.size < 2:
        return None, f"correlation needs at least 2 values, got {a.size}"
    da, db = a - a.mean(), b - b.mean()
    sa, sb = float(np.sqrt(np.dot(da, da))), float(np.sqrt(np.dot(db, db)))
    if sb == 0.0:
        return None, "the predicted activations are constant, so their correlation is undefined"
    if sa == 0.0:
        return None, "the true activations are constant, so their correlation is undefined"
    r = float(np.dot(da, db) / (sa * sb))
    return max(-1.0, min(1.0, r)), None


def correlation_score(
    true_activations: Sequence[Sequence[float]], predicted_activations: Sequence[Sequence[float]]
) -> CorrelationScore:
    """Pearson correlation over all tokens of all sequences pooled, plus each sequence's own."""
    if len(true_activations) != len(predicted_activations):
        raise InvalidArgumentError(
            f"{len(true_activations)} true sequences but {len(predicted_activations)} predicted; "
            "they must match"
        )
    per_sequence = []
    for i, (t, p) in enumerate(zip(true_activations, predicted_activations)):
        if len(t) != len(p):
            raise InvalidArgumentError(
                f"sequence {i} has {len(t)} true values but {len(p)} predicted; they must match"
            )
        per_sequence.append(pearson(t, p)[0])
    pooled_true = [v for seq in true_activations for v in seq]
    pooled_pred = [v for seq in predicted_activations for v in seq]
    score: float | None
    reason: str | None
    if not pooled_true:
        score, reason = None, "no tokens were scored"
    else:
        score, reason = pearson(pooled_true, pooled_pred)
    return CorrelationScore(
        score=score,
        reason=reason,
        n_sequences=len(true_activations),
        n_tokens=len(pooled_true),
        per_sequence=tuple(per_sequence),
    )


def roc_auc(
    labels: Sequence[int | bool], scores: Sequence[float]
) -> tuple[float | None, str | None]:
    """ROC AUC of ``scores`` for binary ``labels``, ties counted 1/2; (None, reason) with one class."""
    y = np.asarray([bool(v) for v in labels])
    s = _as_float_array(scores, "scores")
    if y.shape != s.shape:
        raise InvalidArgumentError(f"{y.size} labels but {s.size} scores; they must match")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None, f"ROC AUC needs both classes; got {n_pos} positive and {n_neg} negative"
    # Mid-ranks (1-based) of all scores; the positives' rank sum gives the Mann-Whitney U.
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    start = 0
    while start < s.size:
        end = start
        while end + 1 < s.size and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg)), None


def balanced_accuracy(
    labels: Sequence[int | bool], predictions: Sequence[int | bool]
) -> tuple[float | None, float | None, float | None, str | None]:
    """(balanced accuracy, TPR, TNR, reason); None values with a reason when a class is absent."""
    y = np.asarray([bool(v) for v in labels])
    p = np.asarray([bool(v) for v in predictions])
    if y.shape != p.shape:
        raise InvalidArgumentError(f"{y.size} labels but {p.size} predictions; they must match")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = float((p & y).sum() / n_pos) if n_pos else None
    tnr = float((~p & ~y).sum() / n_neg) if n_neg else None
    if tpr is None or tnr is None:
        return (
            None,
            tpr,
            tnr,
            (
                f"balanced accuracy needs records where the node fires and records where it does not; "
                f"got {n_pos} firing and {n_neg} not firing"
            ),
        )
    return (tpr + tnr) / 2.0, tpr, tnr, None


def detection_score(
    true_activations: Sequence[Sequence[float]],
    predicted_activations: Sequence[Sequence[float]],
    *,
    fire_fraction: float = 0.1,
    predicted_threshold: float = 1.0,
) -> DetectionScore:
    """Record-level detection of where the node fires (see the module docstring for the labels)."""
    if len(true_activations) != len(predicted_activations):
        raise InvalidArgumentError(
            f"{len(true_activations)} true sequences but {len(predicted_activations)} predicted; "
            "they must match"
        )
    if not 0.0 < fire_fraction <= 1.0:
        raise InvalidArgumentError(f"fire_fraction is {fire_fraction}; it must be in (0, 1]")
    if not true_activations:
        return DetectionScore(None, None, None, None, 0, 0, "no records were scored")
    true_max = [max(seq) if len(seq) else 0.0 for seq in true_activations]
    predicted_max = [max(seq) if len(seq) else 0.0 for seq in predicted_activations]
    overall = max(true_max)
    if overall <= 0:
        return DetectionScore(
            None, None, None, None, 0, len(true_max), "the node never fires in these records"
        )
    labels = [m >= fire_fraction * overall for m in true_max]
    predictions = [m >= predicted_threshold for m in predicted_max]
    bacc, tpr, tnr, reason = balanced_accuracy(labels, predictions)
    auc, _ = roc_auc(labels, predicted_max)
    return DetectionScore(
        balanced_accuracy=bacc,
        roc_auc=auc,
        true_positive_rate=tpr,
        true_negative_rate=tnr,
        n_positive=sum(labels),
        n_negative=len(labels) - sum(labels),
        reason=reason,
    )
