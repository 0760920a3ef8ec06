"""Forward: run prompts with captures (and interventions); see :class:`~tdb_core.specs.ForwardSpec`.

Concurrent plain reads (no interventions) of one model that arrive while it is busy are merged into
one padded batch (micro-batching, :meth:`~tdb_core.admission.Admission.batched`); each gets exactly
its own result.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.admission import GroupRunner, Member
from tdb_core.cache import Entry, PromptCache
from tdb_core.gradients import Gradients, GradPlan, compute_gradients, plan_gradients
from tdb_core.hooks import ResolvedCapture, _reduce_capture
from tdb_core.ops.common import capture_result, prompt_tokens, top_logits
from tdb_core.plan import (
    Batch,
    Planner,
    check_position_count,
    check_response_bytes,
    resolve_positions,
)
from tdb_core.runner import ModelRunner, RunOutput


@dataclass
class _Prepared:
    """A validated, planned Forward: its batch, planner, captures per spec, logit positions,
    and its prompt-cache key when the pass may be recorded."""

    spec: specs.ForwardSpec
    batch: Batch
    planner: Planner
    groups: list[list[ResolvedCapture]]
    logit_pos: list[list[int]]
    top_k: int
    grads: GradPlan | None = None
    # the pass's working memory with the logit gather, and its description, for admission
    need: int = 0
    describe: Callable[[], str] = str
    cache_key: Hashable | None = None


def forward(runner: ModelRunner, spec: specs.ForwardSpec) -> specs.ForwardResult:
    """Run the spec's prompts with its captures and interventions; next-token top-k.

    With a prompt cache (:mod:`tdb_core.cache`), a plain read whose captures can all be cut from
    a recorded pass is answered from it; otherwise a plain read that runs on its own (not merged
    with others) records its pass."""
    prep = _prepare(runner, spec)
    plan = prep.planner.plan
    if prep.grads is not None:
        # the backward runs with admission and the model lock held, as the pass does
        with runner.session(prep.batch, plan, grad=True):
            return _finish(runner, prep, runner.run(prep.batch, plan, grad=True))
    if not _batchable(spec):
        return _finish(runner, prep, runner.run(prep.batch, plan))
    if runner.cache is not None and runner.cache.max_bytes:
        cached = _from_cache(runner, prep, runner.cache)
        if cached is not None:
            return cached
    b = prep.batch
    member = Member(prep, _key(spec), b.n_prompts, b.n_prompts * b.max_len)
    result: specs.ForwardResult = runner.admission.batched(
        member, prep.need, prep.describe, _group_runner(runner)
    )
    return result


def _prepare(runner: ModelRunner, spec: specs.ForwardSpec) -> _Prepared:
    """Validate and plan a Forward completely (every error is raised here, before work)."""
    checks.top_k(spec.top_k)
    check_position_count(runner.schema, spec.logit_positions, "logit positions")
    checks.count(spec.interventions, runner.limits.max_interventions, "interventions")
    batch = runner.tokens.make_batch(spec.prompts, spec.sources, spec.references, spec.prepend_bos)
    planner = runner.planner(batch)
    groups = [planner.add_capture(cap) for cap in spec.captures]
    for iv in spec.interventions:
        planner.add_intervention(iv, range(batch.n_prompts))
    grads = plan_gradients(
        runner, planner, spec.loss, spec.grad_captures, spec.freeze_norm_scale, batch.n_prompts
    )
    prompt_lengths = batch.lengths[: batch.n_prompts]
    logit_pos = resolve_positions(spec.logit_positions, prompt_lengths, "logit position")
    top_k = min(spec.top_k, runner.schema.dims.d_vocab)
    check_response_bytes(
        planner.capture_bytes()
        + (grads.capture_bytes if grads is not None else 0)
        + 16 * top_k * len(logit_pos[0]) * batch.n_prompts,
        runner.limits.max_response_bytes,
    )
    # the logit gather after the pass: logits at the positions, a float copy, probabilities
    gather = 3 * batch.n_prompts * len(logit_pos[0]) * runner.schema.dims.d_vocab * 4
    need, what = runner.estimate(batch, planner.plan, grads is not None)

    def describe() -> str:
        return f"{what()}, logits at {len(logit_pos[0])} positions"

    runner.admission.check_budget(need + gather, describe)
    return _Prepared(spec, batch, planner, groups, logit_pos, top_k, grads, need + gather, describe)


def _finish(runner: ModelRunner, prep: _Prepared, out: RunOutput) -> specs.ForwardResult:
    batch = prep.batch
    rows = torch.arange(batch.n_prompts, device=out.logits.device)[:, None]
    at = out.logits[rows, torch.tensor(prep.logit_pos, device=out.logits.device)]
    grads = compute_gradients(prep.grads, out) if prep.grads is not None else None
    return _result(runner, prep, at, grads)


def _result(
    runner: ModelRunner, prep: _Prepared, logits: torch.Tensor, grads: Gradients | None = None
) -> specs.ForwardResult:
    """The result from filled captures, the logits at the asked positions ``[B, P, vocab]`` and
    the gradients, if any."""
    batch = prep.batch
    at = logits.float().detach()
    return specs.ForwardResult(
        prompts=prompt_tokens(runner.tokens, batch.rows[: batch.n_prompts]),
        captures=tuple(capture_result(c) for g in prep.groups for c in g),
        top_logits=top_logits(runner.tokens, at, prep.logit_pos, prep.top_k),
        logits_at=at.cpu(),
        grad_captures=grads.captures if grads is not None else (),
        loss_values=grads.loss_values if grads is not None else (),
    )


# --------------------------------------------------------------------------------------------------
# The prompt cache


def _spliced(runner: ModelRunner, prep: _Prepared) -> tuple[str, ...]:
    """The SAEs spliced into this pass: those one of whose sites it reads."""
    wanted = prep.planner.plan.sites()
    return tuple(a.id for a in runner.saes.values() if wanted.intersection(a.site_names))


def _from_cache(
    runner: ModelRunner, prep: _Prepared, cache: PromptCache
) -> specs.ForwardResult | None:
    """The result cut from a recorded pass, or None (a miss: then ``prep.cache_key`` is set so
    that the pass records itself if it runs alone)."""
    rest = (prep.batch.rows, _spliced(runner, prep))
    key = cache.key(runner.cache_token, runner.cache_stamp(), rest)
    entry = cache.get(key)
    if entry is not None:
        n = prep.batch.n_prompts
        wanted = [(b, p) for b in range(n) for p in prep.logit_pos[b]]
        caps = [c for g in prep.groups for c in g]
        if all(at in entry.logits for at in wanted) and all(_servable(entry, c) for c in caps):
            for c in caps:
                rec = entry.sites[c.site.name]
                _reduce_capture(c, rec.values, rec.masked, clone=True)
            rows = [
                torch.stack([entry.logits[(b, p)] for p in prep.logit_pos[b]]) for b in range(n)
            ]
            cache.count(hit=True)
            return _result(runner, prep, torch.stack(rows))
    cache.count(hit=False)
    prep.cache_key = key
    return None


def _servable(entry: Entry, c: ResolvedCapture) -> bool:
    rec = entry.sites.get(c.site.name)
    if rec is None or rec.values.shape[0] < c.n_rows:
        return False
    whole = c.index.pos is None and (c.index.units is None or c.index.unit_axis is None)
    return whole or not rec.derived


def _record(runner: ModelRunner, prep: _Prepared, out: RunOutput) -> None:
    """Keep what a pass recorded (its captured sites, its logits at the asked positions)."""
    assert runner.cache is not None and prep.cache_key is not None
    sites = prep.planner.plan.record or {}
    logits = {
        (b, p): out.logits[b, p].detach().clone()
        for b in range(prep.batch.n_prompts)
        for p in prep.logit_pos[b]
    }
    runner.cache.add(prep.cache_key, sites, logits)
    prep.planner.plan.record = None


# --------------------------------------------------------------------------------------------------
# Micro-batching


def _batchable(spec: specs.ForwardSpec) -> bool:
    if spec.interventions or spec.sources or spec.references or spec.loss is not None:
        return False
    # top-k over key positions would see the merged batch's padding
    return not any(
        c.top_k is not None and c.site.endswith(("hook_pattern", "hook_attn_scores"))
        for c in spec.captures
    )


def _key(spec: specs.ForwardSpec) -> Hashable:
    return (spec.logit_positions, spec.top_k, spec.prepend_bos)


def _group_runner(runner: ModelRunner) -> GroupRunner:
    def run_group(group: list[Member]) -> None:
        """Run a group as one padded batch (lock held) and hand each request its share."""
        preps: list[_Prepared] = [m.payload for m in group]
        if len(preps) == 1:
            prep = preps[0]
            if prep.cache_key is not None:
                prep.planner.plan.record = {}
            out = runner.forward_pass(prep.batch, prep.planner.plan)
            group[0].result = _finish(runner, prep, out)
            if prep.cache_key is not None:
                _record(runner, prep, out)
            return
        merged = Batch.plain([r for p in preps for r in p.batch.rows])
        planner = runner.planner(merged)
        unique: dict[specs.Capture, list[ResolvedCapture]] = {}
        for p in preps:
            for cap in p.spec.captures:
                if cap not in unique:
                    unique[cap] = planner.add_capture(cap)
        # the pass runs under every member's own cancellation (Admission's group check)
        out = runner.forward_pass(merged, planner.plan)
        runner.stats["merged_passes"] += 1
        runner.stats["merged_requests"] += len(group)
        start = 0
        for m, p in zip(group, preps):
            n = p.batch.n_prompts
            m.result = _slice_result(runner, p, out, unique, start, n)
            start += n

    return run_group


def _slice_result(
    runner: ModelRunner,
    prep: _Prepared,
    out: RunOutput,
    unique: dict[specs.Capture, list[ResolvedCapture]],
    start: int,
    n: int,
) -> specs.ForwardResult:
    T = prep.batch.max_len
    rows = torch.arange(start, start + n, device=out.logits.device)[:, None]
    at = out.logits[rows, torch.tensor(prep.logit_pos, device=out.logits.device)].float()
    captures = []
    for cap in prep.spec.captures:
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
        prompts=prompt_tokens(runner.tokens, prep.batch.rows[: prep.batch.n_prompts]),
        captures=tuple(captures),
        top_logits=top_logits(runner.tokens, at, prep.logit_pos, prep.top_k),
        logits_at=at.cpu(),
    )
