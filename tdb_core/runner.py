"""The model runner: one per loaded model. Owns its device, dtype, tokenizer and a lock.

Requests are stateless (each carries its prompts and specs), so replicas are interchangeable. The
runner validates and plans a request completely before it takes the lock, then runs exactly one
padded forward pass per request with hooks installed, and removes them in ``finally``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tdb_core import specs
from tdb_core.adapter import Adapter
from tdb_core.errors import (InvalidArgumentError, NotFoundError, OutOfRangeError,
                             ResourceExhaustedError)
from tdb_core.hooks import HookContext, HookPlan, ResolvedCapture, Splice, activate
from tdb_core.sae.attach import AttachedSae, attach
from tdb_core.sae.model import SparseAutoencoder
from tdb_core.plan import Batch, Planner, check_response_bytes, resolve_positions
from tdb_core.schema import ModelSchema


@dataclass(frozen=True)
class Limits:
    """Per-request limits, enforced before any work starts."""

    max_tokens_per_prompt: int = 1024
    max_prompts: int = 64
    max_response_bytes: int = 256 * 2**20


@dataclass
class LoadedModel:
    """A HF model with its adapter and tokenizer, on its device."""

    name: str
    source: str
    adapter: Adapter
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype


@dataclass
class RunOutput:
    """What one forward pass produced: logits ``[B, T, vocab]`` and the hook context."""

    logits: torch.Tensor
    ctx: HookContext
    seconds: float


class ModelRunner:
    """Serves one loaded model: tokenization, planning, and hooked forward passes."""

    def __init__(self, loaded: LoadedModel, limits: Limits | None = None) -> None:
        self.loaded = loaded
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        tok = loaded.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self._token_str_cache: dict[int, str] = {}
        self.saes: dict[str, AttachedSae] = {}
        self._schema = loaded.adapter.schema

    # -- SAEs
    def attach_sae(self, sae_id: str, sae: SparseAutoencoder, source: str,
                   site: str | None = None) -> AttachedSae:
        """Attach an SAE (validated against the schema); its latents become sites and nodes."""
        if sae_id in self.saes:
            raise InvalidArgumentError(f"an SAE with id '{sae_id}' is already attached to "
                                       f"model '{self.name}'")
        attached = attach(self.loaded.adapter.schema, sae_id, sae.to(self.device), source, site)
        with self._lock:
            self.saes[sae_id] = attached
            self._schema = self._schema.with_kinds(attached.kinds)
        return attached

    def get_sae(self, sae_id: str) -> AttachedSae:
        sae = self.saes.get(sae_id)
        if sae is None:
            attached = ", ".join(self.saes) or "none"
            raise NotFoundError(f"SAE '{sae_id}' is not attached to model '{self.name}' "
                                f"(attached: {attached})")
        return sae

    # -- properties
    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def adapter(self) -> Adapter:
        return self.loaded.adapter

    @property
    def schema(self) -> ModelSchema:
        """The adapter's schema plus the sites of attached SAEs."""
        return self._schema

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    # -- tokens
    def encode(self, prompt: specs.Prompt, prepend_bos: bool | None = None,
               what: str = "prompt") -> tuple[int, ...]:
        """Token ids of one prompt, validated against the vocabulary and the limits."""
        vocab = self.schema.dims.d_vocab
        if prompt.token_ids is not None and prompt.text is not None:
            raise InvalidArgumentError(f"{what} has both text and token ids; give one")
        if prompt.token_ids is not None:
            ids = tuple(int(i) for i in prompt.token_ids)
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise OutOfRangeError(
                    f"{what} has token id {bad[0]} outside the vocabulary (allowed: 0..{vocab - 1})")
        else:
            text = prompt.text or ""
            if text == "":
                raise InvalidArgumentError(f"{what} is empty; give text or token ids")
            tok = self.loaded.tokenizer
            ids = tuple(tok(text, add_special_tokens=prepend_bos is not False)["input_ids"])
        if prepend_bos:
            bos = self.loaded.tokenizer.bos_token_id
            if bos is None:
                raise InvalidArgumentError("this model's tokenizer has no BOS token")
            if not ids or ids[0] != bos:
                ids = (bos, *ids)
        if len(ids) == 0:
            raise InvalidArgumentError(f"{what} has no tokens")
        n_ctx = self.schema.dims.n_ctx
        if len(ids) > n_ctx:
            raise InvalidArgumentError(
                f"{what} has {len(ids)} tokens, longer than the model's context of {n_ctx}")
        if len(ids) > self.limits.max_tokens_per_prompt:
            raise ResourceExhaustedError(
                f"{what} has {len(ids)} tokens, over the server's limit of "
                f"{self.limits.max_tokens_per_prompt} tokens per prompt")
        return ids

    def token_strings(self, ids: Sequence[int]) -> tuple[str, ...]:
        """Each token decoded on its own (leading spaces kept)."""
        out = []
        tok = self.loaded.tokenizer
        for i in ids:
            s = self._token_str_cache.get(i)
            if s is None:
                s = tok.decode([i], clean_up_tokenization_spaces=False)
                self._token_str_cache[i] = s
            out.append(s)
        return tuple(out)

    def single_token(self, text: str, what: str = "token") -> int:
        """The id of a string that must be exactly one token (e.g. a target ' Mary')."""
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = self.token_strings(ids)
            raise InvalidArgumentError(
                f"{what} {text!r} is {len(ids)} tokens {list(pieces)}, not one; use a string that "
                "is a single token (often with a leading space) or give a token id")
        return int(ids[0])

    def make_batch(self, prompts: Sequence[specs.Prompt], sources: Sequence[specs.Prompt] = (),
                   references: Sequence[specs.Prompt] = (),
                   prepend_bos: bool | None = None) -> Batch:
        if len(prompts) == 0:
            raise InvalidArgumentError("no prompts; give at least one")
        n_rows = len(prompts) + len(sources) + len(references)
        if n_rows > self.limits.max_prompts:
            raise ResourceExhaustedError(
                f"{n_rows} prompts (including sources and references) is over the server's limit "
                f"of {self.limits.max_prompts} per request")
        rows = [self.encode(p, prepend_bos, f"prompt {i}") for i, p in enumerate(prompts)]
        rows += [self.encode(p, prepend_bos, f"source prompt {i}") for i, p in enumerate(sources)]
        rows += [self.encode(p, prepend_bos, f"reference prompt {i}") for i, p in enumerate(references)]
        return Batch(tuple(rows), len(prompts), len(sources), len(references))

    def planner(self, batch: Batch) -> Planner:
        return Planner(self.schema, batch, self.device, self.dtype)

    # -- running
    @contextmanager
    def _hooks(self, ctx: HookContext) -> Iterator[None]:
        handles = self.adapter.install(ctx)
        try:
            with activate(ctx):
                yield
        finally:
            for h in handles:
                h.remove()

    def run(self, batch: Batch, plan: HookPlan, grad: bool = False) -> RunOutput:
        """One padded forward pass over the batch with the plan's hooks.

        Right padding keeps every real position identical to running the prompt alone (causal
        attention never looks right). With ``grad``, the pass builds a graph from the embeddings so
        ``torch.autograd.grad`` can differentiate with respect to the plan's ``grad_sites``.
        """
        lengths = batch.lengths
        T = batch.max_len
        ids = torch.full((len(lengths), T), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(lengths), T), dtype=torch.long)
        for i, row in enumerate(batch.rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if grad:
            plan.grad_sites.add("hook_embed")
        wanted = plan.sites()
        for att in self.saes.values():
            if wanted.intersection(att.site_names):
                plan.splices[att.site.name] = _chain(plan.splices.get(att.site.name), att.splice())
        ctx = HookContext(plan, torch.tensor(lengths, device=self.device))
        start = time.perf_counter()
        with self._lock, self._hooks(ctx), torch.set_grad_enabled(grad):
            out = self.adapter.model(input_ids=ids, attention_mask=mask, use_cache=False)
        return RunOutput(out.logits, ctx, time.perf_counter() - start)

    # -- Forward
    def forward(self, spec: specs.ForwardSpec) -> specs.ForwardResult:
        """Run prompts with captures (and interventions); see :class:`~tdb_core.specs.ForwardSpec`."""
        if spec.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0, got {spec.top_k}")
        batch = self.make_batch(spec.prompts, spec.sources, spec.references, spec.prepend_bos)
        planner = self.planner(batch)
        captures = [c for cap in spec.captures for c in planner.add_capture(cap)]
        for iv in spec.interventions:
            planner.add_intervention(iv, range(batch.n_prompts))
        prompt_lengths = batch.lengths[: batch.n_prompts]
        logit_pos = resolve_positions(spec.logit_positions, prompt_lengths, "logit position")
        top_k = min(spec.top_k, self.schema.dims.d_vocab)
        check_response_bytes(planner.capture_bytes() + 16 * top_k * len(logit_pos[0]) * batch.n_prompts,
                             self.limits.max_response_bytes)

        out = self.run(batch, planner.plan)
        rows = torch.arange(batch.n_prompts, device=out.logits.device)[:, None]
        at = out.logits[rows, torch.tensor(logit_pos, device=out.logits.device)].float()  # [B, P, V]
        return specs.ForwardResult(
            prompts=tuple(specs.PromptTokens(r, self.token_strings(r))
                          for r in batch.rows[: batch.n_prompts]),
            captures=tuple(capture_result(c) for c in captures),
            top_logits=self.top_logits(at, logit_pos, top_k),
            logits_at=at.cpu(),
        )

    def top_logits(self, at: torch.Tensor, positions: list[list[int]],
                   k: int) -> tuple[tuple[specs.TopLogits, ...], ...]:
        """Top-k next tokens per prompt and position from logits ``[B, P, vocab]``."""
        if k == 0:
            return tuple(() for _ in positions)
        probs = at.softmax(-1)
        vals, idx = at.topk(k, dim=-1)  # [B, P, k]
        p = probs.gather(-1, idx)
        vals, idx, p = vals.cpu(), idx.cpu(), p.cpu()
        return tuple(
            tuple(specs.TopLogits(position=positions[b][j],
                                  token_ids=tuple(idx[b, j].tolist()),
                                  tokens=self.token_strings(idx[b, j].tolist()),
                                  logits=tuple(vals[b, j].tolist()),
                                  probs=tuple(p[b, j].tolist()))
                  for j in range(len(positions[b])))
            for b in range(len(positions)))


def capture_result(c: ResolvedCapture) -> specs.CaptureResult:
    """The domain result of a capture that a forward pass filled in."""
    index = c.index
    if index.pos is not None:
        positions = index.pos.cpu()
    else:
        T = c.values.shape[1 + c.site.kind.dims.index(c.site.kind.pos_dim)]
        positions = torch.arange(T).expand(c.n_rows, T).contiguous()
    dims = list(c.site.kind.dims)
    if c.top_k is not None:
        dims[-1] = "top_k"
    return specs.CaptureResult(site=c.site.name, dims=tuple(dims), values=c.values,
                               indices=c.indices, positions=positions, units=c.units_list)


def _chain(first: Splice | None, second: Splice) -> Splice:
    """Two splices at one site, applied in attach order."""
    if first is None:
        return second
    return lambda ctx, x: second(ctx, first(ctx, x))
