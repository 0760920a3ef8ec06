"""Language-model backends for explaining and simulating: OpenAI-compatible servers and local HF models.

A backend does three things (:class:`LLMBackend`):

* ``generate(messages, ...)`` — sample completions of a chat prompt (explanations, logprob-free
  simulation, hard 0/1 head judgements);
* ``slot_logprobs(prompt, candidates)`` — for each ``unknown`` slot of a :class:`SlottedPrompt`,
  the log-probabilities of the candidate value strings ("0".."10") as the next token there: the
  all-at-once simulation of the original method;
* ``next_token_logprobs(messages, candidates)`` — log-probabilities of candidate strings as the
  first answer token (TDB's head judge reads "0" and "1").

:class:`OpenAICompatibleBackend` talks to any server speaking OpenAI's wire format (OpenAI, vLLM,
llama.cpp) through the ``openai`` SDK. Slot logprobs use ``/v1/completions`` with ``echo=True,
logprobs=15`` and read ``top_logprobs`` at the token that starts each slot (located by
``text_offset``); a server that answers without logprobs, has no completions route, or whose
tokenizer starts no token at any slot (some merge the tab with the following word) raises
:class:`LogprobsUnavailableError` (a FailedPreconditionError) so callers can fall back or fail
loudly; a slot that alone is unreadable comes back as None. Unreachable servers raise UnavailableError; rejected requests FailedPreconditionError.

:class:`HFLocalBackend` runs a transformers causal LM in process. Slot logprobs come straight from
the model's logits: the prompt is encoded piece by piece (text between slots, then "unknown"), so
each slot's position is known exactly and the distribution is the log-softmax of the logits one
position earlier. Only candidates that are a single token of the tokenizer are scored — the same
restriction as reading a server's top-k token logprobs.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from tdb_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from tdb_core.explain.formatting import UNKNOWN_ACTIVATION_STRING
from tdb_core.explain.prompts import (
    ChatMessage,
    SlottedPrompt,
    render_text,
    slot_offsets,
    slotted_text,
)


class LogprobsUnavailableError(FailedPreconditionError):
    """The backend cannot return the token log-probabilities a logprob-based step needs."""


@runtime_checkable
class LLMBackend(Protocol):
    """What explainers, simulators and judges need from a language model."""

    @property
    def name(self) -> str:
        """A short description of the backend and model, recorded with every explanation."""
        ...

    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[str]:
        """``n`` sampled completions of the prompt (temperature 0 means greedy)."""
        ...

    def slot_logprobs(
        self, prompt: SlottedPrompt, candidates: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """Per slot, log-probabilities of the candidates readable there; None for an unreadable slot."""
        ...

    def next_token_logprobs(
        self, messages: Sequence[ChatMessage], candidates: Sequence[str]
    ) -> dict[str, float]:
        """Log-probabilities of the candidates (those readable) as the answer's first token."""
        ...


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible servers


