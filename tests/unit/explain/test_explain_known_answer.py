"""Known-answer tests: planted nodes whose activation is an exact function of the tokens.

The baseline (token statistics) explainer must recover the planted function well enough to score
>= 0.9, and a deliberately wrong explanation must score <= 0.2 (correlation) — or, for heads,
no better than chance (ROC AUC <= 0.6).
"""

from __future__ import annotations

import pytest

from tdb_core.errors import FailedPreconditionError
from tdb_core.explain.baseline import parse_token_rules
from tdb_core.explain.explainers import BaselineExplainer, BaselineHeadExplainer
from tdb_core.explain.heads import BaselinePairJudge
from tdb_core.explain.pipeline import explain_head, explain_node, score_explanation, score_head
from tdb_core.explain.records import NodeRecords
from tdb_core.explain.simulators import BaselineSimulator


def test_token_detector_baseline_scores_high_and_wrong_explanation_low(
    word_nodes: list[NodeRecords],
) -> None:
    """Node firing on " cat": the baseline names " cat" and scores >= 0.9; naming " dog" scores <= 0.2."""
    node = word_nodes[0]
    result = explain_node(node, BaselineExplainer(), BaselineSimulator(), n_examples_per_split=5)
    rules = parse_token_rules(result.best.explanation)
    assert rules[0].token == " cat" and rules[0].previous is None and rules[0].value == 10.0
    assert result.best.scores.correlation.score is not None
    assert result.best.scores.correlation.score >= 0.9
    assert result.best.scores.detection.balanced_accuracy is not None
    assert result.best.scores.detection.balanced_accuracy >= 0.9

    wrong, _ = score_explanation(
        node, 'the token " dog" (10.0)', BaselineSimulator(), n_examples_per_split=5
    )
    assert wrong.scores.correlation.score is not None
    assert wrong.scores.correlation.score <= 0.2


def test_context_detector_baseline_finds_the_previous_token(word_nodes: list[NodeRecords]) -> None:
    """Node firing on " sat" after " cat" (4.0) and weakly elsewhere (1.0): the rule needs the context."""
    node = word_nodes[1]
    result = explain_node(node, BaselineExplainer(), BaselineSimulator(), n_examples_per_split=5)
    rules = parse_token_rules(result.best.explanation)
    assert rules[0].token == " sat" and rules[0].previous == " cat" and rules[0].value == 10.0
    assert result.best.scores.correlation.score is not None
    assert result.best.scores.correlation.score >= 0.9

    wrong, _ = score_explanation(
        node, 'the token " mat" (10.0)', BaselineSimulator(), n_examples_per_split=5
    )
    assert wrong.scores.correlation.score is not None
    assert wrong.scores.correlation.score <= 0.2


def test_dead_node_is_a_clear_error_not_a_zero_score(word_nodes: list[NodeRecords]) -> None:
    """A node that never fires cannot be explained: FailedPreconditionError naming the node."""
    with pytest.raises(FailedPreconditionError, match=r"planted:0:2.*nothing to explain"):
        explain_node(
            word_nodes[2], BaselineExplainer(), BaselineSimulator(), n_examples_per_split=5
        )


def test_previous_token_head_baseline_and_wrong_explanation(head_nodes: list[NodeRecords]) -> None:
    """Planted previous-token head: baseline rule "1 position earlier" has ROC AUC >= 0.9; "itself" <= 0.6."""
    node = head_nodes[0]
    result = explain_head(
        node, BaselineHeadExplainer(), BaselinePairJudge(), n_examples_per_split=5
    )
    assert result.best_explanation == "attends to the token 1 position earlier from any token"
    assert result.best.roc_auc is not None and result.best.roc_auc >= 0.9

    wrong, _ = score_head(
        node, "attends to itself from any token", BaselinePairJudge(), n_examples_per_split=5
    )
    assert wrong.roc_auc is not None and wrong.roc_auc <= 0.6


def test_token_head_baseline_names_the_attended_token(head_nodes: list[NodeRecords]) -> None:
    """Planted head attending to earlier " dog" tokens: the baseline names " dog" and scores >= 0.9."""
    node = head_nodes[1]
    result = explain_head(
        node, BaselineHeadExplainer(), BaselinePairJudge(), n_examples_per_split=5
    )
    assert result.best_explanation == 'attends to the token " dog" from any token'
    assert result.best.roc_auc is not None and result.best.roc_auc >= 0.9
