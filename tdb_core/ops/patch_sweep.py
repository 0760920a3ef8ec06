"""PatchSweep: activation patching, clean -> corrupted, cell by cell.

For a clean/corrupted pair of equal length it patches one site from the clean run into the
corrupted run, cell by cell — every (layer, position), or every (layer, head) — and returns the
normalized logit difference recovered, ``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``:
1 means the cell alone restores the clean behaviour, 0 means it does nothing.

``method`` chooses how a cell is measured: ``EXACT`` runs one patched forward pass per cell;
``ATTRIBUTION`` (attribution patching, AtP) estimates every cell at once to first order,
``LD_patched ~ LD_corrupted + (a_clean - a_corrupted) . dLD/da`` with the gradient taken at the
corrupted run (no norm held constant), summed over the cell's entries: one clean forward and one
corrupted forward and backward in all. The estimate is exact where the logit difference is linear
in the cell (a last-layer site with no final norm in between); elsewhere it is an approximation
whose ranking follows exact patching (see the README for its rank correlation on the toy model).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.ops.common import logit_diff
from tdb_core.plan import check_position_count, resolve_positions
from tdb_core.runner import ModelRunner
from tdb_core.schema import SITE_KIND_BY_KEY, site_name


class Method(enum.Enum):
    EXACT = "exact"  # one patched forward pass per cell
    ATTRIBUTION = "attribution"  # first-order estimate from one forward/backward pair (AtP)


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
    method: Method = Method.EXACT


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
    method: Method = Method.EXACT


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
    if spec.layers is not None:
        checks.count(spec.layers, dims.n_layers, "layers", "name each layer at most once")
    check_position_count(runner.schema, spec.positions, "positions")
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
    if spec.method is Method.ATTRIBUTION:
        lds, ld_clean, ld_corrupt = _attribution(
            runner, spec, layers, clean_p, corrupt_p, read_pos, n
        )
        if progress is not None:
            progress(len(cells), len(cells))
        return _result(
            runner, spec, layers, columns, labels, lds, ld_clean, ld_corrupt, clean_ids, corrupt_ids
        )

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
    return _result(
        runner,
        spec,
        layers,
        columns,
        labels,
        lds.reshape(len(layers), len(columns)),
        ld_clean,
        ld_corrupt,
        clean_ids,
        corrupt_ids,
    )


def _result(
    runner: ModelRunner,
    spec: PatchSweepSpec,
    layers: tuple[int, ...],
    columns: tuple[int, ...],
    labels: tuple[str, ...],
    grid: torch.Tensor,
    ld_clean: float,
    ld_corrupt: float,
    clean_ids: tuple[int, ...],
    corrupt_ids: tuple[int, ...],
) -> PatchSweepResult:
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
        method=spec.method,
    )


def _attribution(
    runner: ModelRunner,
    spec: PatchSweepSpec,
    layers: tuple[int, ...],
    clean_p: specs.Prompt,
    corrupt_p: specs.Prompt,
    read_pos: int,
    n: int,
) -> tuple[torch.Tensor, float, float]:
    """Attribution patching: the estimated patched logit difference of every cell ``[layers,
    columns]``, and the clean and corrupted logit differences. One clean forward reading the
    sites, one corrupted forward and one ``autograd.grad`` of its logit difference."""
    sites = [site_name(spec.site, L) for L in layers]
    kind = runner.schema.get(sites[0]).kind
    clean: dict[str, torch.Tensor] = {}
    batch = runner.tokens.make_batch((clean_p,))
    planner = runner.planner(batch)
    for s in sites:
        planner.plan.observers[s] = _keep(clean, s)
    with torch.no_grad():
        out = runner.run(batch, planner.plan)
    ld_clean = float(
        logit_diff(out.logits[0, read_pos].float(), spec.target_ids, spec.distractor_ids)
    )
    batch = runner.tokens.make_batch((corrupt_p,))
    planner = runner.planner(batch)
    planner.plan.grad_sites.update(sites)
    with runner.session(batch, planner.plan, grad=True):  # the backward under the lock too
        out = runner.run(batch, planner.plan, grad=True)
        ld = logit_diff(out.logits[0, read_pos].float(), spec.target_ids, spec.distractor_ids)
        graph = [out.ctx.graph[s] for s in sites]
        grads = torch.autograd.grad(ld, graph, allow_unused=True)
    pos_axis = kind.dims.index(kind.pos_dim)
    unit_axis = None if kind.unit_dim is None else kind.dims.index(kind.unit_dim)
    rows = []
    with torch.no_grad():
        for s, a, gr in zip(sites, graph, grads, strict=True):
            g = gr if gr is not None else torch.zeros_like(a)
            effect = ((clean[s][0] - a[0].detach()).double() * g[0].double()).cpu()  # site dims
            if spec.by is SweepBy.POSITION:
                rows.append(effect.movedim(pos_axis, 0).reshape(n, -1).sum(-1))
                continue
            assert unit_axis is not None
            if spec.positions is not None:
                (keep,) = resolve_positions(spec.positions, [n])
                effect = effect.index_select(pos_axis, torch.tensor(sorted(set(keep))))
            rows.append(effect.movedim(unit_axis, 0).reshape(effect.shape[unit_axis], -1).sum(-1))
    return torch.stack(rows).float() + float(ld.detach()), ld_clean, float(ld.detach())


def _keep(into: dict[str, torch.Tensor], site: str) -> Callable[[torch.Tensor], None]:
    def observe(t: torch.Tensor) -> None:
        into[site] = t.detach()

    return observe
