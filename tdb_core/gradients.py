"""Gradient captures: d(loss)/d(site) for the rows of a Forward or Ablate pass (shared by those
operations, so it lives beside the runner rather than among them).

A request names a loss (the loss specs of Attribute, :mod:`tdb_core.losses`: ``LogitDiffLoss``,
``LogProbLoss``, ``NeuronTrace``, ``HeadTrace``, ``LatentTrace``, ``DirectionLoss``) and
``grad_captures``: sites whose gradient is returned with the reductions of activation captures
(positions, units, top-k, dtype). The pass is one forward with a graph and one
``torch.autograd.grad`` of the sum of the rows' losses (rows are independent, so each row's
gradient is that of its own loss). Positions of the loss count from each row's own end.

With ``freeze_norm_scale`` (the default, as in Attribute) the scale of the norm in front of the
loss's node is held constant in the backward pass: ``ln_final`` for logit losses, the MLP's pre-norm
for a neuron trace, ``ln1`` for a head trace, the norm in front of an SAE's site for a latent trace
(none for a direction loss, which reads the residual itself). Forward values never change: logits
are bit-identical to a pass without gradients.

Sites after the loss's node, and explicit positions after the loss position, have a gradient of
zero by causality; asking for them is an error that says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.hooks import ResolvedCapture, reduce_capture
from tdb_core.losses import (
    DirectionLoss,
    HeadTrace,
    LatentTrace,
    LogitDiffLoss,
    LogProbLoss,
    Loss,
    NeuronTrace,
    Through,
)
from tdb_core.ops.common import capture_result
from tdb_core.plan import Batch, Planner, resolve_positions
from tdb_core.runner import ModelRunner, RunOutput
from tdb_core.schema import Location, norm_name, site_name

RESIDUAL_KEYS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")


@dataclass
class LossPlan:
    """A loss resolved against a batch: per-row positions, the site it reads, the frozen norm."""

    runner: ModelRunner
    loss: Loss
    n_rows: int
    positions: list[int]  # per row: the loss (or traced node's query) position
    keys: list[int] | None  # per row: a head trace's key position
    reads: str  # the site whose value the loss is computed from ("logits" for logit losses)
    norm: str | None  # the norm held constant with freeze_norm_scale

    @property
    def location(self) -> Location:
        return self.runner.schema.location(self.reads)


def plan_loss(runner: ModelRunner, loss: Loss, batch: Batch, n_rows: int) -> LossPlan:
    """Validate ``loss`` against the first ``n_rows`` rows of ``batch`` (every error before work)."""
    dims, schema = runner.schema.dims, runner.schema
    lengths = batch.lengths[:n_rows]

    def pos(p: int, what: str = "loss position") -> list[int]:
        return [r[0] for r in resolve_positions([p], lengths, what)]

    def layer(L: int) -> None:
        checks.index(L, dims.n_layers, "layer")

    if isinstance(loss, LogitDiffLoss):
        checks.target_distractor(loss.target_ids, loss.distractor_ids, dims.d_vocab, required=True)
        return LossPlan(runner, loss, n_rows, pos(loss.position), None, "logits", "ln_final")
    if isinstance(loss, LogProbLoss):
        checks.targets(loss.target_ids, dims.d_vocab)
        return LossPlan(runner, loss, n_rows, pos(loss.position), None, "logits", "ln_final")
    if isinstance(loss, NeuronTrace):
        layer(loss.layer)
        checks.index(loss.neuron, dims.d_mlp, "neuron")
        return LossPlan(
            runner,
            loss,
            n_rows,
            pos(loss.position),
            None,
            site_name("mlp.hook_pre", loss.layer),
            _mlp_norm(runner, loss.layer),
        )
    if isinstance(loss, HeadTrace):
        layer(loss.layer)
        checks.index(loss.head, dims.n_heads, "head")
        q = pos(loss.query_position, "query position")
        keys = None
        if loss.key_position is not None:
            keys = pos(loss.key_position, "key position")
            for row, (qq, kk) in enumerate(zip(q, keys, strict=True)):
                if kk > qq:
                    raise InvalidArgumentError(
                        f"key position {kk} is after query position {qq} in prompt {row}; a "
                        "causal head cannot attend to it"
                    )
        elif loss.through is not Through.V:
            raise InvalidArgumentError("tracing through Q, K or QK needs a key position")
        key = "attn.hook_z" if loss.through is Through.V else "attn.hook_attn_scores"
        return LossPlan(
            runner,
            loss,
            n_rows,
            q,
            keys,
            site_name(key, loss.layer),
            norm_name("ln1", loss.layer),
        )
    if isinstance(loss, DirectionLoss):
        site = schema.get(loss.site)
        if site.kind.key not in RESIDUAL_KEYS:
            raise InvalidArgumentError(
                "a direction loss reads a residual-stream site (hook_resid_pre/mid/post), not "
                f"{checks.quote(loss.site)}"
            )
        if tuple(loss.vector.shape) != (dims.d_model,):
            raise InvalidArgumentError(
                f"direction must have shape [{dims.d_model}], got {list(loss.vector.shape)}"
            )
        return LossPlan(runner, loss, n_rows, pos(loss.position), None, loss.site, None)
    if isinstance(loss, LatentTrace):
        att = runner.saes.get(loss.sae)
        checks.index(loss.latent, att.sae.d_sae, "latent", f" of SAE '{loss.sae}'")
        key, L = att.site.kind.key, att.site.layer
        norm: str | None
        if key in RESIDUAL_KEYS or (L is None and key != "ln_final.hook_normalized"):
            norm = None
        elif key == "ln_final.hook_normalized":
            norm = "ln_final"
        elif key.startswith(("attn.", "ln1.")) or key == "hook_attn_out":
            norm = norm_name("ln1", L)
        else:
            assert L is not None
            norm = _mlp_norm(runner, L)
        return LossPlan(runner, loss, n_rows, pos(loss.position), None, att.acts_pre, norm)
    raise InvalidArgumentError(f"unsupported loss {type(loss).__name__}")


def _mlp_norm(runner: ModelRunner, layer: int) -> str:
    """The norm an MLP reads through: ln2, or ln1 where one norm feeds both branches (Phi)."""
    return norm_name("ln2" if runner.schema.has_kind("ln2.hook_normalized") else "ln1", layer)


def add_loss(planner: Planner, lp: LossPlan, freeze: bool) -> None:
    """What the loss needs in the pass: its graph tensors, the frozen norm, cut paths of Q/K
    traces (a zeroed gradient on the other side of the score)."""
    plan = planner.plan
    if freeze and lp.norm is not None:
        plan.freeze_norms.add(lp.norm)
    loss = lp.loss
    if lp.reads != "logits":
        plan.grad_sites.add(lp.reads)
    if isinstance(loss, HeadTrace):
        L = loss.layer
        plan.grad_sites.update(
            site_name(k, L)
            for k in ("attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_v", "attn.hook_z")
        )
        cut = {Through.Q: "attn.hook_k", Through.K: "attn.hook_q"}.get(loss.through)
        if cut is not None:
            planner.add_intervention(
                specs.Intervention(site_name(cut, L), specs.Zero(), pass_=specs.Pass.BACKWARD),
                range(lp.n_rows),
            )


def loss_values(lp: LossPlan, out: RunOutput) -> torch.Tensor:
    """Each row's loss ``[n_rows]`` (float32, differentiable)."""
    loss, g, n = lp.loss, out.ctx.graph, lp.n_rows
    device = out.logits.device
    rows = torch.arange(n, device=device)
    pos = torch.tensor(lp.positions, device=device)
    if isinstance(loss, LogitDiffLoss):
        lg = out.logits[rows, pos].float()  # [n, vocab]
        return lg[:, list(loss.target_ids)].mean(-1) - lg[:, list(loss.distractor_ids)].mean(-1)
    if isinstance(loss, LogProbLoss):
        lp_ = out.logits[rows, pos].float().log_softmax(-1)
        return lp_[:, list(loss.target_ids)].logsumexp(-1)
    if isinstance(loss, NeuronTrace):
        return g[lp.reads][rows, pos, loss.neuron].float()
    if isinstance(loss, HeadTrace):
        L, h = loss.layer, loss.head
        if loss.through is not Through.V:
            assert lp.keys is not None
            keys = torch.tensor(lp.keys, device=device)
            scores = g[site_name("attn.hook_attn_scores", L)][rows, h, pos, keys]
            blocked = scores <= torch.finfo(scores.dtype).min / 2  # the mask, added
            if bool(blocked.any()):
                row = int(blocked.nonzero()[0, 0])
                raise InvalidArgumentError(
                    f"key position {lp.keys[row]} is masked for query position "
                    f"{lp.positions[row]} of head {h} in layer {L} (prompt {row}): outside the "
                    "layer's sliding window, so its score is -inf; trace a key the head can see"
                )
            return scores.float()
        pattern = g[site_name("attn.hook_pattern", L)][rows, h, pos].detach()  # [n, T_k]
        if lp.keys is not None:
            keep = torch.zeros_like(pattern)
            keep[rows, torch.tensor(lp.keys, device=device)] = 1
            pattern = pattern * keep
        dims = lp.runner.schema.dims
        kv = h // (dims.n_heads // dims.n_kv_heads)  # the kv head that query head h reads
        v = g[site_name("attn.hook_v", L)][:n, :, kv]  # [n, T_k, d_head]
        w_o = lp.runner.adapter.W_O(L)[h]  # [d_head, d_model]
        write: torch.Tensor = torch.einsum("rk,rkd->rd", pattern, v) @ w_o  # [n, d_model]
        u = g[site_name("attn.hook_z", L)][rows, pos, h].detach() @ w_o  # the head's direction
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        along: torch.Tensor = (write * u).sum(-1).float()
        return along
    if isinstance(loss, LatentTrace):
        return g[lp.reads][rows, pos, loss.latent].float()
    assert isinstance(loss, DirectionLoss)
    x = g[lp.reads]
    return (x[rows, pos] @ loss.vector.to(device, x.dtype)).float()


