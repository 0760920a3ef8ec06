"""Head scoring leaves out pairs whose key is the first token (the attention sink).

A "sink head" parks most of its attention on the first token and puts the rest on the previous
token, as most heads of the toy model do. Scored over every pair, the trivial explanation
"attends to the first token" separated the strongest pairs (all (q, 0)) from weak ones perfectly
(ROC AUC 1.0). Without first-token keys it holds on no scored pair and scores 0.5 (chance), the
head's real behaviour scores 1.0, and the baseline explainer names that behaviour.
"""

from __future__ import annotations

import random

from tdb_core.explain.explainers import BaselineHeadExplainer
from tdb_core.explain.heads import BaselinePairJudge, score_head_explanation
from tdb_core.explain.records import ActivationRecord

WORDS = ["the", " cat", " sat", " on", " mat", " dog", " ran", " far", " and", " home"]
FIRST = "attends to the first token from any token"
PREVIOUS = "attends to the token 1 position earlier from any token"


def sink_head_records(n: int = 12, length: int = 10, seed: int = 0) -> list[ActivationRecord]:
    """Attention rows: 0.7 on key 0, 0.25 on the previous token, the rest spread thin."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        tokens = tuple(rng.choice(WORDS) for _ in range(length))
        acts: list[float] = []
        for q in range(length):
            row = [0.0] * (q + 1)
            if q == 0:
                row[0] = 1.0
            else:
                rest = 0.05 / max(q - 1, 1)
                row = [0.7] + [rest] * (q - 1) + [0.0]
                row[q - 1] += 0.25
                if q == 1:
                    row = [0.75, 0.25]
            acts.extend(row)  # row q of the lower triangle: keys 0..q
        records.append(ActivationRecord(tokens, tuple(acts)))
    return records


def test_first_token_explanation_scores_chance_not_one() -> None:
    """ "attends to the first token" scores 0.5 on a sink head (it scored 1.0 when first-token
    pairs were scored); the previous-token rule, the head's real job, scores 1.0."""
    records = sink_head_records()
    judge = BaselinePairJudge()
    first = score_head_explanation(FIRST, records, judge)
    previous = score_head_explanation(PREVIOUS, records, judge)
    assert first.roc_auc == 0.5
    assert previous.roc_auc == 1.0
    assert all(s.pair.key != 0 for s in first.pairs)


def test_baseline_explainer_names_what_the_head_does_besides_the_sink() -> None:
    """The baseline explainer no longer answers "the first token" for a sink head."""
    records = sink_head_records()
    (explanation,) = BaselineHeadExplainer().explain(records[:8], contrast=records[8:])
    assert explanation == PREVIOUS


def uniform_sink_records(n: int = 8, length: int = 10) -> list[ActivationRecord]:
    """Attention rows: half on key 0, the other half spread evenly over the other keys."""
    records = []
    for r in range(n):
        tokens = tuple(WORDS[(r + i) % len(WORDS)] for i in range(length))
        acts: list[float] = [1.0]
        for q in range(1, length):
            acts.extend([0.5] + [0.5 / q] * q)
        records.append(ActivationRecord(tokens, tuple(acts)))
    return records


def test_head_with_nothing_but_the_sink_keeps_first_token_pairs() -> None:
    """When the other pairs are all alike (none below 0.1 of their strongest), there is nothing to
    contrast without the sink: its pairs are scored, and "the first token" is what the head does."""
    records = uniform_sink_records()
    assert score_head_explanation(FIRST, records, BaselinePairJudge()).roc_auc == 1.0
    (explanation,) = BaselineHeadExplainer().explain(records[:6], contrast=records[6:])
    assert explanation == FIRST
