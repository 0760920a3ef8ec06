"""Scoring attention-head explanations the way TDB does: judge token pairs one at a time, then ROC AUC.

TDB (``attention_head_scoring.AttentionHeadOneAtATimeScorer``): take the 5 strongest pairs
(label 1) and 5 random pairs whose activation is below 0.1 of the max (label 0); for each, a
prompt shows the explanation and the sequence with the pair marked, and the judge answers 0 or 1.
The prediction is ``P("1") / (P("0") + P("1"))`` from the answer token's logprobs; the score is the
ROC AUC of predictions against labels (ties count 1/2).

Judges (:class:`PairJudge`):
* :class:`LLMPairJudge` — any backend. Without logprobs, ``on_missing_logprobs=FALLBACK`` asks for
  a greedy answer and uses 1.0 for "1", 0.0 for "0" (recorded as ``fallback_reason``); an answer
  that is neither makes that pair *failed*, never a silent 0.
* :class:`BaselinePairJudge` — evaluates a baseline head rule (1.0 if it holds, else 0.0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from tdb_core.explain.backends import LLMBackend, LogprobsUnavailableError
from tdb_core.explain.baseline import head_rule_holds, parse_head_rule
from tdb_core.explain.few_shot import HEAD_FEW_SHOT_EXAMPLES, HeadFewShotExample
from tdb_core.explain.pairs import TokenPair, first_key_skippable, low_pairs, top_pairs
from tdb_core.explain.prompts import ChatMessage, build_head_judge_prompt
from tdb_core.explain.records import ActivationRecord
from tdb_core.explain.scoring import roc_auc
from tdb_core.explain.simulators import MissingLogprobsPolicy

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PairPrediction:
    """A judge's belief (0..1) that the head activates on a pair; None with ``error`` if it failed."""

    probability: float | None
    method: str
    error: str | None = None
    fallback_reason: str | None = None


@runtime_checkable
class PairJudge(Protocol):
    """Predicts, from an explanation, whether a head activates on one marked token pair."""

    @property
    def name(self) -> str:
        """Recorded with every score."""
        ...

    def judge(
        self, explanation: str, tokens: Sequence[str], pair: tuple[int, int]
    ) -> PairPrediction:
        """Belief that the head attends from ``pair[0]`` (query) to ``pair[1]`` (key)."""
        ...


class LLMPairJudge:
    """TDB's one-pair-at-a-time judge prompt on any backend."""

    def __init__(
        self,
        backend: LLMBackend,
        *,
        few_shot: Sequence[HeadFewShotExample] = HEAD_FEW_SHOT_EXAMPLES,
        on_missing_logprobs: MissingLogprobsPolicy = MissingLogprobsPolicy.FALLBACK,
    ) -> None:
        self._backend = backend
        self._few_shot = few_shot
        self._policy = MissingLogprobsPolicy(on_missing_logprobs)
        self._fallback_reason: str | None = None

    @property
    def name(self) -> str:
        """``pair_judge:{backend}``."""
        return f"pair_judge:{self._backend.name}"

    def _hard_answer(self, messages: Sequence[ChatMessage]) -> PairPrediction:
        answer = self._backend.generate(messages, max_tokens=2, temperature=0.0, n=1)[0].strip()
        probability = {"1": 1.0, "0": 0.0}.get(answer[:1]) if answer else None
        return PairPrediction(
            probability=probability,
            method="hard_answer",
            error=None if probability is not None else f"the judge answered {answer!r}, not 0 or 1",
            fallback_reason=self._fallback_reason,
        )

    def judge(
        self, explanation: str, tokens: Sequence[str], pair: tuple[int, int]
    ) -> PairPrediction:
        """P("1") / (P("0") + P("1")) from the answer token's logprobs (or a hard answer as fallback)."""
        messages = build_head_judge_prompt(explanation, tokens, pair, few_shot=self._few_shot)
        if self._fallback_reason is not None:
            return self._hard_answer(messages)
        try:
            logprobs = self._backend.next_token_logprobs(messages, ("0", "1"))
        except LogprobsUnavailableError as exc:
            if self._policy is MissingLogprobsPolicy.ERROR:
                raise
            self._fallback_reason = str(exc)
            log.warning(
                "pair_judge_fallback", backend=self._backend.name, reason=self._fallback_reason
            )
            return self._hard_answer(messages)
        p0 = math.exp(logprobs["0"]) if "0" in logprobs else 0.0
        p1 = math.exp(logprobs["1"]) if "1" in logprobs else 0.0
        if p0 + p1 == 0.0:
            return PairPrediction(
                None, "logprobs", error="neither 0 nor 1 was among the answer's top logprobs"
            )
        return PairPrediction(probability=p1 / (p0 + p1), method="logprobs")


class BaselinePairJudge:
    """Evaluates a baseline head rule: 1.0 where it holds, else 0.0."""

    @property
    def name(self) -> str:
        """``baseline_head``."""
        return "baseline_head"

    def judge(
        self, explanation: str, tokens: Sequence[str], pair: tuple[int, int]
    ) -> PairPrediction:
        """InvalidArgumentError if the explanation is not a baseline head rule."""
        rule = parse_head_rule(explanation)
        holds = head_rule_holds(rule, tokens, pair[0], pair[1])
        return PairPrediction(probability=1.0 if holds else 0.0, method="baseline")


@dataclass(frozen=True)
class ScoredPair:
    """One judged pair with its true label (1: among the strongest, 0: weak)."""

    pair: TokenPair
    label: int
    prediction: PairPrediction


@dataclass(frozen=True)
class HeadScore:
    """ROC AUC over judged pairs; None with ``reason`` when undefined. Failed judgements are excluded."""

    roc_auc: float | None
    reason: str | None
    pairs: tuple[ScoredPair, ...]
    n_failed: int


def score_head_explanation(
    explanation: str,
    records: Sequence[ActivationRecord],
    judge: PairJudge,
    *,
    n_pairs: int = 5,
    low_fraction: float = 0.1,
    seed: int = 0,
    on_pair: Callable[[int, int], None] | None = None,
) -> HeadScore:
    """TDB's head score on ``records`` (``on_pair(done, total)`` is called after each judgement)."""
    skip = first_key_skippable(records, low_fraction)  # the attention sink: see pairs.py
    strong = top_pairs(records, n_pairs, skip_first_key=skip)
    weak = low_pairs(records, n_pairs, low_fraction=low_fraction, seed=seed, skip_first_key=skip)
    labelled = [(p, 1) for p in strong] + [(p, 0) for p in weak]
    scored = []
    for i, (pair, label) in enumerate(labelled):
        tokens = records[pair.record_index].tokens
        scored.append(
            ScoredPair(pair, label, judge.judge(explanation, tokens, (pair.query, pair.key)))
        )
        if on_pair is not None:
            on_pair(i + 1, len(labelled))
    labels = [s.label for s in scored if s.prediction.probability is not None]
    probabilities = [p for s in scored if (p := s.prediction.probability) is not None]
    n_failed = len(scored) - len(probabilities)
    if not probabilities:
        return HeadScore(None, f"all {len(scored)} pair judgements failed", tuple(scored), n_failed)
    auc, reason = roc_auc(labels, probabilities)
    return HeadScore(auc, reason, tuple(scored), n_failed)
