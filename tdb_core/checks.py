"""One set of request checks: the same mistake gets the same status code and the same words on
every RPC.

Operations call these before any work starts. Each check names what was wrong and what is
allowed, and quotes at most a short prefix of a user's value (:func:`quote`), so an error message
stays small whatever the request held.

=============================  ===================  ==============================================
mistake                        status               words
=============================  ===================  ==============================================
index outside its axis         OUT_OF_RANGE         ``layer 9 is out of range (allowed: 0..1)``
(layer, head, neuron, latent,                       (:func:`index`)
unit)
position outside a prompt      OUT_OF_RANGE         ``position 50 is out of range for prompt 0,
                                                    which has 7 tokens (allowed: -7..6)``
                                                    (:func:`position`)
token id outside the vocab     OUT_OF_RANGE         ``prompt 0 has token id 99999 outside the
                                                    vocabulary (allowed: 0..1245)``
                                                    (:func:`token_ids`)
top-k out of bounds            INVALID_ARGUMENT     ``top_k must be in 0..1000, got -1``
                                                    (:func:`top_k`)
a number out of its range      INVALID_ARGUMENT     ``ig_steps must be in 0..256, got 300``
                                                    (:func:`in_range`)
an empty list                  INVALID_ARGUMENT     ``no prompts; give at least one``
                                                    (:func:`non_empty`)
a missing field                INVALID_ARGUMENT     ``the prompt is missing; give one``
                                                    (:func:`present`)
an unknown name                NOT_FOUND            ``model 'gpt3' is not loaded; available:
                                                    gpt2`` (:func:`lookup`)
target / distractor rules      INVALID_ARGUMENT     :func:`target_distractor`
a count over a limit           RESOURCE_EXHAUSTED   ``70 prompts is over the server's limit of 64
                                                    per request`` (:func:`at_most`)
tensor data vs its shape       INVALID_ARGUMENT     :func:`tensor_data`
text longer than allowed       RESOURCE_EXHAUSTED   ``prompt 0 has 10485760 bytes of text, over the
                                                    server's limit of 32768 bytes per prompt``
                                                    (:func:`text`)
a list longer than allowed     RESOURCE_EXHAUSTED   ``200000 logit positions is over the server's
                                                    limit of 1024 per request`` (:func:`at_most`)
tensor rank / dimension size   INVALID_ARGUMENT     :func:`tensor_data`
a name too long                INVALID_ARGUMENT     :func:`name_length`
=============================  ===================  ==============================================

Size limits (text bytes before tokenizing, counts of repeated fields, tensor rank and element
counts) are :class:`Limits` fields checked with :func:`at_most` where the request is parsed, before
the work they drive. This module imports no torch, so settings and the CLI can read ``Limits``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TypeVar

from tdb_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
)

T = TypeVar("T")

#: Largest ``top_k`` of any request (next-token top-k, capture top-k, node tables, latents,
#: tokens per node).
MAX_TOP_K = 1000
#: Characters of a user's value that a message quotes.
QUOTE_CHARS = 48
#: Bytes of text allowed per token of ``max_tokens_per_prompt``: text is measured against
#: ``max_tokens_per_prompt * TEXT_BYTES_PER_TOKEN`` before it is tokenized (English runs at about 4
#: bytes per token; 16 leaves room for code, whitespace runs and non-Latin scripts).
TEXT_BYTES_PER_TOKEN = 16
#: Longest text that must be one token (a target or distractor string).
MAX_TOKEN_TEXT_BYTES = 256
#: Longest site name or glob, SAE id, model or node key a request may give.
MAX_NAME_CHARS = 512
#: Largest rank and dimension of a request tensor.
MAX_TENSOR_RANK = 8
MAX_TENSOR_DIM = 2**31 - 1
#: Nodes of one explanation request (records, explain).
MAX_NODES = 256
#: Longest explanation text (UTF-8 bytes) that can be scored or stored.
MAX_EXPLANATION_BYTES = 4096


@dataclass(frozen=True)
class Limits:
    """Per-request limits and per-model admission, enforced before any work starts."""

    max_tokens_per_prompt: int = 1024
    max_prompts: int = 64  # rows of one request (prompts + sources + references)
    max_response_bytes: int = 256 * 2**20
    max_working_bytes: int = 8 * 2**30  # estimated working memory of one pass
    max_queue: int = 64  # requests running or waiting per model; more get UNAVAILABLE
    max_batch_tokens: int = 8192  # micro-batching: padded tokens of one merged pass
    max_pass_rows: int = 4096  # prompt rows over all passes of one request (sweeps, IG steps)
    max_new_tokens: int = 1024  # tokens one Generate request may generate per row
    max_interventions: int = 256  # interventions of one request (over all its sets)
    max_tokenize_texts: int = 1024  # texts of one Tokenize request

    @property
    def max_text_bytes(self) -> int:
        """UTF-8 bytes one prompt's text may have, measured before tokenizing."""
        return self.max_tokens_per_prompt * TEXT_BYTES_PER_TOKEN

    @property
    def max_request_tokens(self) -> int:
        """Token ids one request may hold in all (Detokenize, positions over all prompts)."""
        return self.max_tokens_per_prompt * self.max_prompts


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` as a Python literal, cut to its first ``limit`` characters when longer."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


#: What an index on a site's unit axis is called in messages.
UNIT_NOUNS = {
    "head": "head",
    "kv_head": "kv head",
    "d_mlp": "neuron",
    "latent": "latent",
    "d_model": "channel",
    "d_in": "channel",
    "vocab": "token",
}


def unit_noun(unit_dim: str | None) -> str:
    """``neuron`` for ``d_mlp``, ``head`` for ``head``, ...; ``unit`` for anything else."""
    return UNIT_NOUNS.get(unit_dim or "", "unit")


def index(value: int, count: int, what: str, where: str = "") -> int:
    """An index on an axis of ``count`` entries: a layer, head, neuron, latent or unit.

    ``where`` follows the value in the message (e.g. `` of site 'blocks.0.attn.hook_z'``).
    """
    if not 0 <= value < count:
        allowed = f"0..{count - 1}" if count > 0 else "none"
        raise OutOfRangeError(f"{what} {value}{where} is out of range (allowed: {allowed})")
    return value


def position(value: int, length: int, what: str = "position", row: int = 0) -> int:
    """An absolute position in a prompt of ``length`` tokens; negative ones count from its end."""
    q = value + length if value < 0 else value
    if not 0 <= q < length:
        raise OutOfRangeError(
            f"{what} {value} is out of range for prompt {row}, which has {length} tokens "
            f"(allowed: {-length}..{length - 1})"
        )
    return q


def token_ids(ids: Sequence[int], vocab: int, what: str) -> tuple[int, ...]:
    """Token ids inside a vocabulary of ``vocab`` entries."""
    out = tuple(int(i) for i in ids)
    for i in out:
        if not 0 <= i < vocab:
            raise OutOfRangeError(
                f"{what} has token id {i} outside the vocabulary (allowed: 0..{vocab - 1})"
            )
    return out


def top_k(k: int, lo: int = 0, what: str = "top_k") -> int:
    """A top-k: ``lo`` (0 where zero means none, else 1) to :data:`MAX_TOP_K`."""
    return in_range(k, lo, MAX_TOP_K, what)


def in_range(value: int, lo: int, hi: int, what: str) -> int:
    """A setting that must lie in ``lo..hi`` (inclusive)."""
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"{what} must be in {lo}..{hi}, got {value}")
    return value


def non_empty(items: Sized, what: str, example: str = "") -> None:
    """A list the request must not leave empty; ``example`` shows a valid entry."""
    if len(items) == 0:
        raise InvalidArgumentError(
            f"no {what}; give at least one" + (f", e.g. {example}" if example else "")
        )


def lookup(table: Mapping[str, T], name: str, what: str, where: str) -> T:
    """A named thing (model, SAE, method, dataset); NOT_FOUND names the ones there are.

    ``where`` completes "is not ...": ``loaded``, ``attached to model 'gpt2'``, ...
    """
    found = table.get(name)
    if found is None:
        raise NotFoundError(
            f"{what} {quote(name)} is not {where}; available: {', '.join(table) or 'none'}"
            + did_you_mean(name, table)
        )
    return found


def present(value: object, what: str) -> None:
    """A field the request must set."""
    if value is None:
        raise InvalidArgumentError(f"the {what} is missing; give one")


def at_most(count: int, limit: int, what: str, per: str = "per request", hint: str = "") -> None:
    """A count (prompts, cells, rows, bytes) within a server limit."""
    if count > limit:
        raise ResourceExhaustedError(
            f"{count} {what} is over the server's limit of {limit} {per}"
            + (f"; {hint}" if hint else "")
        )


def target_distractor(
    target: Sequence[int], distractor: Sequence[int], vocab: int, required: bool
) -> None:
    """Target and distractor tokens of a logit difference: both or (unless ``required``) neither,
    each inside the vocabulary."""
    if required and (not target or not distractor):
        raise InvalidArgumentError("give at least one target and one distractor token")
    if bool(target) != bool(distractor):
        raise InvalidArgumentError("give both target and distractor tokens, or neither")
    at_most(len(target), vocab, "target tokens", hint="name each token at most once")
    at_most(len(distractor), vocab, "distractor tokens", hint="name each token at most once")
    token_ids(target, vocab, "target")
    token_ids(distractor, vocab, "distractor")


def targets(target: Sequence[int], vocab: int) -> None:
    """Target tokens of a log-probability: at least one, inside the vocabulary."""
    if not target:
        raise InvalidArgumentError("give at least one target token")
    at_most(len(target), vocab, "target tokens", hint="name each token at most once")
    token_ids(target, vocab, "target")


def tensor_data(shape: Sequence[int], n_bytes: int, itemsize: int, dtype: str, what: str) -> None:
    """A request tensor's shape and its data agree (rank and dimensions within bounds, no negative
    dimension, exact byte count). Checked before anything is allocated."""
    if len(shape) > MAX_TENSOR_RANK:
        raise InvalidArgumentError(
            f"{what} has {len(shape)} dimensions; at most {MAX_TENSOR_RANK} are allowed"
        )
    if any(s < 0 for s in shape):
        raise InvalidArgumentError(f"{what} has a negative dimension in shape {list(shape)}")
    if any(s > MAX_TENSOR_DIM for s in shape):
        raise InvalidArgumentError(
            f"{what} has a dimension over {MAX_TENSOR_DIM} in shape {list(shape)}"
        )
    need = math.prod(shape) * itemsize
    if n_bytes != need:
        raise InvalidArgumentError(
            f"{what} has {n_bytes} bytes of data but shape {list(shape)} of {dtype} needs {need}"
        )


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to a misspelled name, else ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f"; did you mean {quote(close[0])}?" if close else ""


def text(value: str, limit: int, what: str, hint: str = "send a shorter text") -> None:
    """Text within ``limit`` UTF-8 bytes, measured before any tokenizer sees it (a character is at
    least one byte, so a text with more characters than the limit is refused without encoding)."""
    n = len(value)
    if n <= limit // 4:
        return  # even at 4 bytes a character it fits
    if n <= limit:
        n = len(value.encode("utf-8", "surrogatepass"))
        if n <= limit:
            return
        raise ResourceExhaustedError(
            f"{what} has {n} bytes of text, over the server's limit of {limit} bytes; {hint}"
        )
    raise ResourceExhaustedError(
        f"{what} has {n} characters of text, over the server's limit of {limit} bytes; {hint}"
    )


def name_length(value: str, what: str, limit: int = MAX_NAME_CHARS) -> str:
    """A name or pattern (site, glob, SAE id, node key) of at most ``limit`` characters."""
    if len(value) > limit:
        raise InvalidArgumentError(
            f"{what} {quote(value)} is longer than {limit} characters; "
            "names and patterns are short (e.g. 'blocks.*.mlp.hook_post')"
        )
    return value


def count(items: Sized, limit: int, what: str, hint: str = "") -> None:
    """A repeated field of at most ``limit`` entries (checked before the entries are used)."""
    at_most(len(items), limit, what, hint=hint)
