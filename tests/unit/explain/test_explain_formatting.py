"""Discretization, record formats and prompts match the original method's definitions (worked examples)."""

from __future__ import annotations

import pytest

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.few_shot import NEURON_FEW_SHOT_EXAMPLES, TokenPairExample
from tdb_core.explain.formatting import (
    format_activation_records,
    format_sequences_for_simulation,
    format_token_pair,
    format_token_pair_examples,
    max_activation,
    non_zero_activation_proportion,
    normalize_activations,
)
from tdb_core.explain.prompts import (
    EXPLAINER_SYSTEM_MESSAGE,
    SIMULATOR_SYSTEM_MESSAGE,
    Role,
    build_explanation_prompt,
    build_head_explanation_prompt,
    build_head_judge_prompt,
    build_logprob_free_prompt,
    build_simulation_prompt,
    parse_explanation_completion,
    parse_logprob_free_completion,
    render_text,
    slot_offsets,
    slotted_text,
)
from tdb_core.explain.records import ActivationRecord


def rec(tokens: list[str], acts: list[float]) -> ActivationRecord:
    return ActivationRecord(tokens=tuple(tokens), activations=tuple(acts))


def test_normalize_is_floor_of_ten_times_relu_over_max_clipped_to_ten() -> None:
    """min(10, floor(10 * relu(a) / max)): negatives -> 0, 0.49/5 -> 0, 4.99/5 -> 9, above max -> 10."""
    acts = [-1.0, 0.0, 0.49, 0.5, 2.5, 4.99, 5.0, 6.0]
    assert normalize_activations(acts, 5.0) == [0, 0, 0, 1, 5, 9, 10, 10]


def test_normalize_with_nonpositive_max_is_all_zero() -> None:
    """A node with no positive activation discretizes to all zeros (no division by zero)."""
    assert normalize_activations([-3.0, -1.0, 0.0], 0.0) == [0, 0, 0]
    assert normalize_activations([-3.0], -2.0) == [0]


def test_normalize_rejects_nan() -> None:
    """NaN activations are a clear error, not a silent 0."""
    with pytest.raises(InvalidArgumentError, match="finite"):
        normalize_activations([float("nan")], 1.0)


def test_max_activation_is_max_relu_over_records() -> None:
    """max over records of max(relu(a)); all-negative records give 0."""
    assert max_activation([rec(["a"], [-2.0]), rec(["b", "c"], [1.5, 0.5])]) == 1.5
    assert max_activation([rec(["a"], [-2.0])]) == 0.0


def test_format_activation_records_worked_example() -> None:
    """Records are token<TAB>value lines wrapped in <start>/<end> exactly as the original."""
    records = [rec(["a", " b"], [0.0, 2.0]), rec([" c"], [1.0])]
    assert (
        format_activation_records(records, 2.0)
        == "\n<start>\na\t0\n b\t10\n<end>\n<start>\n c\t5\n<end>\n"
    )
    assert (
        format_activation_records(records, 2.0, start_indices=[1, 0])
        == "\n<start>\na\tunknown\n b\t10\n<end>\n<start>\n c\t5\n<end>\n"
    )
    assert (
        format_activation_records(records, 2.0, omit_zeros=True)
        == "\n<start>\n b\t10\n<end>\n<start>\n c\t5\n<end>\n"
    )
    assert (
        format_activation_records(records, 2.0, hide_activations=True)
        == "\n<start>\na\tunknown\n b\tunknown\n<end>\n<start>\n c\tunknown\n<end>\n"
    )
    assert (
        format_sequences_for_simulation([["a", " b"]])
        == "\n<start>\na\tunknown\n b\tunknown\n<end>\n"
    )


def test_non_zero_proportion_counts_discretized_values() -> None:
    """The proportion uses discretized values: 0.05 of max floors to 0 and does not count."""
    assert (
        non_zero_activation_proportion([rec(["a", "b", "c", "d"], [0.0, 0.05, 1.0, 0.5])], 1.0)
        == 0.5
    )


def test_explanation_prompt_structure_and_target_message() -> None:
    """System, few-shot user/assistant pairs (answers " {explanation}."), then the target ending in the prefix."""
    messages = build_explanation_prompt([rec(["The", " cat", " sat"], [0.0, 4.0, 1.0])])
    n_shots = len(NEURON_FEW_SHOT_EXAMPLES)
    assert [m.role for m in messages] == [Role.SYSTEM] + [Role.USER, Role.ASSISTANT] * n_shots + [
        Role.USER
    ]
    assert messages[0].content == EXPLAINER_SYSTEM_MESSAGE
    assert messages[2].content == f" {NEURON_FEW_SHOT_EXAMPLES[0].explanation}."
    assert messages[-1].content == (
        f"\n\nNeuron {n_shots + 1}\nActivations:\n<start>\nThe\t0\n cat\t10\n sat\t2\n<end>\n"
        f"\nExplanation of neuron {n_shots + 1} behavior: the main thing this neuron does is find"
    )


def test_explanation_prompt_repeats_non_zero_values_when_sparse() -> None:
    """Under 20 % non-zero values, the original adds the same records with zeros filtered out."""
    tokens = [f" w{i}" for i in range(10)]
    acts = [0.0] * 10
    acts[3] = 2.0
    last = build_explanation_prompt([rec(tokens, acts)])[-1].content
    assert (
        "\nSame activations, but with all zeros filtered out:\n<start>\n w3\t10\n<end>\n\nExplanation of neuron"
        in last
    )
    dense = build_explanation_prompt([rec(tokens, [1.0] * 10)])[-1].content
    assert "Same activations" not in dense


