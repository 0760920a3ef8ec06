"""Explainers: turn a node's top-activating records into candidate explanations.

Every explainer has ``explain(records, *, contrast=()) -> list[str]``: ``records`` are the
top-activating records the explanation is written from (the ``train`` split); ``contrast`` are
random records (the ``calibration`` split's random half) that explainers may use to see where the
node does *not* fire. LLM explainers show only ``records``, as the original method does.

Neurons / SAE latents:
* :class:`LLMExplainer` — the original ``TokenActivationPairExplainer`` prompt on any
  :class:`~tdb_core.explain.backends.LLMBackend`; defaults as the original
  (``max_tokens=60, temperature=1.0, top_p=1.0``) except ``num_samples=1`` (TDB's choice).
* :class:`BaselineExplainer` — token statistics, no LLM (see ``baseline.py``).

Attention heads (records over token pairs):
* :class:`LLMHeadExplainer` — TDB's ``AttentionHeadExplainer`` prompt with the strongest pairs.
* :class:`BaselineHeadExplainer` — the best-separating structural/token head rule.

Explanations are returned without the prompt's prefix ("the main thing this neuron does is find"
/ "this attention head") and without a final period. An LLM that returns nothing usable in any
sample raises FailedPreconditionError.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.explain.backends import LLMBackend
from tdb_core.explain.baseline import (
    fit_head_rule,
    fit_token_rules,
    format_head_rule,
    format_token_rules,
)
from tdb_core.explain.few_shot import (
    HEAD_FEW_SHOT_EXAMPLES,
    NEURON_FEW_SHOT_EXAMPLES,
    HeadFewShotExample,
    NeuronFewShotExample,
    TokenPairExample,
)
from tdb_core.explain.pairs import top_pairs
from tdb_core.explain.prompts import (
    ATTENTION_EXPLANATION_PREFIX,
    EXPLANATION_PREFIX,
    build_explanation_prompt,
    build_head_explanation_prompt,
    parse_explanation_completion,
)
from tdb_core.explain.records import ActivationRecord


@runtime_checkable
class Explainer(Protocol):
    """Writes candidate explanations of a node from its records."""

    @property
    def name(self) -> str:
        """Recorded with every explanation: which explainer, on which model."""
        ...

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        """One or more candidate explanations (at least one, or an error)."""
        ...


def _usable(completions: Sequence[str], prefix: str, backend: LLMBackend) -> list[str]:
    explanations = [e for e in (parse_explanation_completion(c, prefix) for c in completions) if e]
    if not explanations:
        raise FailedPreconditionError(
            f"{backend.name} returned no usable explanation in {len(completions)} sample(s) "
            f"(first raw answer: {completions[0][:200]!r}); try more samples or another model"
        )
    return explanations


class LLMExplainer:
    """The original token<TAB>activation few-shot explainer on any backend."""

    def __init__(
        self,
        backend: LLMBackend,
        *,
        examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
        repeat_non_zero_activations: bool = True,
        num_samples: int = 1,
        max_tokens: int = 60,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        self._backend = backend
        self._examples = examples
        self._repeat = repeat_non_zero_activations
        self._num_samples = num_samples
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._seed = seed

    @property
    def name(self) -> str:
        """``token_activation_pair:{backend}``."""
        return f"token_activation_pair:{self._backend.name}"

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        """Sample explanations; ``contrast`` is not shown (the original prompt has only top records)."""
        messages = build_explanation_prompt(
            records, examples=self._examples, repeat_non_zero_activations=self._repeat
        )
        completions = self._backend.generate(
            messages,
            max_tokens=self._max_tokens,
            temperature=self._temperature,
            top_p=self._top_p,
            n=self._num_samples,
            seed=self._seed,
        )
        return _usable(completions, EXPLANATION_PREFIX, self._backend)


class BaselineExplainer:
    """Token-statistics explanations (see ``baseline.py``); needs no language model."""

    def __init__(
        self,
        *,
        max_rules: int = 5,
        min_value: float = 1.0,
        min_context_count: int = 2,
        context_gain: float = 0.25,
    ) -> None:
        self._max_rules = max_rules
        self._min_value = min_value
        self._min_context_count = min_context_count
        self._context_gain = context_gain

    @property
    def name(self) -> str:
        """``baseline``."""
        return "baseline"

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        """One explanation: the fitted token rules, rendered parseably."""
        if not records:
            raise InvalidArgumentError("no activation records to explain from; give at least one")
        rules = fit_token_rules(
            records,
            contrast,
            max_rules=self._max_rules,
            min_value=self._min_value,
            min_context_count=self._min_context_count,
            context_gain=self._context_gain,
        )
        return [format_token_rules(rules)]


def _pair_examples(records: Sequence[ActivationRecord], n_pairs: int) -> list[TokenPairExample]:
    """The strongest pairs grouped by record, records in order of their first strong pair."""
    grouped: dict[int, list[tuple[int, int]]] = {}
    for pair in top_pairs(records, n_pairs):
        grouped.setdefault(pair.record_index, []).append((pair.query, pair.key))
    return [
        TokenPairExample(tokens=records[i].tokens, pairs=tuple(pairs))
        for i, pairs in grouped.items()
    ]


class LLMHeadExplainer:
    """TDB's attention-head explainer prompt on any backend."""

    def __init__(
        self,
        backend: LLMBackend,
        *,
        few_shot: Sequence[HeadFewShotExample] = HEAD_FEW_SHOT_EXAMPLES,
        n_top_pairs: int = 5,
        num_samples: int = 1,
        max_tokens: int = 60,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = 0,
    ) -> None:
        self._backend = backend
        self._few_shot = few_shot
        self._n_top_pairs = n_top_pairs
        self._num_samples = num_samples
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._seed = seed

    @property
    def name(self) -> str:
        """``attention_head:{backend}``."""
        return f"attention_head:{self._backend.name}"

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        """Sample explanations of the head from its ``n_top_pairs`` strongest pairs."""
        messages = build_head_explanation_prompt(
            _pair_examples(records, self._n_top_pairs), few_shot=self._few_shot
        )
        completions = self._backend.generate(
            messages,
            max_tokens=self._max_tokens,
            temperature=self._temperature,
            top_p=self._top_p,
            n=self._num_samples,
            seed=self._seed,
        )
        return _usable(completions, ATTENTION_EXPLANATION_PREFIX, self._backend)


class BaselineHeadExplainer:
    """The head rule that best separates strong from weak pairs (see ``baseline.py``)."""

    def __init__(
        self,
        *,
        n_top_pairs: int = 20,
        n_low_pairs: int = 60,
        low_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self._n_top_pairs = n_top_pairs
        self._n_low_pairs = n_low_pairs
        self._low_fraction = low_fraction
        self._seed = seed

    @property
    def name(self) -> str:
        """``baseline_head``."""
        return "baseline_head"

    def explain(
        self, records: Sequence[ActivationRecord], *, contrast: Sequence[ActivationRecord] = ()
    ) -> list[str]:
        """One explanation: the fitted head rule, rendered parseably."""
        if not records:
            raise InvalidArgumentError("no activation records to explain from; give at least one")
        rule = fit_head_rule(
            records,
            contrast,
            n_top_pairs=self._n_top_pairs,
            n_low_pairs=self._n_low_pairs,
            low_fraction=self._low_fraction,
            seed=self._seed,
        )
        return [format_head_rule(rule)]
