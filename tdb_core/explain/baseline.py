"""The token-statistics baseline: explanations and predictions without any language model.

Neurons and latents: a list of *token rules*. A rule says "the token T (optionally: right after
the token P) gets the value V" on the 0..10 scale. Rules are fitted from records (top-activating,
plus random records for contrast) on normalized activations ``min(10, 10 * relu(a) / max)``:

1. For every token type, its occurrences' values; for each previous-token context seen at least
   ``min_context_count`` times, the values in that context.
2. Contexts are split off greedily while splitting one more off removes at least
   ``context_gain`` of the token's squared error around its mean (so "B after A" wins over "B" when
   the previous token decides whether the node fires); at most ``max_contexts`` per token.
3. Every group whose mean value is >= ``min_value`` becomes a rule with that mean; the
   ``max_rules`` rules carrying the most activation mass (sum of values) are kept.

The explanation text continues "the main thing this neuron does is find" and is parseable::

    the token " sat" after " cat" (10.0); the token " sat" (2.5)

(token strings are JSON string literals; "nothing in particular" means no rule). The predictor
gives each position the value of the rule for (previous, token), else for the token, else 0.

Attention heads: a *head rule* "attends to <TO> from <FROM>", where TO is one of: itself, the
token d positions earlier, the first token, a given token, earlier copies of the current token,
the token after an earlier copy of the current token (induction), any token; and FROM is any
token or a given token. The rule whose truth value best separates strong pairs from weak ones
(ROC AUC on the records given) is chosen; ties go to the simpler rule.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.formatting import MAX_NORMALIZED_ACTIVATION, max_activation, relu
from tdb_core.explain.pairs import first_key_skippable, low_pairs, top_pairs
from tdb_core.explain.records import ActivationRecord
from tdb_core.explain.scoring import roc_auc

NOTHING = "nothing in particular"
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_TOKEN_RULE = re.compile(
    rf"the token ({_JSON_STRING})(?: after ({_JSON_STRING}))? \((\d+(?:\.\d+)?)\)"
)


@dataclass(frozen=True)
class TokenRule:
    """``token`` (right after ``previous``, when given) gets ``value`` on the 0..10 scale."""

    token: str
    previous: str | None
    value: float


@dataclass(frozen=True)
class _Candidate:
    rule: TokenRule
    mass: float


def _sse(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values)


def _partition_sse(
    observations: Sequence[tuple[str | None, float]],
    by_previous: dict[str, list[float]],
    contexts: list[str],
) -> float:
    """Squared error when each chosen context and the rest are predicted by their own mean."""
    rest = [v for p, v in observations if p not in contexts]
    return sum(_sse(by_previous[p]) for p in contexts) + _sse(rest)


def fit_token_rules(
    top_records: Sequence[ActivationRecord],
    contrast_records: Sequence[ActivationRecord] = (),
    *,
    max_rules: int = 5,
    min_value: float = 1.0,
    min_context_count: int = 2,
    context_gain: float = 0.25,
    max_contexts: int = 3,
) -> tuple[TokenRule, ...]:
    """Fit token rules (see the module docstring); empty when the node never fires in ``top_records``."""
    if max_rules < 1:
        raise InvalidArgumentError(f"max_rules is {max_rules}; it must be >= 1")
    peak = max_activation(top_records)
    if peak <= 0:
        return ()
    by_token: dict[str, list[tuple[str | None, float]]] = defaultdict(list)
    for record in list(top_records) + list(contrast_records):
        for t, (token, a) in enumerate(zip(record.tokens, record.activations)):
            value = min(
                float(MAX_NORMALIZED_ACTIVATION), MAX_NORMALIZED_ACTIVATION * relu(a) / peak
            )
            by_token[token].append((record.tokens[t - 1] if t > 0 else None, value))

    candidates: list[_Candidate] = []
    for token, observations in by_token.items():
        all_values = [v for _, v in observations]
        total_sse = _sse(all_values)
        by_previous: dict[str, list[float]] = defaultdict(list)
        for previous, v in observations:
            if previous is not None:
                by_previous[previous].append(v)
        eligible = sorted(p for p, vs in by_previous.items() if len(vs) >= min_context_count)
        chosen: list[str] = []
        current = total_sse
        while total_sse > 0 and len(chosen) < max_contexts:
            options = [
                (_partition_sse(observations, by_previous, [*chosen, p]), p)
                for p in eligible
                if p not in chosen
            ]
            if not options:
                break
            best_sse, best = min(options)
            if current - best_sse < context_gain * total_sse:
                break
            chosen.append(best)
            current = best_sse
        groups: list[tuple[str | None, list[float]]] = [(p, by_previous[p]) for p in chosen]
        groups.append((None, [v for p, v in observations if p not in chosen]))
        for previous, values in groups:
            if values and sum(values) / len(values) >= min_value:
                mean = round(sum(values) / len(values), 1)
                candidates.append(_Candidate(TokenRule(token, previous, mean), sum(values)))
    kept = sorted(candidates, key=lambda c: (-c.mass, c.rule.token, c.rule.previous or ""))[
        :max_rules
    ]
    return tuple(
        sorted((c.rule for c in kept), key=lambda r: (-r.value, r.token, r.previous or ""))
    )


def format_token_rules(rules: Sequence[TokenRule]) -> str:
    """The parseable explanation text of a rule list."""
    if not rules:
        return NOTHING

    def item(rule: TokenRule) -> str:
        context = (
            ""
            if rule.previous is None
            else f" after {json.dumps(rule.previous, ensure_ascii=False)}"
        )
        return f"the token {json.dumps(rule.token, ensure_ascii=False)}{context} ({rule.value:.1f})"

    return "; ".join(item(r) for r in rules)


def parse_token_rules(text: str) -> tuple[TokenRule, ...]:
    """Read rules back from :func:`format_token_rules` output (a final period is allowed)."""
    body = text.strip()
    if body.endswith("."):
        body = body[:-1].rstrip()
    if body == NOTHING:
        return ()
    rules, position = [], 0
    while True:
        match = _TOKEN_RULE.match(body, position)
        if match is None:
            raise InvalidArgumentError(
                f"the explanation {text!r} is not in the baseline format at character {position}; the "
                f'baseline simulator reads only \'the token " x" (7.0); the token " y" after " z" (10.0)\' '
                f"or {NOTHING!r}; use an LLM simulator for free-text explanations"
            )
        try:
            token = json.loads(match.group(1))
            previous = None if match.group(2) is None else json.loads(match.group(2))
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(
                f"a token string in the explanation is not valid JSON: {exc}"
            ) from None
        value = float(match.group(3))
        if value > MAX_NORMALIZED_ACTIVATION:
            raise InvalidArgumentError(
                f"rule value {value} in the explanation is above the 0..10 scale"
            )
        rules.append(TokenRule(token, previous, value))
        position = match.end()
        if position == len(body):
            return tuple(rules)
        if not body.startswith("; ", position):
            raise InvalidArgumentError(
                f"the explanation {text!r} has {body[position : position + 10]!r} after a rule; rules are "
                "separated by '; '"
            )
        position += 2


def predict_token_rules(rules: Sequence[TokenRule], tokens: Sequence[str]) -> list[float]:
    """Each position's value: the (previous, token) rule, else the token rule, else 0."""
    in_context = {(r.previous, r.token): r.value for r in rules if r.previous is not None}
    anywhere = {r.token: r.value for r in rules if r.previous is None}
    predictions = []
    for t, token in enumerate(tokens):
        previous = tokens[t - 1] if t > 0 else None
        if previous is not None and (previous, token) in in_context:
            predictions.append(in_context[(previous, token)])
        else:
            predictions.append(anywhere.get(token, 0.0))
    return predictions