def test_simulation_prompt_is_the_original_text_with_slots_at_each_unknown() -> None:
    """The slotted text equals the original's concatenated prompt; every slot points at "\\tunknown"."""
    tokens = ["The", " cat", "\n", " sat"]
    prompt = build_simulation_prompt(" cats ", tokens)
    text = slotted_text(prompt)
    expected = SIMULATOR_SYSTEM_MESSAGE
    for i, example in enumerate(NEURON_FEW_SHOT_EXAMPLES):
        records = example.activation_records
        expected += (
            f"\n\nNeuron {i + 1}\nExplanation of neuron {i + 1} behavior: the main thing this neuron does is find "
            f"{example.explanation}"
        )
        formatted = format_activation_records(
            records,
            max_activation(records),
            start_indices=example.first_revealed_activation_indices,
        )
        expected += f"\nActivations: {formatted}\n"
    n = len(NEURON_FEW_SHOT_EXAMPLES) + 1
    expected += f"\n\nNeuron {n}\nExplanation of neuron {n} behavior: the main thing this neuron does is find cats"
    expected += "\nActivations: " + format_sequences_for_simulation([tokens])
    assert text == expected
    offsets = slot_offsets(prompt)
    assert len(offsets) == len(tokens)
    assert all(text[o - 1 : o + 7] == "\tunknown" for o in offsets)
    assert offsets[-1] > text.rfind("<start>")


def test_parse_explanation_completion() -> None:
    """First non-empty line, a repeated prefix and the final period removed; empty -> None."""
    assert parse_explanation_completion(" cats and dogs.\nmore text") == "cats and dogs"
    assert (
        parse_explanation_completion("\n\n  The main thing this neuron does is find years. ")
        == "years"
    )
    assert parse_explanation_completion(" \n .\n") is None


def test_logprob_free_prompt_and_parse_round_trip() -> None:
    """Tokens are listed with a blank value and the delimiter; a faithful answer parses back exactly."""
    tokens = ["A", " cat", "\n", " sat"]
    messages = build_logprob_free_prompt("cats", tokens)
    assert messages[-1].role is Role.USER
    assert messages[-1].content.endswith(
        "Sequence 1 Tokens without Activations:\nA\t༗\n cat\t༗\n\\n\t༗\n sat\t༗\n\n\nSequence 1 Tokens with Activations:\n"
    )
    parsed = parse_logprob_free_completion("A\t0༗\n cat\t10༗\n\\n\t0༗\n sat\t3.5༗\n", tokens)
    assert (
        parsed.values == (0.0, 10.0, 0.0, 3.5) and parsed.error is None and parsed.n_defaulted == 0
    )


def test_logprob_free_parse_edge_cases() -> None:
    """Dropped leading space and missing delimiter are accepted; bad values default to 0 and are counted;
    a sequence that is not reproduced is an error (values None), never zeros."""
    tokens = [" cat", " sat"]
    assert parse_logprob_free_completion("cat\t7\nsat\t1\n", tokens).values == (7.0, 1.0)
    parsed = parse_logprob_free_completion(" cat\tlots༗\n sat\t11༗\n", tokens)
    assert parsed.values == (0.0, 0.0) and parsed.n_defaulted == 2
    missing = parse_logprob_free_completion(" cat\t1༗\n", tokens)
    assert missing.values is None and "1 token lines for 2 tokens" in (missing.error or "")
    absent = parse_logprob_free_completion("no idea", tokens)
    assert absent.values is None and "first token" in (absent.error or "")


def test_token_pair_marks() -> None:
    """[[from]] marks the query, **to** the key, [[**x**]] a self pair; sequences join with the separator."""
    assert format_token_pair(["a", "b", "c"], (2, 0)) == "**a**b[[c]]"
    assert format_token_pair(["a", "b", "c"], (1, 1)) == "a[[**b**]]c"
    joined = format_token_pair_examples([(("a", "b"), ((1, 0), (1, 1)))])
    assert joined == "**a**[[b]]\n<|sequence_separator|>\na[[**b**]]"


def test_head_prompts_worked_example() -> None:
    """The head explainer ends with "this attention head"; the judge shows the marked pair and asks for 0/1."""
    explain = build_head_explanation_prompt([TokenPairExample(tokens=("x", " y"), pairs=((1, 0),))])
    assert (
        explain[-1].content
        == "\n\nAttention head 3\nActivations:\n**x**[[ y]]\nExplanation of attention head 3 behavior: this attention head"
    )
    judge = build_head_judge_prompt("attends to x", ["x", " y"], (1, 0))
    assert [m.role for m in judge][-3:] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert judge[-1].content == (
        "\n\nExample 5\nExplanation: this attention head attends to x\nSequence:\n**x**[[ y]]"
        "\nPrediction of whether attention head 5 activates on the token pair: "
    )
    with pytest.raises(InvalidArgumentError, match="not a pair"):
        build_head_judge_prompt("x", ["a"], (0, 1))


def test_render_text_concatenates_contents() -> None:
    """Completion-style rendering is the concatenation of the message contents (PromptFormat.NONE)."""
    messages = build_explanation_prompt([rec(["a"], [1.0])])
    assert render_text(messages) == "".join(m.content for m in messages)
