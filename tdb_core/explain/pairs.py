"""Selecting (query, key) token pairs from attention-head records, as TDB's head explainer and scorer do.

A head record's activations are flattened over the lower triangle (see ``records.py``). The
explainer shows the strongest pairs; the scorer labels the top pairs 1 and a random sample of
pairs whose activation is below ``low_fraction`` (TDB: 0.1) of the maximum 0.

Pairs whose key is the record's first token are left out of both (``skip_first_key``; by
default whenever the other pairs still hold weak ones to contrast with, see
:func:`first_key_skippable`). Nearly every head parks its attention there when it has nothing to do (the attention
sink: on the toy model the strongest pairs of most heads are all ``(q, 0)``, and ``(0, 0)`` is
always 1.0), so with them in, "attends to the first token" scored a perfect ROC AUC of 1.0 for
heads that do something else entirely, while telling nothing about what the head does. Without
them, that trivial explanation holds on no scored pair and scores 0.5 (chance), and a score
measures how well an explanation picks out where the head attends *when it attends somewhere*.
A head whose other pairs are all alike (none below ``low_fraction`` of their strongest: it spreads
what the sink leaves evenly) has nothing but the sink to be explained by, and keeps those pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.records import ActivationRecord, RecordKind, check_record, flat_index_to_pair


@dataclass(frozen=True)
class TokenPair:
    """One (query, key) pair of one record: the head attends from ``query`` to ``key``."""

    record_index: int
    query: int
    key: int
    activation: float


def all_pairs(
    records: Sequence[ActivationRecord], *, skip_first_key: bool = False
) -> list[TokenPair]:
    """Every pair of every record (without key 0 if ``skip_first_key``), in record order then
    flat order."""
    pairs = []
    for r_index, record in enumerate(records):
        check_record(record, RecordKind.TOKEN_PAIR)
        for flat, value in enumerate(record.activations):
            query, key = flat_index_to_pair(flat)
            if skip_first_key and key == 0:
                continue
            pairs.append(TokenPair(r_index, query, key, float(value)))
    return pairs


def first_key_skippable(records: Sequence[ActivationRecord], low_fraction: float = 0.1) -> bool:
    """Whether the pairs whose key is not the first token include weak ones (below
    ``low_fraction`` of their strongest), so that they can be scored without the sink."""
    pairs = all_pairs(records, skip_first_key=True)
    if not pairs:
        return False
    threshold = low_fraction * max(p.activation for p in pairs)
    return any(p.activation < threshold for p in pairs)


def top_pairs(
    records: Sequence[ActivationRecord], n: int, *, skip_first_key: bool | None = None
) -> list[TokenPair]:
    """The ``n`` strongest pairs over all records (ties keep record, then flat, order); pairs
    whose key is the first token are not candidates if ``skip_first_key`` (None: if
    :func:`first_key_skippable`)."""
    if n < 1:
        raise InvalidArgumentError(f"asked for {n} top pairs; at least 1 is needed")
    if skip_first_key is None:
        skip_first_key = first_key_skippable(records)
    pairs = all_pairs(records, skip_first_key=skip_first_key)
    return sorted(pairs, key=lambda p: -p.activation)[:n]


def low_pairs(
    records: Sequence[ActivationRecord],
    n: int,
    *,
    low_fraction: float = 0.1,
    seed: int = 0,
    skip_first_key: bool | None = None,
) -> list[TokenPair]:
    """Up to ``n`` pairs drawn at random (seeded) among those below ``low_fraction`` of the max
    (both over pairs whose key is not the first token if ``skip_first_key``; None: if
    :func:`first_key_skippable`)."""
    if not 0.0 < low_fraction <= 1.0:
        raise InvalidArgumentError(f"low_fraction is {low_fraction}; it must be in (0, 1]")
    if skip_first_key is None:
        skip_first_key = first_key_skippable(records, low_fraction)
    pairs = all_pairs(records, skip_first_key=skip_first_key)
    if not pairs:
        return []
    threshold = low_fraction * max(p.activation for p in pairs)
    candidates = [p for p in pairs if p.activation < threshold]
    return random.Random(seed).sample(candidates, min(n, len(candidates)))