# ------------------------------------------------------------------------------------------------
# Attention heads


class HeadTarget(str, Enum):
    """Which earlier token a head rule says the head attends to."""

    SELF = "itself"
    OFFSET = "offset"
    FIRST = "the first token"
    TOKEN = "token"
    COPY = "earlier copies of the current token"
    INDUCTION = "the token after an earlier copy of the current token"
    ANY = "any token"


@dataclass(frozen=True)
class HeadRule:
    """A head rule: "attends to <target> from <from_token, or any token>".

    ``offset`` (OFFSET) and ``to_token`` (TOKEN) parameterize the target.
    """

    target: HeadTarget
    offset: int | None = None
    to_token: str | None = None
    from_token: str | None = None


_HEAD_RULE = re.compile(
    rf"attends to (?P<to>itself|the first token|the token (?P<offset>\d+) positions? earlier"
    rf"|the token (?P<to_token>{_JSON_STRING})|earlier copies of the current token"
    rf"|the token after an earlier copy of the current token|any token)"
    rf" from (?:any token|the token (?P<from_token>{_JSON_STRING}))"
)


def format_head_rule(rule: HeadRule) -> str:
    """The parseable explanation text (a continuation of "this attention head")."""
    if rule.target is HeadTarget.OFFSET:
        to = f"the token {rule.offset} position{'s' if rule.offset != 1 else ''} earlier"
    elif rule.target is HeadTarget.TOKEN:
        to = f"the token {json.dumps(rule.to_token, ensure_ascii=False)}"
    else:
        to = rule.target.value
    source = (
        "any token"
        if rule.from_token is None
        else f"the token {json.dumps(rule.from_token, ensure_ascii=False)}"
    )
    return f"attends to {to} from {source}"


