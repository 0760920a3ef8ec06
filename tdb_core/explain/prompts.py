"""Prompt builders and completion parsers of the explanation method.

Every prompt is a list of chat messages (system / user / assistant), built with the structure and
wording of OpenAI's ``automated-interpretability`` (``explainer.py``, ``simulator.py``) and, for
attention heads, TDB (``explainer.py``, ``attention_head_scoring.py``). A message list is sent as
is to chat endpoints, or rendered for completion endpoints and plain causal LMs by concatenating
the message contents (the original's ``PromptFormat.NONE``).

Prompts:

* explanation: few-shot neurons, each ``"\\n\\nNeuron {i}\\nActivations:" + records`` (plus
  ``"\\nSame activations, but with all zeros filtered out:"`` when < 20 % of values are non-zero),
  then ``"\\nExplanation of neuron {i} behavior: the main thing this neuron does is find"``; the
  few-shot answers are ``" {explanation}."``.
* all-at-once simulation: few-shot neurons with their explanation and partly revealed values, then
  the target sequence with every value ``unknown``. It is a :class:`SlottedPrompt`: the text plus
  where each ``unknown`` slot is, so a backend can read the next-token distribution at each slot.
* logprob-free simulation: the chat model re-emits ``token<TAB>value༗`` lines (TDB's default
  simulator). Deviation from the original, to stop a common parse failure: newlines, tabs and
  carriage returns inside tokens are shown escaped (``\\n``, ``\\t``, ``\\r``) in this prompt only.
* attention head explanation and judging, with TDB's ``**to**`` / ``[[from]]`` marks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from tdb_core.errors import InvalidArgumentError
from tdb_core.explain.few_shot import (
    HEAD_FEW_SHOT_EXAMPLES,
    NEURON_FEW_SHOT_EXAMPLES,
    HeadFewShotExample,
    NeuronFewShotExample,
    TokenPairExample,
)
from tdb_core.explain.formatting import (
    UNKNOWN_ACTIVATION_STRING,
    format_activation_records,
    format_token_pair,
    format_token_pair_examples,
    max_activation,
    non_zero_activation_proportion,
    normalize_activations,
)
from tdb_core.explain.records import ActivationRecord

EXPLANATION_PREFIX = "the main thing this neuron does is find"
ATTENTION_EXPLANATION_PREFIX = "this attention head"
LOGPROB_FREE_DELIMITER = "༗"
END_OF_TEXT_TOKEN = "<|endoftext|>"
END_OF_TEXT_REPLACEMENT = "<|not_endoftext|>"
REPEAT_NON_ZERO_THRESHOLD = 0.2

EXPLAINER_SYSTEM_MESSAGE = (
    "We're studying neurons in a neural network. Each neuron looks for some particular "
    "thing in a short document. Look at the parts of the document the neuron activates for "
    "and summarize in a single sentence what the neuron is looking for. Don't list "
    "examples of words.\n\nThe activation format is token<tab>activation. Activation "
    "values range from 0 to 10. A neuron finding what it's looking for is represented by a "
    "non-zero activation value. The higher the activation value, the stronger the match."
)

SIMULATOR_SYSTEM_MESSAGE = (
    "We're studying neurons in a neural network.\n"
    "Each neuron looks for some particular thing in a short document.\n"
    "Look at summary of what the neuron does, and try to predict how it will fire on each token.\n"
    "\n"
    'The activation format is token<tab>activation, activations go from 0 to 10, "unknown" '
    "indicates an unknown activation. Most activations will be 0.\n"
)

LOGPROB_FREE_SYSTEM_MESSAGE = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in "
    "a short document. Look at an explanation of what the neuron does, and try to predict its "
    "activations on a particular token.\n\nThe activation format is token<tab>activation, and "
    "activations range from 0 to 10. Most activations will be 0.\nFor each sequence, you will "
    "see the tokens in the sequence where the activations are left blank. You will print the "
    "exact same tokens verbatim, but with the activations filled in according to the explanation.\n"
)

HEAD_EXPLAINER_SYSTEM_MESSAGE = (
    "We're studying attention heads in a neural network. Each head looks at every pair of tokens "
    "in a short token sequence and activates for pairs of tokens that fit what it is looking for. "
    "Attention heads always attend from a token to a token earlier in the sequence (or from a "
    'token to itself). We will display multiple instances of sequences with the "to" token '
    'surrounded by double asterisks (e.g., **token**) and the "from" token surrounded by double '
    "square brackets (e.g., [[token]]). If a token attends from itself to itself, it will be "
    "surrounded by both (e.g., [[**token**]]). Look at the pairs of tokens the head activates for "
    "and summarize in a single sentence what pattern the head is looking for. We do not display "
    "every activating pair of tokens in a sequence; you must generalize from limited examples. "
    "Remember, the head always attends to tokens earlier in the sentence (marked with ** **) from "
    "tokens later in the sentence (marked with [[ ]]), except when the head attends from a token to "
    'itself (marked with [[** **]]). The explanation takes the form: "This attention head attends '
    "to {pattern of tokens marked with ** **, which appear earlier} from {pattern of tokens marked "
    'with [[ ]], which appear later}." The explanation does not include any of the markers '
    "(** **, [[ ]]), as these are just for your reference. Sequences are separated by "
    "`<|sequence_separator|>`."
)

HEAD_JUDGE_SYSTEM_MESSAGE = (
    "We're studying attention heads in a neural network. Each head looks at every pair of tokens "
    "in a short token sequence and activates for pairs of tokens that fit what it is looking for. "
    "Attention heads always attend from a token to a token earlier in the sequence (or from a "
    "token to itself). We will display a token sequence and indicate a particular token pair within "
    'that sequence. The "to" token of the pair will be marked with double asterisks (e.g., **token**) '
    'and the "from" token will be marked with double square brackets (e.g., [[token]]). If the token '
    "pair consists of a token paired with itself, it will be marked with both (e.g., [[**token**]]) "
    "and no other token in the sequence will be marked. We present an explanation of what the "
    "attention head is looking for. Output 1 if the head activates for the token pair, and 0 "
    "otherwise."
)


class Role(str, Enum):
    """Author of a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class ChatMessage:
    """One message of a prompt."""

    role: Role
    content: str


