"""The model runner: one per loaded model. Owns the model, its hook engine and one ``read``.

Requests are stateless (each carries its prompts and specs), so replicas are interchangeable. The
runner keeps what every operation needs: the adapted model on its device, the schema (with the
sites of attached SAEs, ``saes``), the tokenizer facade (``tokens``) and admission (``admission``:
memory budget, bounded queue, execution lock, micro-batching). ``run`` is one padded forward pass
with hooks installed for its duration and removed in ``finally``; ``read`` is one pass that reads
sites. The operations (``tdb_core.ops``) plan their requests and call these.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from tdb_core import cancel
from tdb_core.adapter import Adapter
from tdb_core.admission import Admission, working_bytes
from tdb_core.cache import PromptCache, runner_token
from tdb_core.checks import Limits
from tdb_core.hooks import HookContext, HookPlan, Splice, activate
from tdb_core.plan import Batch, Planner
from tdb_core.sae.attach import SaeRegistry
from tdb_core.schema import ModelSchema
from tdb_core.tokens import Tokens

__all__ = ["Limits", "LoadedModel", "ModelRunner", "RunOutput"]

#: The runner whose admission and execution lock the current thread holds (see ``session``).
_HELD: contextvars.ContextVar[ModelRunner | None] = contextvars.ContextVar(
    "tdb_held_runner", default=None
)


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
    """What one forward pass produced: logits ``[B, T, vocab]`` and the hook context.

    With ``logit_positions`` (a plan's :attr:`~tdb_core.hooks.HookPlan.logit_positions`), the
    logits are those positions' only: ``[B, len(logit_positions), vocab]``; read them by
    absolute position with :meth:`logits_at`.
    """

    logits: torch.Tensor
    ctx: HookContext
    seconds: float
    logit_positions: tuple[int, ...] | None = None

    def logits_at(self, position: int) -> torch.Tensor:
        """The logits at an absolute position, ``[B, vocab]``."""
        if self.logit_positions is None:
            return self.logits[:, position]
        return self.logits[:, self.logit_positions.index(position)]


class ModelRunner:
    """Serves one loaded model: hooked forward passes over planned batches."""

    def __init__(self, loaded: LoadedModel, limits: Limits | None = None) -> None:
        self.loaded = loaded
        self.limits = limits or Limits()
        dims = loaded.adapter.schema.dims
        self.tokens = Tokens(loaded.tokenizer, dims.d_vocab, dims.n_ctx, self.limits)
        self.saes = SaeRegistry(loaded.name, loaded.adapter.schema, loaded.device)
        self.admission = Admission(loaded.name, self.limits)
        self.stats = {"passes": 0, "merged_passes": 0, "merged_requests": 0}
        self.cache: PromptCache | None = None  # the server's prompt cache, when it has one
        self.cache_token = runner_token()
        # tensors derived from the weights alone (e.g. the normalized embedding node tables read),
        # each with a stamp of the weights it was derived from: name -> (stamp, tensor)
        self.derived: dict[str, tuple[object, torch.Tensor]] = {}

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def adapter(self) -> Adapter:
        return self.loaded.adapter

    @property
    def schema(self) -> ModelSchema:
        """The adapter's schema plus the sites of attached SAEs."""
        return self.saes.schema

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    @property
    def queue_depth(self) -> int:
        """Requests admitted to this model: running or waiting."""
        return self.admission.queue_depth

    def cache_stamp(self) -> tuple[object, ...]:
        """Changes whenever the weights (in place or replaced) or the attached SAEs change: part
        of every prompt-cache key of this model."""
        weights = tuple((id(p), p._version) for p in self.adapter.model.parameters())
        saes = tuple(
            (a.id, id(a), tuple((id(p), p._version) for p in a.sae.parameters()))
            for a in self.saes.values()
        )
        return (weights, saes)

    def planner(self, batch: Batch) -> Planner:
        return Planner(self.schema, batch, self.device, self.dtype)

    def estimate(self, batch: Batch, plan: HookPlan, grad: bool) -> tuple[int, Callable[[], str]]:
        """Estimated working memory of a pass over ``batch`` (see
        :func:`~tdb_core.admission.working_bytes`), and what it is made of, for admission."""

        def describe() -> str:
            n_caps = sum(len(c) for c in plan.captures.values())
            return (
                f"{len(batch.rows)} prompts x {batch.max_len} tokens, {n_caps} captures"
                f"{', gradients' if grad else ''}"
            )

        return working_bytes(self.schema, self.dtype, batch, plan, grad), describe

    # -- the hook engine
    def run(self, batch: Batch, plan: HookPlan, grad: bool = False) -> RunOutput:
        """One padded forward pass over the batch with the plan's hooks.

        Right padding keeps every real position identical to running the prompt alone (causal
        attention never looks right). With ``grad``, the pass builds a graph from the embeddings so
        ``torch.autograd.grad`` can differentiate with respect to the plan's ``grad_sites``.
        Admission (memory estimate, queue bound) happens before any work; while waiting for the
        model and at every layer, the request's cancellation is checked.
        """
        need, describe = self.estimate(batch, plan, grad)
        if _HELD.get() is self:  # inside this request's session: admitted, the lock held
            self.admission.check_budget(need, describe)
            return self.forward_pass(batch, plan, grad)
        with self.admission.admitted(need, describe), self.admission.exclusive():
            return self.forward_pass(batch, plan, grad)

    @contextmanager
    def session(self, batch: Batch, plan: HookPlan, grad: bool) -> Iterator[None]:
        """Admission and the execution lock held for a whole request: its passes and what it
        computes from their graphs (gradients, integrated gradients), so the memory budget and
        the one-pass-at-a-time rule bound that work too. ``run`` inside it does not queue again.
        The estimate is that of a pass over ``batch`` with ``plan``."""
        if _HELD.get() is self:
            yield
            return
        need, describe = self.estimate(batch, plan, grad)
        with self.admission.admitted(need, describe), self.admission.exclusive():
            token = _HELD.set(self)
            try:
                yield
            finally:
                _HELD.reset(token)

    def read(self, batch: Batch, sites: Iterable[str]) -> dict[str, torch.Tensor]:
        """One pass over the batch (no gradients) reading ``sites``: each detached, in schema
        layout ``[batch, *site dims]`` over the padded length (padding rows and positions
        included)."""
        planner = self.planner(batch)
        got: dict[str, torch.Tensor] = {}
        for s in sites:
            planner.plan.observers[s] = _keep(got, s)
        with torch.no_grad():
            self.run(batch, planner.plan)
        return got

    def forward_pass(self, batch: Batch, plan: HookPlan, grad: bool = False) -> RunOutput:
        """The pass of :meth:`run` itself; the caller holds ``admission.exclusive()``."""
        lengths = batch.lengths
        T = batch.max_len
        ids = torch.full((len(lengths), T), self.tokens.pad_id, dtype=torch.long)
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
        kept = plan.logit_positions if "logits" not in wanted else None
        extra: dict[str, Any] = {}
        if kept is not None:  # the model's unembedding reads only these positions
            extra["logits_to_keep"] = torch.tensor(kept, device=self.device)
        start = time.perf_counter()
        while True:
            ctx = HookContext(
                plan, torch.tensor(lengths, device=self.device), check=cancel.current()
            )
            self.stats["passes"] += 1
            with self._hooks(ctx), torch.set_grad_enabled(grad):
                out = self.adapter.model(
                    input_ids=ids, attention_mask=mask, use_cache=False, **extra
                )
            if plan.captures_intact():
                return RunOutput(out.logits, ctx, time.perf_counter() - start, kept)
            # the model wrote in place to an activation captured without a copy: run again, copying
            plan.clone_captures = True
            plan.reset_captures()

    @contextmanager
    def _hooks(self, ctx: HookContext) -> Iterator[None]:
        handles = self.adapter.install(ctx)
        try:
            with activate(ctx):
                yield
        finally:
            for h in handles:
                h.remove()


def _chain(first: Splice | None, second: Splice) -> Splice:
    """Two splices at one site, applied in attach order."""
    if first is None:
        return second
    return lambda ctx, x: second(ctx, first(ctx, x))


def _keep(into: dict[str, torch.Tensor], site: str) -> Callable[[torch.Tensor], None]:
    """An observer storing the detached tensor it sees under ``site``."""

    def observe(t: torch.Tensor) -> None:
        into[site] = t.detach()

    return observe