def parse_head_rule(text: str) -> HeadRule:
    """Read a rule back from :func:`format_head_rule` output (a final period is allowed)."""
    body = text.strip()
    if body.endswith("."):
        body = body[:-1].rstrip()
    match = _HEAD_RULE.fullmatch(body)
    if match is None:
        raise InvalidArgumentError(
            f"the explanation {text!r} is not in the baseline head format ('attends to <target> from "
            '<any token | the token "x">\'); use an LLM judge for free-text explanations'
        )
    from_token = (
        None if match.group("from_token") is None else json.loads(match.group("from_token"))
    )
    to = match.group("to")
    if match.group("offset") is not None:
        return HeadRule(HeadTarget.OFFSET, offset=int(match.group("offset")), from_token=from_token)
    if match.group("to_token") is not None:
        return HeadRule(
            HeadTarget.TOKEN, to_token=json.loads(match.group("to_token")), from_token=from_token
        )
    return HeadRule(HeadTarget(to), from_token=from_token)


def head_rule_holds(rule: HeadRule, tokens: Sequence[str], query: int, key: int) -> bool:
    """Whether the rule says the head attends from ``query`` to ``key`` in ``tokens``."""
    if rule.from_token is not None and tokens[query] != rule.from_token:
        return False
    target = rule.target
    if target is HeadTarget.SELF:
        return key == query
    if target is HeadTarget.OFFSET:
        return query - key == rule.offset
    if target is HeadTarget.FIRST:
        return key == 0
    if target is HeadTarget.TOKEN:
        return tokens[key] == rule.to_token
    if target is HeadTarget.COPY:
        return key < query and tokens[key] == tokens[query]
    if target is HeadTarget.INDUCTION:
        return 0 < key < query and tokens[key - 1] == tokens[query]
    return True


def fit_head_rule(
    top_records: Sequence[ActivationRecord],
    contrast_records: Sequence[ActivationRecord] = (),
    *,
    n_top_pairs: int = 20,
    n_low_pairs: int = 60,
    low_fraction: float = 0.1,
    max_offset: int = 4,
    max_token_candidates: int = 8,
    seed: int = 0,
) -> HeadRule:
    """The head rule with the best ROC AUC separating top pairs from weak pairs (simplest on ties)."""
    records = list(top_records) + list(contrast_records)
    skip = first_key_skippable(records, low_fraction)  # the attention sink: see pairs.py
    positives = top_pairs(top_records, n_top_pairs, skip_first_key=skip)
    negatives = low_pairs(
        records, n_low_pairs, low_fraction=low_fraction, seed=seed, skip_first_key=skip
    )
    if not negatives:
        raise FailedPreconditionError(
            f"no token pair in the records is below {low_fraction} of the strongest, so there is "
            "nothing to contrast the strong pairs with; the head attends alike everywhere"
        )
    labelled = [(p, 1) for p in positives] + [(p, 0) for p in negatives]

    def frequent(tokens: list[str]) -> list[str]:
        counts: dict[str, int] = defaultdict(int)
        for t in tokens:
            counts[t] += 1
        return sorted(counts, key=lambda t: (-counts[t], t))[:max_token_candidates]

    key_tokens = frequent([records[p.record_index].tokens[p.key] for p in positives])
    query_tokens = frequent([records[p.record_index].tokens[p.query] for p in positives])
    targets = (
        [HeadRule(HeadTarget.SELF)]
        + [HeadRule(HeadTarget.OFFSET, offset=d) for d in range(1, max_offset + 1)]
        + [HeadRule(HeadTarget.FIRST), HeadRule(HeadTarget.COPY), HeadRule(HeadTarget.INDUCTION)]
        + [HeadRule(HeadTarget.TOKEN, to_token=t) for t in key_tokens]
        + [HeadRule(HeadTarget.ANY)]
    )
    sources: list[str | None] = [None, *query_tokens]
    best: tuple[float, HeadRule] | None = None
    for source in sources:  # simpler rules first: a later rule must be strictly better
        for target in targets:
            rule = HeadRule(target.target, target.offset, target.to_token, source)
            if rule.target is HeadTarget.ANY and source is None:
                continue
            holds = [
                1.0
                if head_rule_holds(rule, records[p.record_index].tokens, p.query, p.key)
                else 0.0
                for p, _ in labelled
            ]
            auc, _ = roc_auc([label for _, label in labelled], holds)
            if auc is not None and (best is None or auc > best[0]):
                best = (auc, rule)
    if best is None:  # unreachable: both classes are present, so every AUC is defined
        raise FailedPreconditionError("no head rule could be scored on these records")
    return best[1]