@dataclass(frozen=True)
class SlottedPrompt:
    """A completion prompt with value slots: ``segments[0] + "unknown" + segments[1] + ... + segments[-1]``.

    Slot ``j`` is the ``unknown`` between ``segments[j]`` and ``segments[j + 1]``; the simulator
    reads the next-token distribution at each slot (what the model expects after the tab).
    """

    segments: tuple[str, ...]


@dataclass(frozen=True)
class LogprobFreeParse:
    """Result of parsing a logprob-free simulation completion.

    ``values`` is None when the completion did not reproduce the token sequence (``error`` says
    how); otherwise one value per token, with ``n_defaulted`` values that were not a number in
    0..10 set to 0 as the original does.
    """

    values: tuple[float, ...] | None
    n_defaulted: int
    error: str | None


def render_text(messages: Sequence[ChatMessage]) -> str:
    """The messages as one completion prompt: their contents concatenated (``PromptFormat.NONE``)."""
    return "".join(m.content for m in messages)


def slotted_text(prompt: SlottedPrompt) -> str:
    """The full text of a slotted prompt."""
    return UNKNOWN_ACTIVATION_STRING.join(prompt.segments)


def slot_offsets(prompt: SlottedPrompt) -> list[int]:
    """Character offset of each ``unknown`` slot in :func:`slotted_text`."""
    offsets, position = [], 0
    for segment in prompt.segments[:-1]:
        position += len(segment)
        offsets.append(position)
        position += len(UNKNOWN_ACTIVATION_STRING)
    return offsets


# ------------------------------------------------------------------------------------------------
# Neuron explanation


