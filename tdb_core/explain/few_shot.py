"""Few-shot examples for the explanation, simulation and head-judging prompts.

The examples are our own writing; their structure is the original's (``few_shot_examples.py`` in
OpenAI's ``automated-interpretability`` and TDB): each neuron example has a few activation records,
an explanation that continues "the main thing this neuron does is find", and, for the all-at-once
simulation prompt, the index from which each record's values are revealed (earlier values print
``unknown``). Head examples list marked (query, key) pairs and labelled pairs for the judge prompt.
Activations are raw values; the prompts discretize them per example, as the original does.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdb_core.explain.records import ActivationRecord


@dataclass(frozen=True)
class NeuronFewShotExample:
    """One worked neuron: records, its explanation, and where the simulation prompt reveals values."""

    activation_records: tuple[ActivationRecord, ...]
    explanation: str
    first_revealed_activation_indices: tuple[int, ...]


@dataclass(frozen=True)
class TokenPairExample:
    """A token sequence and (query, key) pairs in it that a head attends strongly for."""

    tokens: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PairJudgement:
    """A labelled pair for the judge prompt: 1 if the head activates on it, else 0."""

    example_index: int
    pair: tuple[int, int]
    label: int


@dataclass(frozen=True)
class HeadFewShotExample:
    """One worked attention head: strongly attending pairs, its explanation, labelled pairs."""

    token_pair_examples: tuple[TokenPairExample, ...]
    explanation: str
    judgements: tuple[PairJudgement, ...]


def _record(tokens: list[str], activations: list[float]) -> ActivationRecord:
    return ActivationRecord(tokens=tuple(tokens), activations=tuple(activations))


NEURON_FEW_SHOT_EXAMPLES: tuple[NeuronFewShotExample, ...] = (
    NeuronFewShotExample(
        activation_records=(
            _record(
                [
                    "The",
                    " forecast",
                    " calls",
                    " for",
                    " heavy",
                    " rain",
                    " and",
                    " thunder",
                    " tonight",
                    ".",
                ],
                [0.0, 0.1, 0.0, 0.0, 1.2, 6.8, 0.0, 3.9, 0.4, 0.0],
            ),
            _record(
                [
                    "Don",
                    "'t",
                    " forget",
                    " your",
                    " umbrella",
                    ";",
                    " it",
                    "'s",
                    " drizz",
                    "ling",
                    ".",
                ],
                [0.0, 0.0, 0.0, 0.0, 4.1, 0.0, 0.0, 0.0, 5.5, 2.0, 0.0],
            ),
        ),
        explanation="words about wet weather, most strongly the falling of rain",
        first_revealed_activation_indices=(4, 3),
    ),
    NeuronFewShotExample(
        activation_records=(
            _record(
                ["Call", " us", " (", "toll", "-", "free", ")", " at", " any", " time", "."],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 8.2, 0.0, 0.0, 0.0, 0.0],
            ),
            _record(
                ["The", " value", " is", " f", "(", "x", ")", " =", " [", "1", ",", " 2", "]"],
                [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.1, 0.0, 0.0, 0.0, 0.0, 0.0, 6.3],
            ),
        ),
        explanation="closing brackets that end a parenthetical or a list",
        first_revealed_activation_indices=(2, 5),
    ),
    NeuronFewShotExample(
        activation_records=(
            _record(
                [
                    "She",
                    " was",
                    " born",
                    " in",
                    " 18",
                    "62",
                    " and",
                    " died",
                    " in",
                    " 19",
                    "31",
                    ".",
                ],
                [0.0, 0.0, 0.0, 0.3, 2.5, 9.0, 0.0, 0.0, 0.2, 2.2, 8.7, 0.0],
            ),
            _record(
                ["The", " 1999", " season", " ended", " with", " 12", " wins", "."],
                [0.0, 7.5, 0.6, 0.0, 0.0, 0.9, 0.0, 0.0],
            ),
        ),
        explanation="numbers that name a year, peaking on the last digits",
        first_revealed_activation_indices=(5, 1),
    ),
)


HEAD_FEW_SHOT_EXAMPLES: tuple[HeadFewShotExample, ...] = (
    HeadFewShotExample(
        token_pair_examples=(
            TokenPairExample(
                tokens=("The", " quick", " brown", " fox", " jumps", " over"),
                pairs=((2, 1), (4, 3)),
            ),
            TokenPairExample(tokens=("I", " like", " green", " tea"), pairs=((3, 2),)),
        ),
        explanation="attends to the immediately preceding token from every token",
        judgements=(
            PairJudgement(example_index=0, pair=(5, 4), label=1),
            PairJudgement(example_index=0, pair=(5, 1), label=0),
        ),
    ),
    HeadFewShotExample(
        token_pair_examples=(
            TokenPairExample(
                tokens=("He", " said", ' "', "we", " will", " win", '"', "."),
                pairs=((4, 2), (5, 2)),
            ),
            TokenPairExample(
                tokens=("The", " sign", " read", ' "', "closed", " today", '"'),
                pairs=((5, 3),),
            ),
        ),
        explanation="attends to an opening quotation mark from the tokens inside the quotation",
        judgements=(
            PairJudgement(example_index=0, pair=(5, 2), label=1),
            PairJudgement(example_index=0, pair=(5, 4), label=0),
        ),
    ),
)
