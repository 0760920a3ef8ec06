"""Selecting (query, key) token pairs from attention-head records, as TDB's head explainer and scorer do.

A head record's activations are flattened over the lower triangle (see ``records.py``). The
explainer shows the strongest pairs; the scorer labels the top pairs 1 and a random sample of
pairs whose activation is below ``low_fraction`` (TDB: 0.1) of the maximum 0.
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


def all_pairs(records: Sequence[ActivationRecord]) -> list[TokenPair]:
    """Every pair of every record, in record order then flat order."""
    pairs = []
    for r_index, record in enumerate(records):
        check_record(record, RecordKind.TOKEN_PAIR)
        for flat, value in enumerate(record.activations):
            query, key = flat_index_to_pair(flat)
            pairs.append(TokenPair(r_index, query, key, float(value)))
    return pairs


def top_pairs(records: Sequence[ActivationRecord], n: int) -> list[TokenPair]:
    """The ``n`` strongest pairs over all records (ties keep record, then flat, order)."""
    if n < 1:
        raise InvalidArgumentError(f"asked for {n} top pairs; at least 1 is needed")
    return sorted(all_pairs(records), key=lambda p: -p.activation)[:n]


def low_pairs(
    records: Sequence[ActivationRecord], n: int, *, low_fraction: float = 0.1, seed: int = 0
) -> list[TokenPair]:
    """Up to ``n`` pairs drawn at random (seeded) among those below ``low_fraction`` of the max."""
    if not 0.0 < low_fraction <= 1.0:
        raise InvalidArgumentError(f"low_fraction is {low_fraction}; it must be in (0, 1]")
    pairs = all_pairs(records)
    if not pairs:
        return []
    threshold = low_fraction * max(p.activation for p in pairs)
    candidates = [p for p in pairs if p.activation < threshold]
    return random.Random(seed).sample(candidates, min(n, len(candidates)))