def _explanation_user_message(
    records: Sequence[ActivationRecord], index: int, repeat_non_zero_activations: bool
) -> str:
    max_act = max_activation(records)
    message = f"\n\nNeuron {index + 1}\nActivations:" + format_activation_records(records, max_act)
    if (
        repeat_non_zero_activations
        and non_zero_activation_proportion(records, max_act) < REPEAT_NON_ZERO_THRESHOLD
    ):
        message += (
            "\nSame activations, but with all zeros filtered out:"
            + format_activation_records(records, max_act, omit_zeros=True)
        )
    return message + f"\nExplanation of neuron {index + 1} behavior: {EXPLANATION_PREFIX}"


def build_explanation_prompt(
    records: Sequence[ActivationRecord],
    *,
    examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
    repeat_non_zero_activations: bool = True,
) -> tuple[ChatMessage, ...]:
    """Few-shot prompt asking what the neuron whose ``records`` are given looks for.

    Each neuron's values are discretized by the maximum over its own records (the original
    recomputes it from the records it shows).
    """
    if not records:
        raise InvalidArgumentError("no activation records to explain from; give at least one")
    messages = [ChatMessage(Role.SYSTEM, EXPLAINER_SYSTEM_MESSAGE)]
    for i, example in enumerate(examples):
        messages.append(
            ChatMessage(
                Role.USER,
                _explanation_user_message(
                    example.activation_records, i, repeat_non_zero_activations
                ),
            )
        )
        messages.append(ChatMessage(Role.ASSISTANT, f" {example.explanation}."))
    messages.append(
        ChatMessage(
            Role.USER,
            _explanation_user_message(records, len(examples), repeat_non_zero_activations),
        )
    )
    return tuple(messages)


def parse_explanation_completion(text: str, prefix: str = EXPLANATION_PREFIX) -> str | None:
    """The explanation in a completion: first non-empty line, repeated prefix and final period removed.

    Returns None when nothing is left.
    """
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if line.lower().startswith(prefix.lower()):
        line = line[len(prefix) :].strip()
    if line.endswith("."):
        line = line[:-1].rstrip()
    return line or None


# ------------------------------------------------------------------------------------------------
# All-at-once simulation


def _simulation_user_message(index: int, explanation: str) -> str:
    return (
        f"\n\nNeuron {index + 1}\nExplanation of neuron {index + 1} behavior: "
        f"{EXPLANATION_PREFIX} {explanation}"
    )


def build_simulation_prompt(
    explanation: str,
    tokens: Sequence[str],
    *,
    examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
) -> SlottedPrompt:
    """All-at-once prompt: the target's tokens each followed by a tab and an ``unknown`` slot."""
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to simulate is empty; give a non-empty one")
    if not tokens:
        raise InvalidArgumentError("no tokens to simulate; give at least one")
    messages = [ChatMessage(Role.SYSTEM, SIMULATOR_SYSTEM_MESSAGE)]
    for i, example in enumerate(examples):
        messages.append(ChatMessage(Role.USER, _simulation_user_message(i, example.explanation)))
        formatted = format_activation_records(
            example.activation_records,
            max_activation(example.activation_records),
            start_indices=example.first_revealed_activation_indices,
        )
        messages.append(ChatMessage(Role.ASSISTANT, f"\nActivations: {formatted}\n"))
    messages.append(
        ChatMessage(Role.USER, _simulation_user_message(len(examples), explanation.strip()))
    )
    # The final assistant message is "\nActivations: " + format_sequences_for_simulation([tokens]);
    # it is cut at each "unknown" into segments.
    head = render_text(messages) + "\nActivations: \n<start>\n"
    segments = [head + f"{tokens[0]}\t"]
    segments += [f"\n{token}\t" for token in tokens[1:]]
    segments.append("\n<end>\n")
    return SlottedPrompt(segments=tuple(segments))


# ------------------------------------------------------------------------------------------------
# Logprob-free simulation