class OpenAICompatibleBackend:
    """A model behind an OpenAI-compatible HTTP API (OpenAI, vLLM, llama.cpp server, ...).

    ``base_url`` includes the version prefix (``http://localhost:8000/v1``). ``api_key`` defaults
    to ``$OPENAI_API_KEY`` and then to a placeholder (local servers ignore it). ``chat=True`` sends
    explanation and logprob-free prompts to ``/chat/completions``; ``chat=False`` renders them as
    text for ``/completions`` (base models). Slot logprobs always use ``/completions``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        chat: bool = True,
        max_retries: int = 2,
        top_logprobs: int = 15,
    ) -> None:
        import openai  # imported here so the rest of the package works without the SDK

        if not base_url.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"base_url {base_url!r} is not an http(s) URL; give e.g. http://localhost:8000/v1"
            )
        if not model:
            raise InvalidArgumentError("no model name given for the OpenAI-compatible endpoint")
        if timeout <= 0:
            raise InvalidArgumentError(f"timeout is {timeout}; it must be > 0 seconds")
        if not 1 <= top_logprobs <= 20:
            raise InvalidArgumentError(f"top_logprobs is {top_logprobs}; servers allow 1..20")
        self._openai = openai
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._timeout = timeout
        self._chat = chat
        self._top_logprobs = top_logprobs
        self._client = openai.OpenAI(
            base_url=self._base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def name(self) -> str:
        """``openai-compatible:{model}@{base_url}``."""
        return f"openai-compatible:{self._model}@{self._base_url}"

    @contextlib.contextmanager
    def _translated_errors(self, what: str, *, logprob_step: bool = False) -> Iterator[None]:
        """Turn SDK exceptions into domain errors whose messages say what to fix."""
        openai = self._openai
        where = f"the OpenAI-compatible endpoint at {self._base_url}"
        try:
            yield
        except openai.APITimeoutError:
            raise UnavailableError(
                f"{where} did not answer {what} within {self._timeout}s; it may be overloaded "
                "(retry) or the timeout too short"
            ) from None
        except openai.APIConnectionError as exc:
            raise UnavailableError(
                f"cannot reach {where} ({exc.__cause__ or exc}); check the base URL "
                "(e.g. http://host:8000/v1) and that the server is running"
            ) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise FailedPreconditionError(
                f"{where} rejected the credentials for {what} ({exc.status_code}): set a valid API key"
            ) from None
        except openai.RateLimitError:
            raise UnavailableError(f"{where} rate-limited {what}; retry later") from None
        except openai.NotFoundError as exc:
            cls = LogprobsUnavailableError if logprob_step else FailedPreconditionError
            raise cls(
                f"{where} answered 404 to {what} ({_error_text(exc)}); check the model name "
                f"{self._model!r} and that the server offers this route"
            ) from None
        except openai.APIStatusError as exc:
            text = _error_text(exc)
            if exc.status_code >= 500:
                raise UnavailableError(
                    f"{where} failed on {what} ({exc.status_code}: {text})"
                ) from None
            if logprob_step and any(word in text.lower() for word in ("logprob", "echo")):
                raise LogprobsUnavailableError(
                    f"{where} refused the logprob request for {what} ({exc.status_code}: {text})"
                ) from None
            raise FailedPreconditionError(
                f"{where} rejected {what} ({exc.status_code}: {text})"
            ) from None
        except openai.APIResponseValidationError as exc:
            raise FailedPreconditionError(
                f"{where} answered {what} with a response that is not OpenAI's format ({exc})"
            ) from None

    @staticmethod
    def _messages_json(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        return [{"role": m.role.value, "content": m.content} for m in messages]

    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[str]:
        """``n`` completions, one request each (some servers do not support ``n`` > 1)."""
        _check_generation_args(max_tokens, temperature, top_p, n)
        outputs = []
        for i in range(n):
            extra: dict[str, Any] = {} if seed is None else {"seed": seed + i}
            if self._chat:
                with self._translated_errors("a chat completion"):
                    response = self._client.chat.completions.create(
                        model=self._model,
                        messages=self._messages_json(messages),  # type: ignore[arg-type]
                        max_tokens=max_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        **extra,
                    )
                text = response.choices[0].message.content if response.choices else None
            else:
                with self._translated_errors("a completion"):
                    completion = self._client.completions.create(
                        model=self._model,
                        prompt=render_text(messages),
                        max_tokens=max_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        **extra,
                    )
                text = completion.choices[0].text if completion.choices else None
            if text is None:
                raise FailedPreconditionError(
                    f"the OpenAI-compatible endpoint at {self._base_url} returned no text for a completion"
                )
            outputs.append(text)
        return outputs

    def slot_logprobs(
        self, prompt: SlottedPrompt, candidates: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """Echoed prompt logprobs from ``/completions``: the top-k alternatives at each slot's token."""
        text = slotted_text(prompt)
        with self._translated_errors("a prompt-logprob (echo) completion", logprob_step=True):
            response = self._client.completions.create(
                model=self._model,
                prompt=text,
                max_tokens=1,
                temperature=0.0,
                echo=True,
                logprobs=self._top_logprobs,
            )
        no_logprobs = (
            f"the OpenAI-compatible endpoint at {self._base_url} returned no prompt logprobs for "
            f"model {self._model!r}; all-at-once simulation needs /v1/completions with echo=True "
            "and logprobs (use a server that returns them, e.g. vLLM, or the logprob-free simulator)"
        )
        if not response.choices or response.choices[0].logprobs is None:
            raise LogprobsUnavailableError(no_logprobs)
        lp = response.choices[0].logprobs
        top, offsets = lp.top_logprobs, lp.text_offset
        if not top or offsets is None or not any(top) or len(offsets) != len(top):
            raise LogprobsUnavailableError(no_logprobs)
        wanted = slot_offsets(prompt)
        if max(offsets) < wanted[-1]:
            raise LogprobsUnavailableError(
                f"the OpenAI-compatible endpoint at {self._base_url} did not echo the whole prompt's "
                f"logprobs (last offset {max(offsets)}, last slot at {wanted[-1]}); it must honour echo=True"
            )
        index_at: dict[int, int] = {}
        for i, offset in enumerate(offsets):
            index_at.setdefault(int(offset), i)
        result: list[dict[str, float] | None] = []
        for offset in wanted:
            at = index_at.get(offset)
            alternatives = top[at] if at is not None else None
            if not alternatives:  # the slot does not start a token (merged with the tab) or no data
                result.append(None)
                continue
            result.append({c: float(alternatives[c]) for c in candidates if c in alternatives})
        if all(slot is None for slot in result):
            raise LogprobsUnavailableError(
                f"the tokenizer of model {self._model!r} at {self._base_url} starts no token at any "
                "value slot (it merges the tab with the following 'unknown'), so the slot "
                "distributions cannot be read; use the logprob-free simulator, or the same model "
                "through the local HF backend"
            )
        return result

    def next_token_logprobs(
        self, messages: Sequence[ChatMessage], candidates: Sequence[str]
    ) -> dict[str, float]:
        """Top-k logprobs of the first generated token (chat ``logprobs``/``top_logprobs``)."""
        missing = (
            f"the OpenAI-compatible endpoint at {self._base_url} returned no logprobs for model "
            f"{self._model!r}; the head judge then falls back to a hard 0/1 answer (or fails if so "
            "configured)"
        )
        if self._chat:
            with self._translated_errors("a chat completion with logprobs", logprob_step=True):
                response = self._client.chat.completions.create(
                    model=self._model,
                    messages=self._messages_json(messages),  # type: ignore[arg-type]
                    max_tokens=1,
                    temperature=0.0,
                    logprobs=True,
                    top_logprobs=self._top_logprobs,
                )
            choice = response.choices[0] if response.choices else None
            if choice is None or choice.logprobs is None or not choice.logprobs.content:
                raise LogprobsUnavailableError(missing)
            alternatives = {t.token: t.logprob for t in choice.logprobs.content[0].top_logprobs}
        else:
            with self._translated_errors("a completion with logprobs", logprob_step=True):
                completion = self._client.completions.create(
                    model=self._model,
                    prompt=render_text(messages),
                    max_tokens=1,
                    temperature=0.0,
                    logprobs=self._top_logprobs,
                )
            text_choice = completion.choices[0] if completion.choices else None
            if (
                text_choice is None
                or text_choice.logprobs is None
                or not text_choice.logprobs.top_logprobs
            ):
                raise LogprobsUnavailableError(missing)
            alternatives = text_choice.logprobs.top_logprobs[0] or {}
        if not alternatives:
            raise LogprobsUnavailableError(missing)
        return {c: float(alternatives[c]) for c in candidates if c in alternatives}


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(exc, "message", exc))


