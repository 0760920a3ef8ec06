"""The explain -> simulate -> score pipeline: progress events, best-candidate choice, failures, misuse."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest

from tdb_core.errors import CancelledError, InvalidArgumentError
from tdb_core.explain.explainers import BaselineExplainer, BaselineHeadExplainer
from tdb_core.explain.heads import BaselinePairJudge
from tdb_core.explain.pipeline import (
    Phase,
    ProgressEvent,
    explain_head,
    explain_node,
    head_store_fields,
    score_explanation,
    store_fields,
)
from tdb_core.explain.records import ActivationRecord, NodeRecords
from tdb_core.explain.simulators import BaselineSimulator, SimulationMethod, SimulationResult
from tdb_core.explain.store import ExplanationStore


class FixedExplainer:
    """Returns the given candidates (duplicates included)."""

    def __init__(self, candidates: list[str]) -> None:
        self.candidates = candidates

    @property
    def name(self) -> str:
        return "fixed"

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        return list(self.candidates)


class FlakySimulator:
    """The baseline predictor, except that every ``fail_every``-th call fails like an unreadable LLM answer."""

    def __init__(self, fail_every: int) -> None:
        self.fail_every = fail_every
        self.calls = 0

    @property
    def name(self) -> str:
        return "flaky"

    def simulate(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        self.calls += 1
        if self.calls % self.fail_every == 0:
            return SimulationResult(
                tuple(tokens),
                None,
                SimulationMethod.LOGPROB_FREE,
                error=f"unreadable #{self.calls}",
            )
        return BaselineSimulator().simulate(explanation, tokens)


def test_progress_events_cover_every_phase_in_order(word_nodes: list[NodeRecords]) -> None:
    """explaining -> simulating (one event per sequence, counting up to the total) -> scoring -> done."""
    events: list[ProgressEvent] = []
    explain_node(
        word_nodes[0],
        BaselineExplainer(),
        BaselineSimulator(),
        n_examples_per_split=5,
        progress=events.append,
    )
    phases = [e.phase for e in events]
    assert phases[:2] == [Phase.EXPLAINING, Phase.EXPLAINING]
    assert phases[-2:] == [Phase.SCORING, Phase.DONE]
    simulating = [e for e in events if e.phase is Phase.SIMULATING]
    assert [e.done for e in simulating] == list(range(1, 11)) and all(
        e.total == 10 for e in simulating
    )


def test_progress_callback_can_cancel(word_nodes: list[NodeRecords]) -> None:
    """An exception raised by the callback (a cancelled client) stops the pipeline."""
    simulator = FlakySimulator(fail_every=1000)

    def cancel_on_simulating(event: ProgressEvent) -> None:
        if event.phase is Phase.SIMULATING and event.done == 3:
            raise CancelledError("client went away")

    with pytest.raises(CancelledError):
        explain_node(
            word_nodes[0],
            BaselineExplainer(),
            simulator,
            n_examples_per_split=5,
            progress=cancel_on_simulating,
        )
    assert simulator.calls == 3


def test_best_candidate_is_the_one_with_the_highest_correlation(
    word_nodes: list[NodeRecords],
) -> None:
    """Every distinct candidate is scored; the best by pooled correlation is returned; records are recorded."""
    explainer = FixedExplainer(
        ['the token " dog" (10.0)', 'the token " cat" (10.0)', 'the token " dog" (10.0)']
    )
    result = explain_node(word_nodes[0], explainer, BaselineSimulator(), n_examples_per_split=5)
    assert [c.explanation for c in result.candidates] == [
        'the token " dog" (10.0)',
        'the token " cat" (10.0)',
    ]
    assert result.best.explanation == 'the token " cat" (10.0)'
    assert result.explainer == "fixed" and result.best.simulator == "baseline"
    used = result.records_used
    assert (used.explain_split, used.explain_top, used.explain_random) == ("train", 5, 5)
    assert (used.score_split, used.score_top, used.score_random) == ("valid", 5, 5)


def test_failed_simulations_are_left_out_and_counted(word_nodes: list[NodeRecords]) -> None:
    """Some failures: scored on the rest, counted with reasons. All failures: score None with a reason."""
    scored, _ = score_explanation(
        word_nodes[0],
        'the token " cat" (10.0)',
        FlakySimulator(fail_every=2),
        n_examples_per_split=5,
    )
    assert scored.scores.n_failed == 5 and scored.scores.failures[0] == "unreadable #2"
    assert scored.scores.correlation.n_sequences == 5
    assert scored.scores.correlation.score is not None and scored.scores.correlation.score > 0.9

    none, _ = score_explanation(
        word_nodes[0],
        'the token " cat" (10.0)',
        FlakySimulator(fail_every=1),
        n_examples_per_split=5,
    )
    assert none.scores.correlation.score is None
    assert none.scores.correlation.reason == "all 10 simulations failed; first: unreadable #1"
    assert none.scores.detection.balanced_accuracy is None


def test_misuse_is_invalid_argument(
    word_nodes: list[NodeRecords], head_nodes: list[NodeRecords]
) -> None:
    """Head records in the neuron pipeline (and vice versa) and empty explanations are rejected clearly."""
    with pytest.raises(InvalidArgumentError, match="token_pair records; use explain_head"):
        explain_node(head_nodes[0], BaselineExplainer(), BaselineSimulator())
    with pytest.raises(InvalidArgumentError, match="token records; use explain_node"):
        explain_head(word_nodes[0], BaselineExplainer(), BaselinePairJudge())
    with pytest.raises(InvalidArgumentError, match="empty"):
        score_explanation(word_nodes[0], "  ", BaselineSimulator())


def test_results_round_trip_through_the_store(
    word_nodes: list[NodeRecords], head_nodes: list[NodeRecords], tmp_path: Path
) -> None:
    """store_fields / head_store_fields give rows that survive a store restart with every score."""
    result = explain_node(
        word_nodes[1], BaselineExplainer(), BaselineSimulator(), n_examples_per_split=5
    )
    head = explain_head(
        head_nodes[0], BaselineHeadExplainer(), BaselinePairJudge(), n_examples_per_split=5
    )
    store = ExplanationStore(tmp_path / "e.db")
    store.put(
        model="toy",
        node_key=result.node_key,
        method="token_activation_pair",
        explainer=result.explainer,
        **asdict(store_fields(result.best, result.records_used)),
    )
    fields = head_store_fields(head.best_explanation, head.best, head.judge, head.records_used)
    store.put(
        model="toy",
        node_key=head.node_key,
        method="attention_head",
        explainer=head.explainer,
        **asdict(fields),
    )

    row = ExplanationStore(tmp_path / "e.db").get(
        model="toy", node_key=result.node_key, method="token_activation_pair", explainer="baseline"
    )
    assert row.explanation == result.best.explanation
    assert row.score == result.best.scores.correlation.score
    assert (
        row.scores["detection_balanced_accuracy"] == result.best.scores.detection.balanced_accuracy
    )
    assert row.scores["simulator"] == "baseline" and row.records_used["score_split"] == "valid"
    head_row = store.get(
        model="toy", node_key="head:0:0", method="attention_head", explainer="baseline_head"
    )
    assert head_row.score == head.best.roc_auc and head_row.scores["n_pairs"] == 10
