"""Ablate: compare a baseline with edited runs of the same prompt.

``ablate`` runs a baseline and N intervention sets as one padded batch (row 0 is the baseline,
row i the i-th set) and reports, per row, the next-token top-k at the chosen position, the
target-vs-distractor logit difference and its change from baseline, and the KL divergence of the
next-token distribution from the baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.gradients import Gradients, compute_gradients, plan_gradients
from tdb_core.hooks import ResolvedCapture
from tdb_core.losses import Loss
from tdb_core.ops.common import capture_result, logit_diff, top_logits
from tdb_core.plan import Batch, check_response_bytes, resolve_positions
from tdb_core.runner import ModelRunner, RunOutput

# --------------------------------------------------------------------------------------------------
# Specs and results (data only)


@dataclass(frozen=True)
class InterventionSet:
    """A named group of interventions applied together to one copy of the prompt."""

    name: str
    interventions: tuple[specs.Intervention, ...]


@dataclass(frozen=True)
class AblateSpec:
    prompt: specs.Prompt
    sets: tuple[InterventionSet, ...]
    position: int = -1
    target_ids: tuple[int, ...] = ()
    distractor_ids: tuple[int, ...] = ()
    top_k: int = 10
    captures: tuple[specs.Capture, ...] = ()
    sources: tuple[specs.Prompt, ...] = ()
    references: tuple[specs.Prompt, ...] = ()
    prepend_bos: bool | None = None
    # gradients of a loss on every row (see tdb_core.gradients)
    loss: Loss | None = None
    grad_captures: tuple[specs.Capture, ...] = ()
    freeze_norm_scale: bool = True


@dataclass(frozen=True)
class AblateRow:
    name: str
    top: specs.TopLogits
    logit_diff: float | None
    logit_diff_change: float | None  # this row minus baseline
    kl_from_baseline: float  # KL(baseline || this row) of the next-token distribution, nats
    target_prob: float | None  # total probability of the target tokens


@dataclass(frozen=True)
class AblateResult:
    prompt: specs.PromptTokens
    position: int
    rows: tuple[AblateRow, ...]  # rows[0] is the baseline
    captures: tuple[specs.CaptureResult, ...]  # batch axis = rows
    grad_captures: tuple[specs.CaptureResult, ...] = ()  # d(loss)/d(site); batch axis = rows
    loss_values: tuple[float, ...] = ()  # per row, when the request has a loss


# --------------------------------------------------------------------------------------------------


def ablate(runner: ModelRunner, spec: AblateSpec) -> AblateResult:
    """Baseline plus one row per intervention set, in one padded batch."""
    vocab = runner.schema.dims.d_vocab
    checks.target_distractor(spec.target_ids, spec.distractor_ids, vocab, required=False)
    checks.top_k(spec.top_k)
    checks.at_most(
        sum(len(s.interventions) for s in spec.sets),
        runner.limits.max_interventions,
        "interventions (over all sets)",
    )
    names = [s.name for s in spec.sets]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgumentError(
                f"intervention set name {checks.quote(name)} is used twice; names must be unique"
            )
        seen.add(name)
    prompts = (spec.prompt,) * (len(spec.sets) + 1)
    batch = runner.tokens.make_batch(prompts, spec.sources, spec.references, spec.prepend_bos)
    planner = runner.planner(batch)
    captures = [c for cap in spec.captures for c in planner.add_capture(cap)]
    for row, s in enumerate(spec.sets, start=1):
        for iv in s.interventions:
            planner.add_intervention(iv, [row])
    grads = plan_gradients(
        runner, planner, spec.loss, spec.grad_captures, spec.freeze_norm_scale, batch.n_prompts
    )
    (pos,) = resolve_positions([spec.position], batch.lengths[:1])[0]
    check_response_bytes(
        planner.capture_bytes() + (grads.capture_bytes if grads is not None else 0),
        runner.limits.max_response_bytes,
    )

    if grads is None:
        out = runner.run(batch, planner.plan)
        with torch.no_grad():
            return _rows(runner, spec, batch, out, pos, captures, names, None)
    # the backward runs with admission and the model lock held, as the pass does
    with runner.session(batch, planner.plan, grad=True):
        out = runner.run(batch, planner.plan, grad=True)
        got = compute_gradients(grads, out)
    with torch.no_grad():
        return _rows(runner, spec, batch, out, pos, captures, names, got)


def _rows(
    runner: ModelRunner,
    spec: AblateSpec,
    batch: Batch,
    out: RunOutput,
    pos: int,
    captures: list[ResolvedCapture],
    names: list[str],
    got: Gradients | None,
) -> AblateResult:
    logits = out.logits[: batch.n_prompts, pos].float().detach()  # [rows, vocab]
    logp = logits.log_softmax(-1)
    kl = (logp[0].exp() * (logp[0] - logp)).sum(-1)  # [rows]
    k = min(spec.top_k, logits.shape[-1])
    tops = top_logits(runner.tokens, logits[:, None], [[pos]] * logits.shape[0], k)
    ld = tp = None
    if spec.target_ids:
        ld = logit_diff(logits, spec.target_ids, spec.distractor_ids)
        tp = logp[:, list(spec.target_ids)].exp().sum(-1)
    rows = []
    for i, name in enumerate(["baseline", *names]):
        rows.append(
            AblateRow(
                name=name,
                top=tops[i][0] if k else specs.TopLogits(pos, (), (), (), ()),
                logit_diff=None if ld is None else float(ld[i]),
                logit_diff_change=None if ld is None else float(ld[i] - ld[0]),
                kl_from_baseline=max(float(kl[i]), 0.0),
                target_prob=None if tp is None else float(tp[i]),
            )
        )
    row0 = batch.rows[0]
    return AblateResult(
        prompt=specs.PromptTokens(row0, runner.tokens.strings(row0)),
        position=pos,
        rows=tuple(rows),
        captures=tuple(capture_result(c) for c in captures),
        grad_captures=got.captures if got is not None else (),
        loss_values=got.loss_values if got is not None else (),
    )
