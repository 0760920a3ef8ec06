"""The token-statistics baseline: rule fitting, the parseable explanation format, and its predictor."""

from __future__ import annotations

import pytest

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.baseline import (
    NOTHING,
    HeadRule,
    HeadTarget,
    TokenRule,
    fit_head_rule,
    fit_token_rules,
    format_head_rule,
    format_token_rules,
    head_rule_holds,
    parse_head_rule,
    parse_token_rules,
    predict_token_rules,
)
from tdb_core.explain.records import ActivationRecord
from tdb_core.explain.simulators import BaselineSimulator


def rec(tokens: list[str], acts: list[float]) -> ActivationRecord:
    return ActivationRecord(tokens=tuple(tokens), activations=tuple(acts))


def test_token_rules_format_and_parse_round_trip_with_awkward_tokens() -> None:
    """Quotes, backslashes, newlines, separators and non-ASCII survive formatting and parsing."""
    rules = (
        TokenRule(' "q"', None, 10.0),
        TokenRule("a; b", "\n", 7.5),
        TokenRule("\\", "é", 1.0),
    )
    text = format_token_rules(rules)
    assert (
        text
        == 'the token " \\"q\\"" (10.0); the token "a; b" after "\\n" (7.5); the token "\\\\" after "é" (1.0)'
    )
    assert parse_token_rules(text) == rules
    assert parse_token_rules(text + ".") == rules
    assert format_token_rules(()) == NOTHING and parse_token_rules(NOTHING) == ()


def test_free_text_is_rejected_by_the_baseline_parser_and_simulator() -> None:
    """An LLM-style explanation is an InvalidArgumentError pointing to LLM simulators, not a zero prediction."""
    with pytest.raises(InvalidArgumentError, match="baseline format"):
        parse_token_rules("words about cats")
    with pytest.raises(InvalidArgumentError, match="separated by"):
        parse_token_rules('the token "a" (1.0), the token "b" (2.0)')
    with pytest.raises(InvalidArgumentError, match="LLM simulator"):
        BaselineSimulator().simulate("cats", ["a"])


def test_prediction_prefers_the_context_rule() -> None:
    """(previous, token) rules beat token rules; unmatched tokens predict 0; the first token has no context."""
    rules = (
        TokenRule(" sat", " cat", 10.0),
        TokenRule(" sat", None, 2.5),
        TokenRule(" mat", None, 4.0),
    )
    assert predict_token_rules(rules, [" sat", " cat", " sat", " dog", " sat", " mat"]) == [
        2.5,
        0.0,
        10.0,
        0.0,
        2.5,
        4.0,
    ]


def test_fit_picks_tokens_by_activation_mass_and_uses_random_records_for_contrast() -> None:
    """Values are means of normalized activations; " b" after " a" is split off only when it differs."""
    top = [rec([" a", " b", " c"], [0.0, 8.0, 0.0]), rec([" x", " a", " b"], [0.0, 0.0, 8.0])]
    # Without contrast, " b" always follows " a": one plain token rule.
    assert fit_token_rules(top) == (TokenRule(" b", None, 10.0),)
    # Random records show " b" elsewhere at 2.0 (normalized 2.5): the context now matters.
    contrast = [rec([" c", " b"], [0.0, 2.0]), rec([" x", " b"], [0.0, 2.0])]
    assert fit_token_rules(top, contrast) == (
        TokenRule(" b", " a", 10.0),
        TokenRule(" b", None, 2.5),
    )


def test_fit_keeps_at_most_max_rules_and_ignores_weak_tokens() -> None:
    """Rules below min_value are dropped; only the max_rules carrying the most mass are kept."""
    top = [rec([" p", " q", " r", " s"], [10.0, 6.0, 3.0, 0.05])]
    assert fit_token_rules(top, max_rules=2) == (
        TokenRule(" p", None, 10.0),
        TokenRule(" q", None, 6.0),
    )
    assert fit_token_rules([rec([" a"], [-1.0])]) == ()


def test_head_rules_format_and_parse_round_trip() -> None:
    """Every head target, with and without a from-token, reads back to the same rule."""
    rules = [
        HeadRule(HeadTarget.SELF),
        HeadRule(HeadTarget.OFFSET, offset=1),
        HeadRule(HeadTarget.OFFSET, offset=3, from_token=" from"),
        HeadRule(HeadTarget.FIRST),
        HeadRule(HeadTarget.TOKEN, to_token='" from "', from_token=" x"),
        HeadRule(HeadTarget.COPY),
        HeadRule(HeadTarget.INDUCTION),
        HeadRule(HeadTarget.ANY, from_token=" y"),
    ]
    for rule in rules:
        assert parse_head_rule(format_head_rule(rule)) == rule
    assert format_head_rule(rules[1]) == "attends to the token 1 position earlier from any token"
    with pytest.raises(InvalidArgumentError, match="baseline head format"):
        parse_head_rule("attends to nouns from verbs")


def test_head_rule_semantics() -> None:
    """Each target's predicate on a small sequence (query, key)."""
    tokens = ["A", "B", "C", "A", "B"]
    assert head_rule_holds(HeadRule(HeadTarget.OFFSET, offset=1), tokens, 4, 3)
    assert head_rule_holds(HeadRule(HeadTarget.COPY), tokens, 3, 0)
    assert not head_rule_holds(HeadRule(HeadTarget.COPY), tokens, 3, 3)
    assert head_rule_holds(HeadRule(HeadTarget.INDUCTION), tokens, 3, 1)  # B follows the earlier A
    assert head_rule_holds(HeadRule(HeadTarget.TOKEN, to_token="C", from_token="B"), tokens, 4, 2)
    assert not head_rule_holds(
        HeadRule(HeadTarget.TOKEN, to_token="C", from_token="A"), tokens, 4, 2
    )


def test_fit_head_rule_needs_weak_pairs_to_contrast() -> None:
    """A head that attends equally everywhere has no weak pairs: a clear FailedPreconditionError."""
    uniform = rec(["a", "b"], [1.0, 1.0, 1.0])
    with pytest.raises(FailedPreconditionError, match="nothing to contrast"):
        fit_head_rule([uniform])