def _shown_token(token: str) -> str:
    if token.strip() == END_OF_TEXT_TOKEN:
        return END_OF_TEXT_REPLACEMENT
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _logprob_free_lines(tokens: Sequence[str], values: Sequence[int] | None) -> str:
    if values is None:
        return "".join(f"{_shown_token(t)}\t{LOGPROB_FREE_DELIMITER}\n" for t in tokens)
    return "".join(
        f"{_shown_token(t)}\t{v}{LOGPROB_FREE_DELIMITER}\n" for t, v in zip(tokens, values)
    )


def build_logprob_free_prompt(
    explanation: str,
    tokens: Sequence[str],
    *,
    examples: Sequence[NeuronFewShotExample] = NEURON_FEW_SHOT_EXAMPLES,
) -> tuple[ChatMessage, ...]:
    """Chat prompt asking the model to repeat each token with its predicted value (0..10)."""
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to simulate is empty; give a non-empty one")
    if not tokens:
        raise InvalidArgumentError("no tokens to simulate; give at least one")
    messages = [ChatMessage(Role.SYSTEM, LOGPROB_FREE_SYSTEM_MESSAGE)]
    for i, example in enumerate(examples):
        max_act = max_activation(example.activation_records)
        for j, record in enumerate(example.activation_records):
            header = (
                f"Neuron {i + 1}\nExplanation of neuron {i + 1} behavior: {EXPLANATION_PREFIX} "
                f"{example.explanation}\n\n"
                if j == 0
                else ""
            )
            messages.append(
                ChatMessage(
                    Role.USER,
                    f"{header}Sequence {j + 1} Tokens without Activations:\n"
                    f"{_logprob_free_lines(record.tokens, None)}\n\n"
                    f"Sequence {j + 1} Tokens with Activations:\n",
                )
            )
            values = normalize_activations(record.activations, max_act)
            messages.append(
                ChatMessage(Role.ASSISTANT, f"{_logprob_free_lines(record.tokens, values)}\n\n")
            )
    n = len(examples) + 1
    messages.append(
        ChatMessage(
            Role.USER,
            f"Neuron {n}\nExplanation of neuron {n} behavior: {EXPLANATION_PREFIX} "
            f"{explanation.strip()}\n\n"
            f"Sequence 1 Tokens without Activations:\n{_logprob_free_lines(tokens, None)}\n\n"
            "Sequence 1 Tokens with Activations:\n",
        )
    )
    return tuple(messages)


def parse_logprob_free_completion(completion: str, tokens: Sequence[str]) -> LogprobFreeParse:
    """Read ``token<TAB>value༗`` lines back; a sequence not reproduced exactly is an error, not zeros."""
    shown = [_shown_token(t) for t in tokens]
    text = completion.strip("\n")
    lines = text.split(f"{LOGPROB_FREE_DELIMITER}\n")
    if len(lines) == 1:  # the model dropped the delimiter: fall back to one line per token
        lines = text.split("\n")
    lines = [
        ln[: -len(LOGPROB_FREE_DELIMITER)] if ln.endswith(LOGPROB_FREE_DELIMITER) else ln
        for ln in lines
    ]

    def value_part(line: str, token: str) -> str | None:
        for candidate in (line, f" {line}"):  # models often drop a token's leading space
            if candidate.startswith(f"{token}\t"):
                return candidate[len(token) + 1 :]
        return None

    start = next((i for i, ln in enumerate(lines) if value_part(ln, shown[0]) is not None), None)
    if start is None:
        return LogprobFreeParse(
            values=None,
            n_defaulted=0,
            error=f"the completion never reproduces the first token {tokens[0]!r} followed by a tab",
        )
    lines = lines[start:]
    if len(lines) != len(tokens):
        return LogprobFreeParse(
            values=None,
            n_defaulted=0,
            error=f"the completion has {len(lines)} token lines for {len(tokens)} tokens",
        )
    values: list[float] = []
    n_defaulted = 0
    for i, (line, token) in enumerate(zip(lines, shown)):
        part = value_part(line, token)
        if part is None:
            return LogprobFreeParse(
                values=None,
                n_defaulted=0,
                error=f"line {i} of the completion is {line!r}; expected token {tokens[i]!r} and a tab",
            )
        try:
            value = float(part.strip().rstrip(LOGPROB_FREE_DELIMITER))
        except ValueError:
            value = math.nan
        if math.isfinite(value) and 0.0 <= value <= 10.0:
            values.append(value)
        else:
            values.append(0.0)
            n_defaulted += 1
    return LogprobFreeParse(values=tuple(values), n_defaulted=n_defaulted, error=None)


