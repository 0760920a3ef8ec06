"""LogitLens: the residual stream read as if it were the last one.

For chosen layers and positions of one prompt, the residual (``hook_resid_post`` by default, or
``hook_resid_pre``/``hook_resid_mid``) goes through the final norm and the unembedding (and the
final soft-cap, where the model has one), and each cell of the layer x position grid reports its
top-k tokens with their lens logits and softmax probabilities. One forward pass, no gradients.

The final norm's scale is either

- ``RECOMPUTED`` (the classic logit lens): each residual divided by its own scale,
  ``ln_final(x)``; at the last layer's ``hook_resid_post`` this is exactly the model's logits; or
- ``FROZEN``: each residual divided by the scale the final norm computed for the model's actual
  last residual at that position (``ln_final.hook_scale``), so a cell is a linear read-out of the
  residual and the lens logits of the parts of a residual add up (TDB's direct-effect convention).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.plan import check_response_bytes, resolve_positions
from tdb_core.runner import ModelRunner
from tdb_core.schema import site_name

LENS_SITES = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid")


class LensScale(enum.Enum):
    RECOMPUTED = "recomputed"
    FROZEN = "frozen"


@dataclass(frozen=True)
class LensSpec:
    prompt: specs.Prompt
    site: str = "hook_resid_post"
    layers: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    top_k: int = 5
    scale: LensScale = LensScale.RECOMPUTED
    prepend_bos: bool | None = None


@dataclass(frozen=True)
class LensCell:
    layer: int
    position: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logits: tuple[float, ...]
    probs: tuple[float, ...]


@dataclass(frozen=True)
class LensResult:
    prompt: specs.PromptTokens
    site: str
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    cells: tuple[LensCell, ...]  # layer-major
    scale: LensScale
    logits: torch.Tensor  # [layers, positions, vocab] float32 lens logits (not sent on the wire)


def lens_logits(runner: ModelRunner, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Residuals ``[..., d_model]`` read through the final norm (with ``scale`` ``[..., 1]`` or
    their own) and the unembedding: logits ``[..., vocab]`` in float32."""
    a = runner.adapter
    norm = a.final_norm()
    y = norm.apply(x, norm.scale(x) if scale is None else scale).float()
    logits = y @ a.W_U().float()
    b_u = a.b_U()
    if b_u is not None:
        logits = logits + b_u.float()
    cap = a.logit_softcap()
    if cap is not None:
        logits = cap * torch.tanh(logits / cap)
    return logits


def logit_lens(runner: ModelRunner, spec: LensSpec) -> LensResult:
    """The lens grid of ``spec`` (see the module docstring)."""
    dims = runner.schema.dims
    if spec.site not in LENS_SITES:
        raise InvalidArgumentError(
            f"the logit lens reads a residual-stream site kind ({', '.join(LENS_SITES)}), not "
            f"{checks.quote(spec.site)}"
        )
    if not runner.schema.has_kind(spec.site):
        raise InvalidArgumentError(
            f"this model has no {spec.site} (parallel blocks); use hook_resid_pre or "
            "hook_resid_post"
        )
    checks.top_k(spec.top_k, lo=1)
    k = min(spec.top_k, dims.d_vocab)
    layers = tuple(range(dims.n_layers)) if spec.layers is None else tuple(spec.layers)
    checks.non_empty(layers, "layers (omit the list for every layer)")
    for L in layers:
        checks.index(L, dims.n_layers, "layer")
    batch = runner.tokens.make_batch((spec.prompt,), prepend_bos=spec.prepend_bos)
    n = batch.lengths[0]
    if spec.positions is None:
        positions = list(range(n))
    else:
        checks.non_empty(spec.positions, "positions (omit the list for every position)")
        positions = resolve_positions(spec.positions, [n])[0]
    check_response_bytes(
        len(layers) * len(positions) * k * 48, runner.limits.max_response_bytes
    )  # ids, logits, probs and short token strings per entry
    sites = [site_name(spec.site, L) for L in layers]
    read = runner.read(batch, [*sites, "ln_final.hook_scale"])
    pos = torch.tensor(positions, device=runner.device)
    with torch.no_grad():
        x = torch.stack([read[s][0, pos] for s in sites])  # [layers, P, d_model]
        scale = read["ln_final.hook_scale"][0, pos] if spec.scale is LensScale.FROZEN else None
        logits = lens_logits(runner, x, scale)  # [layers, P, vocab]
        probs = logits.softmax(-1)
        vals, idx = logits.topk(k, dim=-1)
        p = probs.gather(-1, idx)
    vals, idx, p = vals.cpu(), idx.cpu(), p.cpu()
    cells = []
    for i, L in enumerate(layers):
        for j, q in enumerate(positions):
            ids = idx[i, j].tolist()
            cells.append(
                LensCell(
                    L,
                    q,
                    tuple(ids),
                    runner.tokens.strings(ids),
                    tuple(vals[i, j].tolist()),
                    tuple(p[i, j].tolist()),
                )
            )
    row = batch.rows[0]
    return LensResult(
        prompt=specs.PromptTokens(row, runner.tokens.strings(row)),
        site=spec.site,
        layers=layers,
        positions=tuple(positions),
        cells=tuple(cells),
        scale=spec.scale,
        logits=logits.cpu(),
    )
