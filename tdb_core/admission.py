"""Admission to one model: the memory budget, the bounded queue, the execution lock, and
micro-batching.

A request is admitted before any work (its estimated working memory within the budget, room in
the bounded queue: UNAVAILABLE otherwise), then waits for the model's execution lock while
honouring its cancellation. Requests that can share a pass (:meth:`Admission.batched`) wait in a
pending list instead; whichever thread gets the lock runs the oldest pending request together
with every compatible one after it, and each gets exactly its own share.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from tdb_core import cancel
from tdb_core.checks import Limits
from tdb_core.errors import ResourceExhaustedError, UnavailableError
from tdb_core.hooks import HookPlan
from tdb_core.plan import Batch
from tdb_core.schema import ModelSchema


def working_bytes(
    schema: ModelSchema, dtype: torch.dtype, batch: Batch, plan: HookPlan, grad: bool
) -> int:
    """Estimated peak working memory of one pass: activations (all layers when a graph is kept
    for gradients), logits and captures."""
    d = schema.dims
    B, T = len(batch.rows), batch.max_len
    item = torch.empty((), dtype=dtype).element_size()
    per_token_layer = (12 * d.d_model + 3 * d.d_mlp + 3 * d.n_heads * T) * item
    layers = d.n_layers * 2 if grad else 2
    total = B * T * per_token_layer * layers
    total += B * T * d.d_vocab * 4 * (2 if grad else 1)
    for caps in plan.captures.values():
        for c in caps:
            total += c.n_rows * math.prod(schema.shape(c.site, T)) * 4
    total += B * sae_bytes_per_row(schema, T, plan, grad)
    return total


def sae_bytes_per_row(schema: ModelSchema, T: int, plan: HookPlan, grad: bool) -> int:
    """The latent-sized tensors an attached SAE adds to one row of a pass whose plan touches its
    sites: pre-activations and latents when read; when spliced (edited or differentiated) also
    their copies in the graph, and gradients of those with ``grad``. Counted at 4 bytes."""
    # an SAE site is ``sae.ID.HOOK``: ids may contain dots, hook names do not
    by_id: dict[str, list[str]] = {}
    for s in plan.sites():
        if s.startswith("sae."):
            by_id.setdefault(s[len("sae.") : s.rindex(".")], []).append(s)
    total = 0
    for sae_id, sites in by_id.items():
        latents = math.prod(schema.shape(schema.get(f"sae.{sae_id}.hook_sae_acts_post"), T))
        spliced = any(s in plan.edits or s in plan.grad_sites for s in sites)
        total += latents * 4 * ((6 if grad else 4) if spliced else 2)
    return total


@dataclass(eq=False)
class Member:
    """A request waiting to share a pass: ``key`` says which requests can share one, ``rows`` and
    ``tokens`` (rows x padded length) count against the merged pass's caps."""

    payload: Any
    key: Hashable
    rows: int
    tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    #: The cancellation check of the request this member belongs to (its own client's deadline
    #: and cancel), taken where the member is made; a pass that serves it honours only this.
    check: Callable[[], None] | None = field(default_factory=cancel.current)


GroupRunner = Callable[[list[Member]], None]
"""Runs a group as one pass (the execution lock held) and sets each member's ``result``."""


class Admission:
    """Admission, the execution lock and micro-batching of one model."""

    def __init__(self, model: str, limits: Limits) -> None:
        self.model = model
        self.limits = limits
        self._lock = threading.Lock()  # execution: one pass at a time
        self._state = threading.Lock()  # guards _admitted and _pending
        self._admitted = 0
        self._pending: list[Member] = []

    @property
    def queue_depth(self) -> int:
        """Requests admitted to this model: running or waiting."""
        return self._admitted

    def check_budget(self, need: int, describe: Callable[[], str]) -> None:
        """Refuse a pass whose estimated working memory is over the budget."""
        if need > self.limits.max_working_bytes:
            raise ResourceExhaustedError(
                f"this request needs an estimated {need // 2**20} MiB of working memory "
                f"({describe()}), over the server's budget of "
                f"{self.limits.max_working_bytes / 2**20:.0f} MiB; send fewer or shorter prompts "
                "or capture less"
            )

    @contextmanager
    def admitted(self, need: int, describe: Callable[[], str]) -> Iterator[None]:
        """Hold a place in the queue for a request needing ``need`` bytes of working memory."""
        self.check_budget(need, describe)
        with self._state:
            if self._admitted >= self.limits.max_queue:
                raise UnavailableError(
                    f"model '{self.model}' is busy ({self._admitted} requests running or queued, "
                    f"the limit is {self.limits.max_queue}); retry later"
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._state:
                self._admitted -= 1

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The execution lock, waited for while honouring the request's cancellation."""
        while not self._lock.acquire(timeout=0.02):
            cancel.check()
        try:
            yield
        finally:
            self._lock.release()

    def batched(
        self, member: Member, need: int, describe: Callable[[], str], run_group: GroupRunner
    ) -> Any:
        """Admit ``member``, wait until a pass (run by this thread or another) has served it, and
        return its result. A member withdrawn before its group started gives up on cancellation."""
        with self.admitted(need, describe):
            with self._state:
                self._pending.append(member)
            while not member.done.is_set():
                if self._lock.acquire(timeout=0.02):
                    try:
                        if not member.done.is_set():
                            _run(self._take_group(), run_group)
                    finally:
                        self._lock.release()
                    continue
                try:
                    cancel.check()
                except BaseException:
                    with self._state:
                        if member in self._pending:  # not started: withdraw and give up
                            self._pending.remove(member)
                            raise
        if member.error is not None:
            raise member.error
        return member.result

    def _take_group(self) -> list[Member]:
        """The oldest pending member and every compatible one after it, within the caps."""
        with self._state:
            if not self._pending:
                return []
            key = self._pending[0].key
            group: list[Member] = []
            rows = tokens = 0
            for m in list(self._pending):
                if m.key != key:
                    continue
                if group and (
                    rows + m.rows > self.limits.max_prompts
                    or tokens + m.tokens > self.limits.max_batch_tokens
                ):
                    break
                group.append(m)
                rows, tokens = rows + m.rows, tokens + m.tokens
            for m in group:
                self._pending.remove(m)
            return group


def group_check(group: list[Member]) -> Callable[[], None] | None:
    """The cancellation check of a pass serving ``group``: it stops only when every member's own
    request has stopped (then with the last one's reason). Whichever thread runs the pass, its own
    client's deadline or cancel never fails another client's request."""
    checks = [m.check for m in group]
    if any(c is None for c in checks):
        return None  # a member that cannot be cancelled keeps the pass going

    def check() -> None:
        last: BaseException | None = None
        for c in checks:
            assert c is not None
            try:
                c()
            except BaseException as e:  # noqa: BLE001 - re-raised when every member stopped
                last = e
            else:
                return
        if last is not None:
            raise last

    return check


def _run(group: list[Member], run_group: GroupRunner) -> None:
    """Run a group under its members' own cancellation (:func:`group_check`, never the running
    thread's); every member learns the outcome."""
    if not group:
        return
    try:
        with cancel.scope(group_check(group)):
            run_group(group)
    except BaseException as e:  # noqa: BLE001 - handed to each member, raised in its own thread
        for m in group:
            if m.result is None:
                m.error = e
    finally:
        for m in group:
            m.done.set()
