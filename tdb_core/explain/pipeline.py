"""The explain -> simulate -> score pipeline for one node, with progress reporting.

Mining (``mining.py``) produces a node's :class:`~tdb_core.explain.records.NodeRecords`; from them:

* :func:`explain_node` (neurons, SAE latents): split the records as the original does, ask the
  explainer for candidates from the ``train`` split (top records; the ``calibration`` split's
  random records as contrast), simulate every candidate on the ``valid`` split (top + random 1:1,
  the original's "top-and-random" set), score each, and return the best by pooled correlation.
* :func:`score_explanation`: the same scoring for a given explanation.
* :func:`explain_head` / :func:`score_head`: attention heads, explained from the ``train`` split's
  pairs and scored by TDB's ROC AUC on the ``valid`` split's pairs.

``progress`` receives a :class:`ProgressEvent` at each step (phases explaining, simulating,
scoring, done); it runs on the caller's thread, and an exception it raises (e.g.
``tdb_core.errors.CancelledError`` when the client went away) stops the pipeline.

A failed simulation (unreadable LLM answer) is left out of the scores and counted in
``n_failed``, with the reasons kept; if every simulation fails, the score is None with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.explainers import Explainer
from tdb_core.explain.formatting import max_activation
from tdb_core.explain.heads import HeadScore, PairJudge, score_head_explanation
from tdb_core.explain.records import (
    ActivationRecord,
    NodeRecords,
    RecordKind,
    RecordSplits,
    check_record,
    split_records,
)
from tdb_core.explain.scoring import (
    CorrelationScore,
    DetectionScore,
    correlation_score,
    detection_score,
)
from tdb_core.explain.simulators import SimulationResult, Simulator


class Phase(str, Enum):
    """Pipeline phase reported to the progress callback."""

    EXPLAINING = "explaining"
    SIMULATING = "simulating"
    SCORING = "scoring"
    DONE = "done"


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` steps of ``phase`` are finished."""

    phase: Phase
    done: int
    total: int
    message: str


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class RecordsUsed:
    """Which records an explanation was written from and scored on (stored with it).

    ``explain_random`` counts the random records offered to the explainer as contrast (only the
    baseline uses them; LLM explainers show top records only, as the original method does).
    """

    n_examples_per_split: int
    explain_split: str
    explain_top: int
    explain_random: int
    score_split: str
    score_top: int
    score_random: int


@dataclass(frozen=True)
class SimulationScores:
    """Scores of one explanation's simulations against the true activations."""

    correlation: CorrelationScore
    detection: DetectionScore
    n_failed: int
    failures: tuple[str, ...]


SimulationScorer = Callable[
    [Sequence[ActivationRecord], Sequence[SimulationResult]], SimulationScores
]


@dataclass(frozen=True)
class ScoredExplanation:
    """An explanation, the simulator that scored it, its scores and the simulations behind them."""

    explanation: str
    simulator: str
    scores: SimulationScores
    simulations: tuple[SimulationResult, ...]
    fallback_reason: str | None


@dataclass(frozen=True)
class NodeExplanation:
    """Result of :func:`explain_node`: the best candidate, all candidates, and the records used."""

    node_key: str
    explainer: str
    best: ScoredExplanation
    candidates: tuple[ScoredExplanation, ...]
    records_used: RecordsUsed


@dataclass(frozen=True)
class HeadExplanation:
    """Result of :func:`explain_head`: the best candidate by ROC AUC and all candidates."""

    node_key: str
    explainer: str
    judge: str
    best_explanation: str
    best: HeadScore
    candidates: tuple[tuple[str, HeadScore], ...]
    records_used: RecordsUsed


def score_simulations(
    records: Sequence[ActivationRecord], simulations: Sequence[SimulationResult]
) -> SimulationScores:
    """Pooled correlation and detection over the simulations that succeeded."""
    if len(records) != len(simulations):
        raise InvalidArgumentError(
            f"{len(records)} records but {len(simulations)} simulations; they must match"
        )
    kept_true, kept_predicted, failures = [], [], []
    for record, simulation in zip(records, simulations):
        if simulation.expected_activations is None:
            failures.append(simulation.error or "simulation failed")
            continue
        kept_true.append(list(record.activations))
        kept_predicted.append(list(simulation.expected_activations))
    correlation = correlation_score(kept_true, kept_predicted)
    detection = detection_score(kept_true, kept_predicted)
    if not kept_true and failures:
        reason = f"all {len(failures)} simulations failed; first: {failures[0]}"
        correlation = CorrelationScore(None, reason, 0, 0, ())
        detection = DetectionScore(None, None, None, None, 0, 0, reason)
    return SimulationScores(correlation, detection, len(failures), tuple(failures))


