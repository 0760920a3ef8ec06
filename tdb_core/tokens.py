"""The tokenizer facade of one model: prompts to validated token ids, ids to strings, batches.

Every operation turns its prompts into token rows here, so the vocabulary, context and
tokens-per-prompt checks are made the same way for every request, before any pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.plan import Batch


class Tokens:
    """A HF tokenizer with the model's vocabulary size, context length and the server's limits."""

    def __init__(self, tokenizer: Any, vocab: int, n_ctx: int, limits: checks.Limits) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.n_ctx = n_ctx
        self.limits = limits
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self._strings: dict[int, str] = {}

    @property
    def bos_id(self) -> int | None:
        bos = self.tokenizer.bos_token_id
        return None if bos is None else int(bos)

    def encode(
        self, prompt: specs.Prompt, prepend_bos: bool | None = None, what: str = "prompt"
    ) -> tuple[int, ...]:
        """Token ids of one prompt, validated against the vocabulary and the limits."""
        if prompt.token_ids is not None and prompt.text is not None:
            raise InvalidArgumentError(f"{what} has both text and token ids; give one")
        if prompt.token_ids is not None:
            self._check_length(len(prompt.token_ids), what)  # before each id is looked at
            ids = checks.token_ids(prompt.token_ids, self.vocab, what)
        else:
            text = prompt.text or ""
            if text == "":
                raise InvalidArgumentError(f"{what} is empty; give text or token ids")
            checks.text(
                text,
                self.limits.max_text_bytes,
                what,
                f"{checks.TEXT_BYTES_PER_TOKEN} bytes per token of the "
                f"{self.limits.max_tokens_per_prompt}-token limit; send a shorter text",
            )
            ids = tuple(
                self.tokenizer(text, add_special_tokens=prepend_bos is not False)["input_ids"]
            )
        if prepend_bos:
            bos = self.bos_id
            if bos is None:
                raise InvalidArgumentError("this model's tokenizer has no BOS token")
            if not ids or ids[0] != bos:
                ids = (bos, *ids)
        if len(ids) == 0:
            raise InvalidArgumentError(f"{what} has no tokens")
        self._check_length(len(ids), what)
        return ids

    def _check_length(self, n: int, what: str) -> None:
        if n > self.n_ctx:
            raise InvalidArgumentError(
                f"{what} has {n} tokens, longer than the model's context of {self.n_ctx}"
            )
        checks.at_most(
            n, self.limits.max_tokens_per_prompt, f"tokens in {what}", "tokens per prompt"
        )

    def strings(self, ids: Sequence[int]) -> tuple[str, ...]:
        """Each token decoded on its own (leading spaces kept)."""
        out = []
        for i in ids:
            s = self._strings.get(i)
            if s is None:
                s = self.tokenizer.decode([i], clean_up_tokenization_spaces=False)
                self._strings[i] = s
            out.append(s)
        return tuple(out)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (validated against the vocabulary and the request's limit)."""
        checks.at_most(len(ids), self.limits.max_request_tokens, "token ids")
        checks.token_ids(ids, self.vocab, "token_ids")
        return str(self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False))

    def single_token(self, text: str, what: str = "token") -> int:
        """The id of a string that must be exactly one token (e.g. a target ' Mary')."""
        limit = checks.MAX_TOKEN_TEXT_BYTES
        if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
            raise InvalidArgumentError(  # measured before tokenizing: no token is this long
                f"{what} {checks.quote(text)} is longer than any single token (at most {limit} "
                "bytes); use a string that is a single token (often with a leading space) or give "
                "a token id"
            )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [checks.quote(p, 16) for p in self.strings(ids[:8])]
            more = ", ..." if len(ids) > 8 else ""
            raise InvalidArgumentError(
                f"{what} {checks.quote(text)} is {len(ids)} tokens [{', '.join(pieces)}{more}], "
                "not one; use a string that is a single token (often with a leading space) or "
                "give a token id"
            )
        return int(ids[0])

    def make_batch(
        self,
        prompts: Sequence[specs.Prompt],
        sources: Sequence[specs.Prompt] = (),
        references: Sequence[specs.Prompt] = (),
        prepend_bos: bool | None = None,
    ) -> Batch:
        """The token rows of a request: prompts, then patch sources, then references."""
        checks.non_empty(prompts, "prompts")
        checks.at_most(
            len(prompts) + len(sources) + len(references),
            self.limits.max_prompts,
            "prompts (including sources and references)",
        )
        for kind, group in (
            ("prompt", prompts),
            ("source prompt", sources),
            ("reference prompt", references),
        ):
            for i, p in enumerate(group):  # every text measured before any is tokenized
                if p.text is not None and p.token_ids is None:
                    checks.text(p.text, self.limits.max_text_bytes, f"{kind} {i}")
        rows = [self.encode(p, prepend_bos, f"prompt {i}") for i, p in enumerate(prompts)]
        rows += [self.encode(p, prepend_bos, f"source prompt {i}") for i, p in enumerate(sources)]
        rows += [
            self.encode(p, prepend_bos, f"reference prompt {i}") for i, p in enumerate(references)
        ]
        return Batch(tuple(rows), len(prompts), len(sources), len(references))

    def tokenize_texts(
        self, texts: Sequence[str], prepend_bos: bool | None = None
    ) -> list[tuple[int, ...]]:
        """Token ids of many texts (Tokenize): their count and every text's size checked before
        any is tokenized."""
        checks.at_most(len(texts), self.limits.max_tokenize_texts, "texts")
        for i, t in enumerate(texts):
            checks.text(t, self.limits.max_text_bytes, f"text {i}")
        return [
            self.encode(specs.Prompt(text=t), prepend_bos, f"text {i}") for i, t in enumerate(texts)
        ]