def _check_generation_args(max_tokens: int, temperature: float, top_p: float, n: int) -> None:
    if max_tokens < 1:
        raise InvalidArgumentError(f"max_tokens is {max_tokens}; it must be >= 1")
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgumentError(f"temperature is {temperature}; it must be in [0, 2]")
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgumentError(f"top_p is {top_p}; it must be in (0, 1]")
    if n < 1:
        raise InvalidArgumentError(f"n is {n}; at least one sample is needed")


# ------------------------------------------------------------------------------------------------
# Local Hugging Face causal LMs


class HFLocalBackend:
    """A transformers causal LM run in this process.

    ``model_or_path`` is a local directory or hub id (loaded with ``AutoModelForCausalLM`` and
    ``AutoTokenizer``), or an already-loaded model, in which case ``tokenizer`` is required.
    Chat prompts are rendered with the tokenizer's chat template when it has one
    (``use_chat_template=None`` decides automatically), else by concatenating message contents.
    All-at-once simulation prompts are always plain text, as in the original method.

    A loaded model is moved to ``device`` in place and put in eval mode. Calls are not meant to run
    concurrently on one backend (seeded sampling forks the global RNG); serialize them, e.g. on
    the model runner's queue.
    """

    def __init__(
        self,
        model_or_path: Any,
        device: str | torch.device = "cpu",
        *,
        tokenizer: Any = None,
        dtype: torch.dtype | None = None,
        use_chat_template: bool | None = None,
        name: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model_or_path, str | os.PathLike):
            source = os.fspath(model_or_path)
            try:
                model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
                tokenizer = (
                    tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(source)
                )
            except (OSError, ValueError) as exc:
                raise NotFoundError(
                    f"cannot load a causal LM and tokenizer from {source!r} ({exc}); give a local "
                    "directory with config.json, weights and tokenizer files, or a hub id where the "
                    "machine has network"
                ) from None
            default_name = f"hf:{source}"
        else:
            if tokenizer is None:
                raise InvalidArgumentError(
                    "a loaded model was given without its tokenizer; pass tokenizer="
                )
            model = model_or_path
            default_name = (
                f"hf:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"
            )
        self._device = torch.device(device)
        torch.nn.Module.to(model, self._device)
        torch.nn.Module.eval(model)
        self._model = model
        self._tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self._use_chat_template = has_template if use_chat_template is None else use_chat_template
        if self._use_chat_template and not has_template:
            raise InvalidArgumentError(
                "use_chat_template=True but the tokenizer has no chat template"
            )
        self._name = name or default_name
        config = model.config
        self._context = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", None
        )
        self._single_token_cache: dict[tuple[str, ...], dict[str, int]] = {}

    @property
    def name(self) -> str:
        """``hf:{path or model name}`` unless a name was given."""
        return self._name

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _render(self, messages: Sequence[ChatMessage]) -> str:
        if not self._use_chat_template:
            return render_text(messages)
        as_dicts = [{"role": m.role.value, "content": m.content} for m in messages]
        return str(
            self._tokenizer.apply_chat_template(
                as_dicts, tokenize=False, add_generation_prompt=True
            )
        )

    def _check_length(self, n_tokens: int, what: str) -> None:
        if self._context is not None and n_tokens > self._context:
            raise ResourceExhaustedError(
                f"{what} needs {n_tokens} tokens but the model's context is {self._context}; "
                "use fewer or shorter records"
            )

    def _single_token_ids(self, candidates: Sequence[str]) -> dict[str, int]:
        key = tuple(candidates)
        if key not in self._single_token_cache:
            found = {}
            for c in candidates:
                ids = self._encode(c)
                if len(ids) == 1:
                    found[c] = ids[0]
            if not found:
                raise FailedPreconditionError(
                    f"none of {list(candidates)} is a single token of {self._name}'s tokenizer, so "
                    "their probabilities cannot be read from the logits; use the logprob-free simulator"
                )
            self._single_token_cache[key] = found
        return self._single_token_cache[key]

    @torch.no_grad()
    def _logits(self, ids: list[int]) -> torch.Tensor:
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)  # [1, T]
        logits: torch.Tensor = self._model(input_ids=input_ids).logits[0].float()  # [T, vocab]
        return logits

    @torch.no_grad()
    def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        n: int = 1,
        seed: int | None = None,
    ) -> list[str]:
        """Sampled (or greedy at temperature 0) continuations, decoded without special tokens."""
        _check_generation_args(max_tokens, temperature, top_p, n)
        ids = self._encode(self._render(messages))
        if not ids:
            raise InvalidArgumentError("the prompt encodes to no tokens")
        self._check_length(len(ids) + max_tokens, "the prompt plus the completion")
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)  # [1, T]
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        pad: int | None = self._tokenizer.pad_token_id
        if pad is None:
            pad = self._tokenizer.eos_token_id if self._tokenizer.eos_token_id is not None else 0
        devices = [self._device] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            output = self._model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                pad_token_id=pad,
                **sampling,
            )  # [n, T + new]
        return [
            self._tokenizer.decode(row[len(ids) :].tolist(), skip_special_tokens=True)
            for row in output
        ]

    def slot_logprobs(
        self, prompt: SlottedPrompt, candidates: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """Log-softmax of the logits just before each slot, at the candidates' token ids."""
        candidate_ids = self._single_token_ids(candidates)
        unknown_ids = self._encode(UNKNOWN_ACTIVATION_STRING)
        ids: list[int] = []
        slot_positions: list[int] = []
        for j, segment in enumerate(prompt.segments):
            ids += self._encode(segment)
            if j < len(prompt.segments) - 1:
                slot_positions.append(len(ids))  # the slot's first token goes here
                ids += unknown_ids
        self._check_length(len(ids), "the simulation prompt")
        logits = self._logits(ids)  # [T, vocab]
        readable = [p for p in slot_positions if p > 0]
        index = torch.tensor(
            [p - 1 for p in readable], dtype=torch.long, device=logits.device
        )  # [S]
        logprobs = torch.log_softmax(logits[index], dim=-1)  # [S, vocab]
        cand_index = torch.tensor(
            list(candidate_ids.values()), dtype=torch.long, device=logits.device
        )
        values = logprobs[:, cand_index].cpu().tolist()  # [S][C]
        by_position = {p: dict(zip(candidate_ids, row)) for p, row in zip(readable, values)}
        return [by_position.get(p) for p in slot_positions]

    def next_token_logprobs(
        self, messages: Sequence[ChatMessage], candidates: Sequence[str]
    ) -> dict[str, float]:
        """Log-softmax of the last position's logits at the candidates' token ids."""
        candidate_ids = self._single_token_ids(candidates)
        ids = self._encode(self._render(messages))
        if not ids:
            raise InvalidArgumentError("the prompt encodes to no tokens")
        self._check_length(len(ids), "the judge prompt")
        logprobs = torch.log_softmax(self._logits(ids)[-1], dim=-1)  # [vocab]
        return {
            c: float(logprobs[i])
            for c, i in candidate_ids.items()
            if math.isfinite(float(logprobs[i]))
        }