# ------------------------------------------------------------------------------------------------
# Attention heads


def _head_explanation_user_message(examples: Sequence[TokenPairExample], index: int) -> str:
    pairs = format_token_pair_examples([(e.tokens, e.pairs) for e in examples])
    return (
        f"\n\nAttention head {index + 1}\nActivations:\n{pairs}"
        f"\nExplanation of attention head {index + 1} behavior: {ATTENTION_EXPLANATION_PREFIX}"
    )


def build_head_explanation_prompt(
    examples: Sequence[TokenPairExample],
    *,
    few_shot: Sequence[HeadFewShotExample] = HEAD_FEW_SHOT_EXAMPLES,
) -> tuple[ChatMessage, ...]:
    """TDB's head prompt: few-shot heads, then the target's strongest pairs, ending "this attention head"."""
    if not examples or not any(e.pairs for e in examples):
        raise InvalidArgumentError("no token pairs to explain from; give at least one")
    messages = [ChatMessage(Role.SYSTEM, HEAD_EXPLAINER_SYSTEM_MESSAGE)]
    for i, example in enumerate(few_shot):
        messages.append(
            ChatMessage(Role.USER, _head_explanation_user_message(example.token_pair_examples, i))
        )
        messages.append(ChatMessage(Role.ASSISTANT, f" {example.explanation}."))
    messages.append(ChatMessage(Role.USER, _head_explanation_user_message(examples, len(few_shot))))
    return tuple(messages)


def _head_judge_user_message(
    index: int, explanation: str, tokens: Sequence[str], pair: tuple[int, int]
) -> str:
    return (
        f"\n\nExample {index + 1}\nExplanation: {ATTENTION_EXPLANATION_PREFIX} {explanation.strip()}\n"
        f"Sequence:\n{format_token_pair(tokens, pair)}"
        f"\nPrediction of whether attention head {index + 1} activates on the token pair: "
    )


def build_head_judge_prompt(
    explanation: str,
    tokens: Sequence[str],
    pair: tuple[int, int],
    *,
    few_shot: Sequence[HeadFewShotExample] = HEAD_FEW_SHOT_EXAMPLES,
) -> tuple[ChatMessage, ...]:
    """TDB's one-pair-at-a-time prompt: does the head activate on this marked pair? (answer 0 or 1)."""
    if not explanation.strip():
        raise InvalidArgumentError("the explanation to judge with is empty; give a non-empty one")
    query, key = pair
    if not 0 <= key <= query < len(tokens):
        raise InvalidArgumentError(
            f"token pair (query={query}, key={key}) is not a pair of a {len(tokens)}-token sequence; "
            "need 0 <= key <= query < length"
        )
    messages = [ChatMessage(Role.SYSTEM, HEAD_JUDGE_SYSTEM_MESSAGE)]
    index = 0
    for example in few_shot:
        for judgement in example.judgements:
            shown = example.token_pair_examples[judgement.example_index].tokens
            messages.append(
                ChatMessage(
                    Role.USER,
                    _head_judge_user_message(index, example.explanation, shown, judgement.pair),
                )
            )
            messages.append(ChatMessage(Role.ASSISTANT, f"{judgement.label}"))
            index += 1
    messages.append(
        ChatMessage(Role.USER, _head_judge_user_message(index, explanation, tokens, pair))
    )
    return tuple(messages)
