"""Ablate and activation patching: compare a baseline with edited runs of the same prompt.

``ablate`` runs a baseline and N intervention sets as one padded batch (row 0 is the baseline,
row i the i-th set) and reports, per row, the next-token top-k at the chosen position, the
target-vs-distractor logit difference and its change from baseline, and the KL divergence of the
next-token distribution from the baseline's.

``patch_sweep`` is activation patching: for a clean/corrupted pair of equal length it patches one
site from the clean run into the corrupted run, cell by cell — every (layer, position), or every
(layer, head) — and returns the normalized logit difference recovered,
``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``: 1 means the cell alone restores the
clean behaviour, 0 means it does nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tdb_core import specs
from tdb_core.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from tdb_core.plan import check_response_bytes, resolve_positions
from tdb_core.runner import ModelRunner, capture_result
from tdb_core.schema import SITE_KIND_BY_KEY, site_name

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


class SweepBy(enum.Enum):
    POSITION = "position"  # grid [layer, position]: the whole site at one position
    HEAD = "head"  # grid [layer, head]: one head at the selected positions


@dataclass(frozen=True)
class PatchSweepSpec:
    clean: specs.Prompt
    corrupted: specs.Prompt
    site: str  # a site kind such as "hook_resid_pre" or "attn.hook_z"
    target_ids: tuple[int, ...]
    distractor_ids: tuple[int, ...]
    by: SweepBy = SweepBy.POSITION
    positions: tuple[int, ...] | None = None  # HEAD sweeps: positions patched (None: all)
    layers: tuple[int, ...] | None = None
    position: int = -1  # where the logit difference is read
    prepend_bos: bool | None = None


@dataclass(frozen=True)
class PatchSweepResult:
    site: str
    by: SweepBy
    layers: tuple[int, ...]
    columns: tuple[int, ...]  # positions or heads
    column_labels: tuple[str, ...]  # token strings or "H3"
    recovered: torch.Tensor  # [n_layers, n_columns], normalized logit difference recovered
    logit_diffs: torch.Tensor  # [n_layers, n_columns], raw patched logit differences
    clean_logit_diff: float
    corrupted_logit_diff: float
    clean: specs.PromptTokens
    corrupted: specs.PromptTokens


# --------------------------------------------------------------------------------------------------


def logit_diff(
    logits: torch.Tensor, target: tuple[int, ...], distractor: tuple[int, ...]
) -> torch.Tensor:
    """Mean logit over targets minus mean over distractors, on the last axis of ``logits``."""
    return logits[..., list(target)].mean(-1) - logits[..., list(distractor)].mean(-1)


def _check_tokens(
    runner: ModelRunner, target: tuple[int, ...], distractor: tuple[int, ...], required: bool
) -> None:
    vocab = runner.schema.dims.d_vocab
    if required and (not target or not distractor):
        raise InvalidArgumentError("give at least one target and one distractor token")
    if bool(target) != bool(distractor):
        raise InvalidArgumentError("give both target and distractor tokens, or neither")
    for t in (*target, *distractor):
        if not 0 <= t < vocab:
            raise InvalidArgumentError(f"token id {t} is outside the vocabulary (0..{vocab - 1})")


def ablate(runner: ModelRunner, spec: AblateSpec) -> AblateResult:
    """Baseline plus one row per intervention set, in one padded batch."""
    _check_tokens(runner, spec.target_ids, spec.distractor_ids, required=False)
    if spec.top_k < 0:
        raise InvalidArgumentError(f"top_k must be >= 0, got {spec.top_k}")
    names = [s.name for s in spec.sets]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"intervention set names must be unique, got {names}")
    prompts = (spec.prompt,) * (len(spec.sets) + 1)
    batch = runner.make_batch(prompts, spec.sources, spec.references, spec.prepend_bos)
    planner = runner.planner(batch)
    captures = [c for cap in spec.captures for c in planner.add_capture(cap)]
    for row, s in enumerate(spec.sets, start=1):
        for iv in s.interventions:
            planner.add_intervention(iv, [row])
    (pos,) = resolve_positions([spec.position], batch.lengths[:1])[0]
    check_response_bytes(planner.capture_bytes(), runner.limits.max_response_bytes)

    out = runner.run(batch, planner.plan)
    logits = out.logits[: batch.n_prompts, pos].float()  # [rows, vocab]
    logp = logits.log_softmax(-1)
    kl = (logp[0].exp() * (logp[0] - logp)).sum(-1)  # [rows]
    k = min(spec.top_k, logits.shape[-1])
    tops = runner.top_logits(logits[:, None], [[pos]] * logits.shape[0], k)
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
        prompt=specs.PromptTokens(row0, runner.token_strings(row0)),
        position=pos,
        rows=tuple(rows),
        captures=tuple(capture_result(c) for c in captures),
    )


def patch_sweep(
    runner: ModelRunner,
    spec: PatchSweepSpec,
    max_rows_per_pass: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> PatchSweepResult:
    """Patch one site from the clean run into the corrupted run, one cell at a time."""
    _check_tokens(runner, spec.target_ids, spec.distractor_ids, required=True)
    kind = SITE_KIND_BY_KEY.get(spec.site)
    if kind is None or not kind.layered or not runner.schema.has_kind(spec.site):
        layered = [k.key for k in runner.schema.kinds if k.layered]
        raise NotFoundError(
            f"'{spec.site}' is not a per-layer site of this model; use one of: {', '.join(layered)}"
        )
    if spec.by is SweepBy.HEAD and kind.unit_dim != "head":
        raise InvalidArgumentError(
            f"a per-head sweep needs a site with a head axis (e.g. "
            f"attn.hook_z); '{spec.site}' has none"
        )
    clean_ids = runner.encode(spec.clean, spec.prepend_bos, "clean prompt")
    corrupt_ids = runner.encode(spec.corrupted, spec.prepend_bos, "corrupted prompt")
    if len(clean_ids) != len(corrupt_ids):
        raise InvalidArgumentError(
            f"clean prompt has {len(clean_ids)} tokens but corrupted prompt has {len(corrupt_ids)}; "
            "activation patching needs prompts of equal length"
        )
    n = len(clean_ids)
    dims = runner.schema.dims
    layers = tuple(spec.layers) if spec.layers is not None else tuple(range(dims.n_layers))
    for L in layers:
        if not 0 <= L < dims.n_layers:
            raise InvalidArgumentError(f"layer {L} is out of range (0..{dims.n_layers - 1})")
    (read_pos,) = resolve_positions([spec.position], [n], "logit position")[0]
    if spec.by is SweepBy.POSITION:
        columns = tuple(range(n))
        labels = runner.token_strings(clean_ids)
    else:
        columns = tuple(range(dims.n_heads))
        labels = tuple(f"H{h}" for h in columns)
        if spec.positions is not None:
            resolve_positions(spec.positions, [n])  # validates
    cells = [(L, c) for L in layers for c in columns]
    limit = runner.limits.max_pass_rows
    if len(cells) > limit:
        raise ResourceExhaustedError(
            f"the sweep has {len(cells)} cells (one patched prompt each), "
            f"over the server's limit of {limit}; restrict layers"
        )
    clean_p, corrupt_p = specs.Prompt(token_ids=clean_ids), specs.Prompt(token_ids=corrupt_ids)

    pair = runner.make_batch((clean_p, corrupt_p))
    base = runner.run(pair, runner.planner(pair).plan)
    base_ld = logit_diff(base.logits[:, read_pos].float(), spec.target_ids, spec.distractor_ids)
    ld_clean, ld_corrupt = float(base_ld[0]), float(base_ld[1])

    lds = torch.empty(len(cells))
    done = 0
    per_pass = max(1, min(max_rows_per_pass, runner.limits.max_prompts - 1))  # + the clean source
    for start in range(0, len(cells), per_pass):
        chunk = cells[start : start + per_pass]
        batch = runner.make_batch((corrupt_p,) * len(chunk), sources=(clean_p,))
        planner = runner.planner(batch)
        for row, (L, c) in enumerate(chunk):
            site = site_name(spec.site, L)
            if spec.by is SweepBy.POSITION:
                iv = specs.Intervention(site, specs.PatchFrom(0), positions=(c,))
            else:
                iv = specs.Intervention(
                    site, specs.PatchFrom(0), positions=spec.positions, units=(c,)
                )
            planner.add_intervention(iv, [row])
        out = runner.run(batch, planner.plan)
        lds[start : start + len(chunk)] = logit_diff(
            out.logits[: len(chunk), read_pos].float(), spec.target_ids, spec.distractor_ids
        ).cpu()
        done += len(chunk)
        if progress is not None:
            progress(done, len(cells))
    grid = lds.reshape(len(layers), len(columns))
    denom = ld_clean - ld_corrupt
    recovered = (
        (grid - ld_corrupt) / denom if abs(denom) > 1e-12 else torch.full_like(grid, float("nan"))
    )
    return PatchSweepResult(
        site=spec.site,
        by=spec.by,
        layers=layers,
        columns=columns,
        column_labels=tuple(labels),
        recovered=recovered,
        logit_diffs=grid,
        clean_logit_diff=ld_clean,
        corrupted_logit_diff=ld_corrupt,
        clean=specs.PromptTokens(clean_ids, runner.token_strings(clean_ids)),
        corrupted=specs.PromptTokens(corrupt_ids, runner.token_strings(corrupt_ids)),
    )
