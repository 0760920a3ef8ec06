"""Discretization of activations and the text formats the explanation prompts are made of.

Definitions follow OpenAI's ``automated-interpretability``
(``neuron_explainer/activations/activation_records.py``) exactly:

* ``max_activation(records) = max over records of max(relu(a))``.
* ``normalize(a) = min(10, floor(10 * relu(a) / max_activation))``, all 0 when ``max_activation <= 0``.
  Negative activations count as the resting state (clipped to 0); a value above the given maximum
  (possible when the maximum comes from other records) is clipped to 10. Floor, not round: only
  the record's maximum itself maps to 10.
* A record is one ``token<TAB>N`` line per token; records are wrapped as
  ``"\\n<start>\\n" + records joined by "\\n<end>\\n<start>\\n" + "\\n<end>\\n"``; a hidden value
  prints ``unknown``.

Token-pair (attention head) formats follow TDB (``neuron_explainer/explanations/explainer.py``):
the attended-to token is marked ``**tok**``, the attended-from token ``[[tok]]``, a token attending
to itself ``[[**tok**]]``; sequences are separated by ``<|sequence_separator|>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.records import ActivationRecord

MAX_NORMALIZED_ACTIVATION = 10
UNKNOWN_ACTIVATION_STRING = "unknown"
ATTENTION_SEQUENCE_SEPARATOR = "<|sequence_separator|>"


def relu(x: float) -> float:
    """max(0, x); the original treats negative activations as the resting state."""
    return x if x > 0.0 else 0.0


def max_activation(records: Sequence[ActivationRecord]) -> float:
    """Largest relu'd activation over all records (0.0 when nothing is positive)."""
    if not records:
        raise InvalidArgumentError("no activation records were given; at least one is needed")
    return max(max((relu(a) for a in r.activations), default=0.0) for r in records)


def normalize_activations(activations: Sequence[float], max_act: float) -> list[int]:
    """Integers 0..10: ``min(10, floor(10 * relu(a) / max_act))``; all 0 when ``max_act <= 0``."""
    if not all(math.isfinite(a) for a in activations) or not math.isfinite(max_act):
        raise InvalidArgumentError("activations to normalize must be finite (no NaN or inf)")
    if max_act <= 0:
        return [0 for _ in activations]
    return [
        min(MAX_NORMALIZED_ACTIVATION, math.floor(MAX_NORMALIZED_ACTIVATION * relu(a) / max_act))
        for a in activations
    ]


def format_activation_record(
    record: ActivationRecord,
    max_act: float,
    *,
    omit_zeros: bool = False,
    hide_activations: bool = False,
    start_index: int = 0,
) -> str:
    """``token<TAB>N`` lines of one record; values before ``start_index`` (or all) print ``unknown``."""
    if omit_zeros and (hide_activations or start_index != 0):
        raise InvalidArgumentError("omit_zeros cannot be combined with hidden activations")
    tokens: Sequence[str] = record.tokens
    values = normalize_activations(record.activations, max_act)
    if omit_zeros:
        tokens = [t for t, v in zip(tokens, values) if v > 0]
        values = [v for v in values if v > 0]
    lines = []
    for index, (token, value) in enumerate(zip(tokens, values)):
        shown = UNKNOWN_ACTIVATION_STRING if hide_activations or index < start_index else str(value)
        lines.append(f"{token}\t{shown}")
    return "\n".join(lines)


def format_activation_records(
    records: Sequence[ActivationRecord],
    max_act: float,
    *,
    omit_zeros: bool = False,
    start_indices: Sequence[int] | None = None,
    hide_activations: bool = False,
) -> str:
    """Records wrapped in ``<start>``/``<end>`` exactly as the original prompts show them."""
    if start_indices is not None and len(start_indices) != len(records):
        raise InvalidArgumentError(
            f"{len(start_indices)} start indices for {len(records)} records; give one per record"
        )
    bodies = [
        format_activation_record(
            r,
            max_act,
            omit_zeros=omit_zeros,
            hide_activations=hide_activations,
            start_index=0 if start_indices is None else start_indices[i],
        )
        for i, r in enumerate(records)
    ]
    return "\n<start>\n" + "\n<end>\n<start>\n".join(bodies) + "\n<end>\n"


def format_sequences_for_simulation(all_tokens: Sequence[Sequence[str]]) -> str:
    """Token sequences with every value ``unknown``, in the same ``<start>``/``<end>`` wrapping."""
    bodies = [
        "\n".join(f"{t}\t{UNKNOWN_ACTIVATION_STRING}" for t in tokens) for tokens in all_tokens
    ]
    return "\n<start>\n" + "\n<end>\n<start>\n".join(bodies) + "\n<end>\n"


def non_zero_activation_proportion(records: Sequence[ActivationRecord], max_act: float) -> float:
    """Fraction of tokens whose normalized activation is not 0."""
    total = sum(len(r.activations) for r in records)
    if total == 0:
        raise InvalidArgumentError("the records contain no activations")
    nonzero = sum(
        sum(1 for v in normalize_activations(r.activations, max_act) if v) for r in records
    )
    return nonzero / total


def format_token_pair(tokens: Sequence[str], pair: tuple[int, int]) -> str:
    """The sequence with the pair marked: ``[[from]]`` (query), ``**to**`` (key), ``[[**self**]]``."""
    query, key = pair

    def mark(i: int, token: str) -> str:
        if i == query and i == key:
            return f"[[**{token}**]]"
        if i == query:
            return f"[[{token}]]"
        if i == key:
            return f"**{token}**"
        return token

    return "".join(mark(i, t) for i, t in enumerate(tokens))


def format_token_pair_examples(
    examples: Sequence[tuple[Sequence[str], Sequence[tuple[int, int]]]],
) -> str:
    """Every (tokens, pairs) example's pairs as marked sequences, separated as TDB separates them."""
    separator = f"\n{ATTENTION_SEQUENCE_SEPARATOR}\n"
    return separator.join(
        separator.join(format_token_pair(tokens, pair) for pair in pairs)
        for tokens, pairs in examples
    )