# --------------------------------------------------------------------------------------------------
# Gradient captures


@dataclass
class GradPlan:
    """A loss and the gradient captures of one pass, resolved (see :func:`plan_gradients`)."""

    loss: LossPlan
    captures: list[list[ResolvedCapture]]  # per requested capture: its concrete sites
    capture_bytes: int


def plan_gradients(
    runner: ModelRunner,
    planner: Planner,
    loss: Loss | None,
    grad_captures: tuple[specs.Capture, ...],
    freeze_norm_scale: bool,
    n_rows: int,
) -> GradPlan | None:
    """Validate and plan a request's loss and gradient captures on ``planner``'s pass (None when
    the request has neither). Gradient captures are resolved like activation captures, on a
    planner of their own, so their reductions and byte counts are the same."""
    if loss is None:
        if grad_captures:
            raise InvalidArgumentError(
                "gradient captures need a loss to differentiate: give one of logit_diff, "
                "log_prob, neuron, head, latent or direction"
            )
        return None
    lp = plan_loss(runner, loss, planner.batch, n_rows)
    side = runner.planner(planner.batch)
    groups = [side.add_capture(c) for c in grad_captures]
    at = lp.location
    for group in groups:
        for c in group:
            if runner.schema.location(c.site.name) > at:
                raise InvalidArgumentError(
                    f"site {checks.quote(c.site.name)} comes after the site the loss reads "
                    f"({lp.reads}); its gradient is zero by causality"
                )
            if c.index.pos is not None:
                late = c.index.pos > torch.tensor(lp.positions, device=c.index.pos.device)[:, None]
                if bool(late.any()):
                    row, j = (int(i) for i in late.nonzero()[0])
                    raise InvalidArgumentError(
                        f"position {int(c.index.pos[row, j])} of the gradient capture of "
                        f"{checks.quote(c.site.name)} is after the loss position "
                        f"{lp.positions[row]} of prompt {row}; the gradient there is zero by "
                        "causality"
                    )
    for group in groups:
        for c in group:
            planner.plan.grad_sites.add(c.site.name)
    add_loss(planner, lp, freeze_norm_scale)
    return GradPlan(lp, groups, side.capture_bytes())


@dataclass(frozen=True)
class Gradients:
    loss_values: tuple[float, ...]  # per row
    captures: tuple[specs.CaptureResult, ...]


def compute_gradients(gp: GradPlan, out: RunOutput) -> Gradients:
    """The rows' losses and one ``autograd.grad`` of their sum into the gradient captures."""
    losses = loss_values(gp.loss, out)
    caps = [c for group in gp.captures for c in group]
    names = sorted({c.site.name for c in caps})
    if names:
        tensors = [out.ctx.graph[n] for n in names]
        got = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
        grads = {
            n: (gr if gr is not None else torch.zeros_like(t))
            for n, t, gr in zip(names, tensors, got, strict=True)
        }
        for c in caps:
            reduce_capture(c, grads[c.site.name], None, clone=False)
    return Gradients(
        tuple(float(x) for x in losses.detach().cpu()),
        tuple(capture_result(c) for c in caps),
    )
