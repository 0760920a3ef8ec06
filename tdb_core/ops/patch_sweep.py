"""PatchSweep: activation patching, clean -> corrupted, cell by cell.

For a clean/corrupted pair of equal length it patches one site from the clean run into the
corrupted run, cell by cell — every (layer, position), or every (layer, head) — and returns the
normalized logit difference recovered, ``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``:
1 means the cell alone restores the clean behaviour, 0 means it does nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.ops.common import logit_diff
from tdb_core.plan import resolve_positions
from tdb_core.runner import ModelRunner
from tdb_core.schema import SITE_KIND_BY_KEY, site_name


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


def patch_sweep(
    runner: ModelRunner,
    spec: PatchSweepSpec,
    max_rows_per_pass: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> PatchSweepResult:
    """Patch one site from the clean run into the corrupted run, one cell at a time."""
    dims = runner.schema.dims
    checks.target_distractor(spec.target_ids, spec.distractor_ids, dims.d_vocab, required=True)
    kind = SITE_KIND_BY_KEY.get(spec.site)
    if kind is None or not kind.layered or not runner.schema.has_kind(spec.site):
        layered = [k.key for k in runner.schema.kinds if k.layered]
        raise NotFoundError(
            f"{checks.quote(spec.site)} is not a per-layer site of this model; use one of: "
            f"{', '.join(layered)}"
        )
    if spec.by is SweepBy.HEAD and kind.unit_dim not in ("head", "kv_head"):
        raise InvalidArgumentError(
            f"a per-head sweep needs a site with a head axis (e.g. "
            f"attn.hook_z); {checks.quote(spec.site)} has none"
        )
    clean_ids = runner.tokens.encode(spec.clean, spec.prepend_bos, "clean prompt")
    corrupt_ids = runner.tokens.encode(spec.corrupted, spec.prepend_bos, "corrupted prompt")
    if len(clean_ids) != len(corrupt_ids):
        raise InvalidArgumentError(
            f"clean prompt has {len(clean_ids)} tokens but corrupted prompt has {len(corrupt_ids)}; "
            "activation patching needs prompts of equal length"
        )
    n = len(clean_ids)
    layers = tuple(spec.layers) if spec.layers is not None else tuple(range(dims.n_layers))
    for L in layers:
        checks.index(L, dims.n_layers, "layer")
    (read_pos,) = resolve_positions([spec.position], [n], "logit position")[0]
    if spec.by is SweepBy.POSITION:
        columns = tuple(range(n))
        labels = runner.tokens.strings(clean_ids)
    else:
        # query heads, or kv heads for hook_k/hook_v/hook_rot_k (grouped-query attention)
        columns = tuple(range(dims.n_kv_heads if kind.unit_dim == "kv_head" else dims.n_heads))
        labels = tuple(f"H{h}" for h in columns)
        if spec.positions is not None:
            resolve_positions(spec.positions, [n])  # validates
    cells = [(L, c) for L in layers for c in columns]
    checks.at_most(
        len(cells),
        runner.limits.max_pass_rows,
        "sweep cells (one patched prompt each)",
        "prompt rows per request",
        "restrict layers",
    )
    clean_p, corrupt_p = specs.Prompt(token_ids=clean_ids), specs.Prompt(token_ids=corrupt_ids)

    pair = runner.tokens.make_batch((clean_p, corrupt_p))
    base = runner.run(pair, runner.planner(pair).plan)
    base_ld = logit_diff(base.logits[:, read_pos].float(), spec.target_ids, spec.distractor_ids)
    ld_clean, ld_corrupt = float(base_ld[0]), float(base_ld[1])

    lds = torch.empty(len(cells))
    done = 0
    per_pass = max(1, min(max_rows_per_pass, runner.limits.max_prompts - 1))  # + the clean source
    for start in range(0, len(cells), per_pass):
        chunk = cells[start : start + per_pass]
        batch = runner.tokens.make_batch((corrupt_p,) * len(chunk), sources=(clean_p,))
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
        clean=specs.PromptTokens(clean_ids, runner.tokens.strings(clean_ids)),
        corrupted=specs.PromptTokens(corrupt_ids, runner.tokens.strings(corrupt_ids)),
    )
