"""Simulators: predict a node's activations on a token sequence from an explanation alone.

* :class:`AllAtOnceSimulator` — the original method (``ExplanationNeuronSimulator``): one
  few-shot prompt with every value of the target sequence ``unknown``; at each slot the backend
  gives the log-probabilities of "0".."10", which are renormalized over the values present and
  turned into an expected value. Needs prompt logprobs (always available from
  :class:`~tdb_core.explain.backends.HFLocalBackend`; from an OpenAI-compatible server only where it
  returns them). When the backend has none, ``on_missing_logprobs`` decides: ``FALLBACK``
  (default) switches, for this and all later sequences, to the logprob-free simulator on the same
  backend and records ``fallback_reason`` in every result; ``ERROR`` raises
  LogprobsUnavailableError.
* :class:`LogprobFreeSimulator` — TDB's default: the chat model re-emits ``token<TAB>value`` lines
  at temperature 0. A completion that does not reproduce the sequence is a *failed* simulation
  (``expected_activations=None`` with an ``error``), never a row of zeros; single values that are
  not numbers in 0..10 become 0 as in the original and are counted in ``n_defaulted``.
* :class:`BaselineSimulator` — the token-statistics baseline's own predictor (no LLM).

All predictions are on the 0..10 scale of the discretized activations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

import structlog

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.backends import LLMBackend, LogprobsUnavailableError
from tdb_core.explain.baseline import parse_token_rules, predict_token_rules
from tdb_core.explain.few_shot import NEURON_FEW_SHOT_EXAMPLES, NeuronFewShotExample
from tdb_core.explain.formatting import MAX_NORMALIZED_ACTIVATION
from tdb_core.explain.prompts import (
    build_logprob_free_prompt,
    build_simulation_prompt,
    parse_logprob_free_completion,
)

log = structlog.get_logger(__name__)

VALUE_TOKENS: tuple[str, ...] = tuple(str(i) for i in range(MAX_NORMALIZED_ACTIVATION + 1))


class SimulationMethod(str, Enum):
    """How a simulation was produced."""

    ALL_AT_ONCE = "all_at_once"
    LOGPROB_FREE = "logprob_free"
    BASELINE = "baseline"


class MissingLogprobsPolicy(str, Enum):
    """What the all-at-once simulator does when its backend returns no logprobs."""

    FALLBACK = "fallback"
    ERROR = "error"


@dataclass(frozen=True)
class SimulationResult:
    """Predicted activations (0..10) for one token sequence.

    ``expected_activations`` is None when the simulation failed (``error`` says why); the scorer
    then leaves the sequence out and reports it. ``distribution_values`` /
    ``distribution_probabilities`` hold, per token, the values 0..10 that had probability and
    their renormalized probabilities (logprob simulations only).
    """

    tokens: tuple[str, ...]
    expected_activations: tuple[float, ...] | None
    method: SimulationMethod
    distribution_values: tuple[tuple[int, ...], ...] | None = None
    distribution_probabilities: tuple[tuple[float, ...], ...] | None = None
    error: str | None = None
    n_defaulted: int = 0
    fallback_reason: str | None = None


@runtime_checkable
class Simulator(Protocol):
    """Predicts activations from an explanation."""

    @property
    def name(self) -> str:
        """Recorded with every score: which simulator, on which model."""
        ...

    def simulate(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        """Predicted 0..10 activations of ``tokens`` under ``explanation``."""
        ...


def expected_value(logprobs: dict[str, float]) -> tuple[float, tuple[int, ...], tuple[float, ...]]:
    """EV over the values present, with probabilities renormalized to sum to 1 (the original's rule)."""
    values = sorted(int(v) for v in logprobs)
    top = max(logprobs.values())
    weights = [math.exp(logprobs[str(v)] - top) for v in values]
    total = sum(weights)
    probabilities = tuple(w / total for w in weights)
    return sum(v * p for v, p in zip(values, probabilities)), tuple(values), probabilities


def _check_inputs(explanation: str, tokens: Sequence[str]) -> None:
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to simulate is empty; give a non-empty one")
    if len(tokens) == 0:
        raise InvalidArgumentError("no tokens to simulate; give at least one")


class LogprobFreeSimulator:
    """Asks the backend to repeat the tokens with values filled in (temperature 0)."""

    def __init__(
        self,
        backend: LLMBackend,
        *,
        examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
        max_tokens: int | None = None,
    ) -> None:
        self._backend = backend
        self._examples = examples
        self._max_tokens = max_tokens

    @property
    def name(self) -> str:
        """``logprob_free:{backend}``."""
        return f"{SimulationMethod.LOGPROB_FREE.value}:{self._backend.name}"

    def simulate(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        """One greedy completion, parsed line by line."""
        _check_inputs(explanation, tokens)
        messages = build_logprob_free_prompt(explanation, tokens, examples=self._examples)
        budget = self._max_tokens or 12 * len(tokens) + 32
        completion = self._backend.generate(messages, max_tokens=budget, temperature=0.0, n=1)[0]
        parsed = parse_logprob_free_completion(completion, tokens)
        if parsed.values is None:
            return SimulationResult(
                tokens=tuple(tokens),
                expected_activations=None,
                method=SimulationMethod.LOGPROB_FREE,
                error=f"the simulator's answer could not be read: {parsed.error}",
            )
        return SimulationResult(
            tokens=tuple(tokens),
            expected_activations=parsed.values,
            method=SimulationMethod.LOGPROB_FREE,
            n_defaulted=parsed.n_defaulted,
        )


class AllAtOnceSimulator:
    """The original all-at-once expected-value simulator (see the module docstring)."""

    def __init__(
        self,
        backend: LLMBackend,
        *,
        examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
        on_missing_logprobs: MissingLogprobsPolicy = MissingLogprobsPolicy.FALLBACK,
        fallback: Simulator | None = None,
    ) -> None:
        self._backend = backend
        self._examples = examples
        self._policy = MissingLogprobsPolicy(on_missing_logprobs)
        self._fallback = fallback or LogprobFreeSimulator(backend, examples=examples)
        self._fallback_reason: str | None = None

    @property
    def name(self) -> str:
        """``all_at_once:{backend}``, or the fallback's name once it has taken over."""
        if self._fallback_reason is not None:
            return self._fallback.name
        return f"{SimulationMethod.ALL_AT_ONCE.value}:{self._backend.name}"

    def _fall_back(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        result = self._fallback.simulate(explanation, tokens)
        return SimulationResult(
            tokens=result.tokens,
            expected_activations=result.expected_activations,
            method=result.method,
            distribution_values=result.distribution_values,
            distribution_probabilities=result.distribution_probabilities,
            error=result.error,
            n_defaulted=result.n_defaulted,
            fallback_reason=self._fallback_reason,
        )

    def simulate(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        """Expected values from the slot distributions; falls back or raises without logprobs."""
        _check_inputs(explanation, tokens)
        if self._fallback_reason is not None:
            return self._fall_back(explanation, tokens)
        prompt = build_simulation_prompt(explanation, tokens, examples=self._examples)
        try:
            slots = self._backend.slot_logprobs(prompt, VALUE_TOKENS)
        except LogprobsUnavailableError as exc:
            if self._policy is MissingLogprobsPolicy.ERROR:
                raise
            self._fallback_reason = str(exc)
            log.warning(
                "simulator_fallback", backend=self._backend.name, reason=self._fallback_reason
            )
            return self._fall_back(explanation, tokens)
        if len(slots) != len(tokens):
            raise LogprobsUnavailableError(
                f"the backend returned {len(slots)} slot distributions for {len(tokens)} tokens"
            )
        expected, values, probabilities = [], [], []
        for k, slot in enumerate(slots):
            if not slot:
                why = (
                    "could not be read"
                    if slot is None
                    else "gave no probability to any value 0..10"
                )
                return SimulationResult(
                    tokens=tuple(tokens),
                    expected_activations=None,
                    method=SimulationMethod.ALL_AT_ONCE,
                    error=f"the value slot of token {k} ({tokens[k]!r}) {why}",
                )
            ev, vals, probs = expected_value(slot)
            expected.append(ev)
            values.append(vals)
            probabilities.append(probs)
        return SimulationResult(
            tokens=tuple(tokens),
            expected_activations=tuple(expected),
            method=SimulationMethod.ALL_AT_ONCE,
            distribution_values=tuple(values),
            distribution_probabilities=tuple(probabilities),
        )


class BaselineSimulator:
    """Predicts with the token rules of a baseline explanation (no language model)."""

    @property
    def name(self) -> str:
        """``baseline``."""
        return SimulationMethod.BASELINE.value

    def simulate(self, explanation: str, tokens: Sequence[str]) -> SimulationResult:
        """Rule values per position; InvalidArgumentError if the explanation is not a baseline one."""
        _check_inputs(explanation, tokens)
        rules = parse_token_rules(explanation)
        return SimulationResult(
            tokens=tuple(tokens),
            expected_activations=tuple(predict_token_rules(rules, tokens)),
            method=SimulationMethod.BASELINE,
        )