def _report(
    progress: ProgressCallback | None, phase: Phase, done: int, total: int, message: str
) -> None:
    if progress is not None:
        progress(ProgressEvent(phase, done, total, message))


def _checked_splits(
    node: NodeRecords, kind: RecordKind, n_examples_per_split: int | None
) -> RecordSplits:
    if node.kind is not kind:
        use = (
            "explain_head / score_head"
            if node.kind is RecordKind.TOKEN_PAIR
            else "explain_node / score_explanation"
        )
        raise InvalidArgumentError(
            f"node {node.node_key!r} has {node.kind.value} records; use {use}"
        )
    for record in node.record.most_positive_activation_records + node.record.random_sample:
        check_record(record, kind)
    splits = split_records(node.record, n_examples_per_split)
    if max_activation(splits.train) <= 0:
        raise FailedPreconditionError(
            f"node {node.node_key!r} has no positive activation in its top records (max over the dataset "
            f"{node.max_activation}); there is nothing to explain"
        )
    return splits


def _records_used(splits: RecordSplits, explain_random: int) -> RecordsUsed:
    return RecordsUsed(
        n_examples_per_split=splits.n_examples_per_split,
        explain_split="train",
        explain_top=len(splits.train),
        explain_random=explain_random,
        score_split="valid",
        score_top=len(splits.valid_top),
        score_random=len(splits.valid_random),
    )


def _score_candidate(
    explanation: str,
    records: Sequence[ActivationRecord],
    simulator: Simulator,
    scorer: SimulationScorer,
    progress: ProgressCallback | None,
    done_before: int,
    total: int,
) -> ScoredExplanation:
    simulations = []
    for i, record in enumerate(records):
        simulations.append(simulator.simulate(explanation, record.tokens))
        _report(
            progress,
            Phase.SIMULATING,
            done_before + i + 1,
            total,
            f"simulated sequence {i + 1} of {len(records)}",
        )
    fallback = next((s.fallback_reason for s in simulations if s.fallback_reason), None)
    return ScoredExplanation(
        explanation=explanation,
        simulator=simulator.name,
        scores=scorer(records, simulations),
        simulations=tuple(simulations),
        fallback_reason=fallback,
    )


def score_explanation(
    node: NodeRecords,
    explanation: str,
    simulator: Simulator,
    *,
    n_examples_per_split: int | None = None,
    scorer: SimulationScorer = score_simulations,
    progress: ProgressCallback | None = None,
) -> tuple[ScoredExplanation, RecordsUsed]:
    """Simulate ``explanation`` on the node's valid split and score it."""
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to score is empty; give a non-empty one")
    splits = _checked_splits(node, RecordKind.TOKEN, n_examples_per_split)
    records = splits.valid_top + splits.valid_random
    scored = _score_candidate(
        explanation.strip(), records, simulator, scorer, progress, 0, len(records)
    )
    _report(progress, Phase.SCORING, 1, 1, "scored")
    _report(progress, Phase.DONE, 1, 1, "done")
    return scored, _records_used(splits, 0)


def _rank(scored: ScoredExplanation) -> float:
    value = scored.scores.correlation.score
    return -2.0 if value is None else value


def explain_node(
    node: NodeRecords,
    explainer: Explainer,
    simulator: Simulator,
    *,
    n_examples_per_split: int | None = None,
    scorer: SimulationScorer = score_simulations,
    progress: ProgressCallback | None = None,
) -> NodeExplanation:
    """Explain a neuron/latent, score every candidate, and return the best by pooled correlation."""
    splits = _checked_splits(node, RecordKind.TOKEN, n_examples_per_split)
    _report(progress, Phase.EXPLAINING, 0, 1, f"explaining with {explainer.name}")
    candidates = list(
        dict.fromkeys(explainer.explain(splits.train, contrast=splits.calibration_random))
    )
    if not candidates:
        raise FailedPreconditionError(
            f"{explainer.name} produced no explanation for node {node.node_key!r}"
        )
    _report(progress, Phase.EXPLAINING, 1, 1, f"{len(candidates)} candidate explanation(s)")
    records = splits.valid_top + splits.valid_random
    total = len(candidates) * len(records)
    scored = [
        _score_candidate(c, records, simulator, scorer, progress, i * len(records), total)
        for i, c in enumerate(candidates)
    ]
    _report(progress, Phase.SCORING, 1, 1, "scored")
    best = max(scored, key=_rank)  # first of equals wins
    _report(progress, Phase.DONE, 1, 1, "done")
    return NodeExplanation(
        node_key=node.node_key,
        explainer=explainer.name,
        best=best,
        candidates=tuple(scored),
        records_used=_records_used(splits, len(splits.calibration_random)),
    )


