"""The model runner: one per loaded model. Owns its device, dtype, tokenizer, a lock and a queue.

Requests are stateless (each carries its prompts and specs), so replicas are interchangeable. The
runner validates and plans a request completely, then admits it (estimated working memory within
the budget, room in the bounded queue), then runs padded forward passes with hooks installed one at
a time, removing them in ``finally``. Concurrent plain reads are merged into one batch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tdb_core import cancel, specs
from tdb_core.adapter import Adapter
from tdb_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    ResourceExhaustedError,
    UnavailableError,
)
from tdb_core.hooks import HookContext, HookPlan, ResolvedCapture, Splice, activate
from tdb_core.plan import Batch, Planner, check_response_bytes, resolve_positions
from tdb_core.sae.attach import AttachedSae, attach
from tdb_core.sae.model import SparseAutoencoder
from tdb_core.schema import ModelSchema


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
class _Prepared:
    """A validated, planned Forward: its batch, planner, captures per spec, logit positions."""

    batch: Batch
    planner: Planner
    groups: list[list[ResolvedCapture]]
    logit_pos: list[list[int]]
    top_k: int


@dataclass(eq=False)
class _Pending:
    """A Forward waiting to be merged into a batch."""

    spec: specs.ForwardSpec
    prep: _Prepared
    done: threading.Event = field(default_factory=threading.Event)
    result: specs.ForwardResult | None = None
    error: BaseException | None = None


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
        self._state = threading.Lock()  # guards _admitted and _pending
        self._admitted = 0
        self._pending: list[_Pending] = []
        self.stats = {"passes": 0, "merged_passes": 0, "merged_requests": 0}

    # -- SAEs
    def attach_sae(
        self, sae_id: str, sae: SparseAutoencoder, source: str, site: str | None = None
    ) -> AttachedSae:
        """Attach an SAE (validated against the schema); its latents become sites and nodes."""
        if sae_id in self.saes:
            raise InvalidArgumentError(
                f"an SAE with id '{sae_id}' is already attached to model '{self.name}'"
            )
        attached = attach(self.loaded.adapter.schema, sae_id, sae.to(self.device), source, site)
        with self._lock:
            self.saes[sae_id] = attached
            self._schema = self._schema.with_kinds(attached.kinds)
        return attached

    def get_sae(self, sae_id: str) -> AttachedSae:
        sae = self.saes.get(sae_id)
        if sae is None:
            attached = ", ".join(self.saes) or "none"
            raise NotFoundError(
                f"SAE '{sae_id}' is not attached to model '{self.name}' (attached: {attached})"
            )
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
    def encode(
        self, prompt: specs.Prompt, prepend_bos: bool | None = None, what: str = "prompt"
    ) -> tuple[int, ...]:
        """Token ids of one prompt, validated against the vocabulary and the limits."""
        vocab = self.schema.dims.d_vocab
        if prompt.token_ids is not None and prompt.text is not None:
            raise InvalidArgumentError(f"{what} has both text and token ids; give one")
        if prompt.token_ids is not None:
            ids = tuple(int(i) for i in prompt.token_ids)
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise OutOfRangeError(
                    f"{what} has token id {bad[0]} outside the vocabulary (allowed: 0..{vocab - 1})"
                )
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
                f"{what} has {len(ids)} tokens, longer than the model's context of {n_ctx}"
            )
        if len(ids) > self.limits.max_tokens_per_prompt:
            raise ResourceExhaustedError(
                f"{what} has {len(ids)} tokens, over the server's limit of "
                f"{self.limits.max_tokens_per_prompt} tokens per prompt"
            )
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
                "is a single token (often with a leading space) or give a token id"
            )
        return int(ids[0])

    def make_batch(
        self,
        prompts: Sequence[specs.Prompt],
        sources: Sequence[specs.Prompt] = (),
        references: Sequence[specs.Prompt] = (),
        prepend_bos: bool | None = None,
    ) -> Batch:
        if len(prompts) == 0:
            raise InvalidArgumentError("no prompts; give at least one")
        n_rows = len(prompts) + len(sources) + len(references)
        if n_rows > self.limits.max_prompts:
            raise ResourceExhaustedError(
                f"{n_rows} prompts (including sources and references) is over the server's limit "
                f"of {self.limits.max_prompts} per request"
            )
        rows = [self.encode(p, prepend_bos, f"prompt {i}") for i, p in enumerate(prompts)]
        rows += [self.encode(p, prepend_bos, f"source prompt {i}") for i, p in enumerate(sources)]
        rows += [
            self.encode(p, prepend_bos, f"reference prompt {i}") for i, p in enumerate(references)
        ]
        return Batch(tuple(rows), len(prompts), len(sources), len(references))

    def planner(self, batch: Batch) -> Planner:
        return Planner(self.schema, batch, self.device, self.dtype)

    # -- admission and execution
    @property
    def queue_depth(self) -> int:
        """Requests admitted to this model: running or waiting."""
        return self._admitted

    def working_bytes(self, batch: Batch, plan: HookPlan, grad: bool) -> int:
        """Estimated peak working memory of one pass: activations (all layers when a graph is
        kept for gradients), logits and captures."""
        d = self.schema.dims
        B, T = len(batch.rows), batch.max_len
        item = torch.empty((), dtype=self.dtype).element_size()
        per_token_layer = (12 * d.d_model + 3 * d.d_mlp + 3 * d.n_heads * T) * item
        layers = d.n_layers * 2 if grad else 2
        total = B * T * per_token_layer * layers
        total += B * T * d.d_vocab * 4 * (2 if grad else 1)
        for caps in plan.captures.values():
            for c in caps:
                total += c.n_rows * math.prod(self.schema.shape(c.site, T)) * 4
        return total

    def _admit(self, batch: Batch, plan: HookPlan, grad: bool) -> None:
        need = self.working_bytes(batch, plan, grad)
        if need > self.limits.max_working_bytes:
            raise ResourceExhaustedError(
                f"this request needs an estimated {need / 2**20:.0f} MiB of working memory "
                f"({len(batch.rows)} prompts x {batch.max_len} tokens, "
                f"{sum(len(c) for c in plan.captures.values())} captures"
                f"{', gradients' if grad else ''}), over the server's budget of "
                f"{self.limits.max_working_bytes / 2**20:.0f} MiB; send fewer or shorter prompts "
                "or capture less"
            )
        with self._state:
            if self._admitted >= self.limits.max_queue:
                raise UnavailableError(
                    f"model '{self.name}' is busy ({self._admitted} requests running or queued, "
                    f"the limit is {self.limits.max_queue}); retry later"
                )
            self._admitted += 1

    def _leave(self) -> None:
        with self._state:
            self._admitted -= 1

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The execution lock, waited for while honouring the request's cancellation."""
        while not self._lock.acquire(timeout=0.02):
            cancel.check()
        try:
            yield
        finally:
            self._lock.release()

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
        Admission (memory estimate, queue bound) happens before any work; while waiting for the
        model and at every layer, the request's cancellation is checked.
        """
        self._admit(batch, plan, grad)
        try:
            with self._exclusive():
                return self._run_locked(batch, plan, grad)
        finally:
            self._leave()

    def _run_locked(self, batch: Batch, plan: HookPlan, grad: bool) -> RunOutput:
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
        start = time.perf_counter()
        while True:
            ctx = HookContext(
                plan, torch.tensor(lengths, device=self.device), check=cancel.current()
            )
            self.stats["passes"] += 1
            with self._hooks(ctx), torch.set_grad_enabled(grad):
                out = self.adapter.model(input_ids=ids, attention_mask=mask, use_cache=False)
            if plan.captures_intact():
                return RunOutput(out.logits, ctx, time.perf_counter() - start)
            # the model wrote in place to an activation captured without a copy: run again, copying
            plan.clone_captures = True
            plan.reset_captures()

    # -- Forward
    def forward(self, spec: specs.ForwardSpec) -> specs.ForwardResult:
        """Run prompts with captures (and interventions); see :class:`~tdb_core.specs.ForwardSpec`.

        Concurrent plain reads (no interventions) of this model that arrive while it is busy are
        merged into one padded batch (micro-batching); each gets exactly its own result.
        """
        prep = self._prepare(spec)
        if not self._batchable(spec):
            return self._finish(prep, self.run(prep.batch, prep.planner.plan))
        return self._forward_batched(_Pending(spec, prep))

    def _prepare(self, spec: specs.ForwardSpec) -> _Prepared:
        """Validate and plan a Forward completely (every error is raised here, before work)."""
        if spec.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0, got {spec.top_k}")
        batch = self.make_batch(spec.prompts, spec.sources, spec.references, spec.prepend_bos)
        planner = self.planner(batch)
        groups = [planner.add_capture(cap) for cap in spec.captures]
        for iv in spec.interventions:
            planner.add_intervention(iv, range(batch.n_prompts))
        prompt_lengths = batch.lengths[: batch.n_prompts]
        logit_pos = resolve_positions(spec.logit_positions, prompt_lengths, "logit position")
        top_k = min(spec.top_k, self.schema.dims.d_vocab)
        check_response_bytes(
            planner.capture_bytes() + 16 * top_k * len(logit_pos[0]) * batch.n_prompts,
            self.limits.max_response_bytes,
        )
        return _Prepared(batch, planner, groups, logit_pos, top_k)

    def _finish(self, prep: _Prepared, out: RunOutput) -> specs.ForwardResult:
        batch = prep.batch
        rows = torch.arange(batch.n_prompts, device=out.logits.device)[:, None]
        at = out.logits[
            rows, torch.tensor(prep.logit_pos, device=out.logits.device)
        ].float()  # [B, P, V]
        return specs.ForwardResult(
            prompts=tuple(
                specs.PromptTokens(r, self.token_strings(r)) for r in batch.rows[: batch.n_prompts]
            ),
            captures=tuple(capture_result(c) for g in prep.groups for c in g),
            top_logits=self.top_logits(at, prep.logit_pos, prep.top_k),
            logits_at=at.cpu(),
        )

    # -- micro-batching
    @staticmethod
    def _batchable(spec: specs.ForwardSpec) -> bool:
        if spec.interventions or spec.sources or spec.references:
            return False
        # top-k over key positions would see the merged batch's padding
        return not any(
            c.top_k is not None and c.site.endswith(("hook_pattern", "hook_attn_scores"))
            for c in spec.captures
        )

    @staticmethod
    def _key(spec: specs.ForwardSpec) -> tuple:
        return (spec.logit_positions, spec.top_k, spec.prepend_bos)

    def _forward_batched(self, item: _Pending) -> specs.ForwardResult:
        self._admit(item.prep.batch, item.prep.planner.plan, False)
        try:
            with self._state:
                self._pending.append(item)
            while not item.done.is_set():
                if self._lock.acquire(timeout=0.02):
                    try:
                        if not item.done.is_set():
                            self._execute(self._take_group())
                    finally:
                        self._lock.release()
                    continue
                try:
                    cancel.check()
                except BaseException:
                    with self._state:
                        if item in self._pending:  # not started: withdraw and give up
                            self._pending.remove(item)
                            raise
        finally:
            self._leave()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _take_group(self) -> list[_Pending]:
        """The oldest pending request and every compatible one after it, within the caps."""
        with self._state:
            if not self._pending:
                return []
            first = self._pending[0]
            key = self._key(first.spec)
            group, rows, tokens = [], 0, 0
            for it in list(self._pending):
                b = it.prep.batch
                n, t = b.n_prompts, b.n_prompts * b.max_len
                if self._key(it.spec) != key:
                    continue
                if group and (
                    rows + n > self.limits.max_prompts or tokens + t > self.limits.max_batch_tokens
                ):
                    break
                group.append(it)
                rows, tokens = rows + n, tokens + t
            for it in group:
                self._pending.remove(it)
            return group

    def _execute(self, group: list[_Pending]) -> None:
        """Run a group as one padded batch (lock held) and hand each request its share."""
        if not group:
            return
        try:
            if len(group) == 1:
                it = group[0]
                it.result = self._finish(
                    it.prep, self._run_locked(it.prep.batch, it.prep.planner.plan, False)
                )
                return
            rows = tuple(r for it in group for r in it.prep.batch.rows)
            merged = Batch(rows, len(rows), 0, 0)
            planner = self.planner(merged)
            unique: dict[specs.Capture, list[ResolvedCapture]] = {}
            for it in group:
                for cap in it.spec.captures:
                    if cap not in unique:
                        unique[cap] = planner.add_capture(cap)
            with cancel.scope(None):  # one request's cancellation must not stop the others
                out = self._run_locked(merged, planner.plan, False)
            self.stats["merged_passes"] += 1
            self.stats["merged_requests"] += len(group)
            start = 0
            for it in group:
                n = it.prep.batch.n_prompts
                it.result = self._slice_result(it, out, unique, start, n)
                start += n
        except BaseException as e:  # noqa: BLE001 - every member learns the outcome
            for it in group:
                if it.result is None:
                    it.error = e
        finally:
            for it in group:
                it.done.set()

    def _slice_result(
        self,
        it: _Pending,
        out: RunOutput,
        unique: dict[specs.Capture, list[ResolvedCapture]],
        start: int,
        n: int,
    ) -> specs.ForwardResult:
        prep = it.prep
        T = prep.batch.max_len
        rows = torch.arange(start, start + n, device=out.logits.device)[:, None]
        at = out.logits[rows, torch.tensor(prep.logit_pos, device=out.logits.device)].float()
        captures = []
        for cap in it.spec.captures:
            for c in unique[cap]:
                r = capture_result(c)
                values = r.values[start : start + n]
                indices = None if r.indices is None else r.indices[start : start + n]
                positions = r.positions[start : start + n]
                if cap.positions is None:
                    positions = positions[:, :T]
                for axis, dim in enumerate(r.dims, start=1):
                    if dim in ("pos", "q_pos", "k_pos"):
                        values = values.narrow(axis, 0, min(T, values.shape[axis]))
                        if indices is not None:
                            indices = indices.narrow(axis, 0, min(T, indices.shape[axis]))
                captures.append(
                    specs.CaptureResult(
                        r.site,
                        r.dims,
                        values.contiguous(),
                        None if indices is None else indices.contiguous(),
                        positions.contiguous(),
                        r.units,
                    )
                )
        return specs.ForwardResult(
            prompts=tuple(
                specs.PromptTokens(r, self.token_strings(r))
                for r in prep.batch.rows[: prep.batch.n_prompts]
            ),
            captures=tuple(captures),
            top_logits=self.top_logits(at, prep.logit_pos, prep.top_k),
            logits_at=at.cpu(),
        )

    def top_logits(
        self, at: torch.Tensor, positions: list[list[int]], k: int
    ) -> tuple[tuple[specs.TopLogits, ...], ...]:
        """Top-k next tokens per prompt and position from logits ``[B, P, vocab]``."""
        if k == 0:
            return tuple(() for _ in positions)
        probs = at.softmax(-1)
        vals, idx = at.topk(k, dim=-1)  # [B, P, k]
        p = probs.gather(-1, idx)
        vals, idx, p = vals.cpu(), idx.cpu(), p.cpu()
        return tuple(
            tuple(
                specs.TopLogits(
                    position=positions[b][j],
                    token_ids=tuple(idx[b, j].tolist()),
                    tokens=self.token_strings(idx[b, j].tolist()),
                    logits=tuple(vals[b, j].tolist()),
                    probs=tuple(p[b, j].tolist()),
                )
                for j in range(len(positions[b]))
            )
            for b in range(len(positions))
        )


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
    return specs.CaptureResult(
        site=c.site.name,
        dims=tuple(dims),
        values=c.values,
        indices=c.indices,
        positions=positions,
        units=c.units_list,
    )


def _chain(first: Splice | None, second: Splice) -> Splice:
    """Two splices at one site, applied in attach order."""
    if first is None:
        return second
    return lambda ctx, x: second(ctx, first(ctx, x))