def score_head(
    node: NodeRecords,
    explanation: str,
    judge: PairJudge,
    *,
    n_examples_per_split: int | None = None,
    n_pairs: int = 5,
    low_fraction: float = 0.1,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> tuple[HeadScore, RecordsUsed]:
    """TDB's head score (ROC AUC over judged pairs) of ``explanation`` on the valid split."""
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to score is empty; give a non-empty one")
    splits = _checked_splits(node, RecordKind.TOKEN_PAIR, n_examples_per_split)

    def on_pair(done: int, total: int) -> None:
        _report(progress, Phase.SIMULATING, done, total, f"judged pair {done} of {total}")

    score = score_head_explanation(
        explanation.strip(),
        splits.valid_top + splits.valid_random,
        judge,
        n_pairs=n_pairs,
        low_fraction=low_fraction,
        seed=seed,
        on_pair=on_pair,
    )
    _report(progress, Phase.DONE, 1, 1, "done")
    return score, _records_used(splits, 0)


def explain_head(
    node: NodeRecords,
    explainer: Explainer,
    judge: PairJudge,
    *,
    n_examples_per_split: int | None = None,
    n_pairs: int = 5,
    low_fraction: float = 0.1,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> HeadExplanation:
    """Explain an attention head and return the candidate with the best ROC AUC."""
    splits = _checked_splits(node, RecordKind.TOKEN_PAIR, n_examples_per_split)
    _report(progress, Phase.EXPLAINING, 0, 1, f"explaining with {explainer.name}")
    candidates = list(
        dict.fromkeys(explainer.explain(splits.train, contrast=splits.calibration_random))
    )
    if not candidates:
        raise FailedPreconditionError(
            f"{explainer.name} produced no explanation for node {node.node_key!r}"
        )
    _report(progress, Phase.EXPLAINING, 1, 1, f"{len(candidates)} candidate explanation(s)")
    records = splits.valid_top + splits.valid_random
    results: list[tuple[str, HeadScore]] = []
    for c_index, candidate in enumerate(candidates):

        def on_pair(done: int, total: int, c_index: int = c_index) -> None:
            _report(
                progress,
                Phase.SIMULATING,
                c_index * total + done,
                len(candidates) * total,
                f"judged pair {done} of {total}",
            )

        results.append(
            (
                candidate,
                score_head_explanation(
                    candidate,
                    records,
                    judge,
                    n_pairs=n_pairs,
                    low_fraction=low_fraction,
                    seed=seed,
                    on_pair=on_pair,
                ),
            )
        )
    _report(progress, Phase.SCORING, 1, 1, "scored")
    best_explanation, best = max(
        results, key=lambda r: -2.0 if r[1].roc_auc is None else r[1].roc_auc
    )
    _report(progress, Phase.DONE, 1, 1, "done")
    return HeadExplanation(
        node_key=node.node_key,
        explainer=explainer.name,
        judge=judge.name,
        best_explanation=best_explanation,
        best=best,
        candidates=tuple(results),
        records_used=_records_used(splits, len(splits.calibration_random)),
    )


# ------------------------------------------------------------------------------------------------
# Rows for the explanation store


@dataclass(frozen=True)
class StoreFields:
    """Everything ``ExplanationStore.put`` needs besides the key (model, sae_id, node_key, method,
    explainer): ``store.put(model=..., node_key=..., method=..., explainer=..., **asdict(fields))``."""

    explanation: str
    score: float | None
    score_reason: str | None
    scores: dict[str, Any]
    records_used: dict[str, Any]


def store_fields(scored: ScoredExplanation, records_used: RecordsUsed) -> StoreFields:
    """Store row of a neuron/latent explanation; the primary score is the pooled correlation."""
    correlation, detection = scored.scores.correlation, scored.scores.detection
    return StoreFields(
        explanation=scored.explanation,
        score=correlation.score,
        score_reason=correlation.reason,
        scores={
            "correlation": correlation.score,
            "correlation_reason": correlation.reason,
            "detection_balanced_accuracy": detection.balanced_accuracy,
            "detection_roc_auc": detection.roc_auc,
            "detection_reason": detection.reason,
            "n_scored_sequences": correlation.n_sequences,
            "n_failed_simulations": scored.scores.n_failed,
            "simulator": scored.simulator,
            "fallback_reason": scored.fallback_reason,
        },
        records_used=asdict(records_used),
    )


def head_store_fields(
    explanation: str, score: HeadScore, judge: str, records_used: RecordsUsed
) -> StoreFields:
    """Store row of an attention-head explanation; the primary score is the ROC AUC."""
    return StoreFields(
        explanation=explanation,
        score=score.roc_auc,
        score_reason=score.reason,
        scores={
            "roc_auc": score.roc_auc,
            "roc_auc_reason": score.reason,
            "n_pairs": len(score.pairs),
            "n_failed_judgements": score.n_failed,
            "judge": judge,
        },
        records_used=asdict(records_used),
    )
