"""Attribution: TDB's node table, direct effects, and tracing upstream from an internal node.

One forward pass and one ``torch.autograd.grad`` give, for every node of every family, TDB's four
columns:

    activation        the node's value (neuron: post-activation; head pair: attention weight;
                      head at a query position: ||z||; latent: its value; embedding: 1)
    write_magnitude   size of what the node writes to the residual stream (neuron:
                      activation x ||W_out[n]||, signed; heads: ||write||; embedding: ||resid_pre_0||)
    direct_effect     the node's write vector . the loss gradient at the residual stream just before
                      the loss's node (the final residual stream for a logit loss), with that
                      norm's scale held constant, as TDB does
    total_effect      activation x gradient (first-order estimate of removing the node), or
                      integrated gradients from a zero baseline when ``ig_steps`` > 0

Node families (:class:`~tdb_core.nodes.NodeKind`; rows name their nodes by :class:`~tdb_core.nodes.Node`
key): ``embedding`` (a position's token + position embedding, i.e. resid_pre of block 0,
``blocks.0.hook_resid_pre[pos=P]``), ``mlp_neuron`` (``blocks.L.mlp.hook_post[N,pos=P]``),
``attn_head`` (``blocks.L.attn.hook_pattern[H,pos=Q]``: the head's whole write at query position
Q), ``attn_head_pair`` (``blocks.L.attn.hook_pattern[H,pos=Q,key=K]``: the part of that write that
comes from key position K), and ``sae_latent`` (``sae.ID.hook_sae_acts_post[F,pos=P]``) when SAEs
are spliced in. Zeroing a row's key as an intervention removes exactly that node's write.

A family counts when it writes before the point where direct effects are measured, in the
forward order of :func:`tdb_core.schema.location`.

Writes of all nodes plus the biases add up to the residual stream, so with the norm scale held
constant the direct effects plus ``bias_direct_effect`` and ``constant`` add up to the loss.
"""

from __future__ import annotations

import bisect
import math
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tdb_core import checks, nodes, specs
from tdb_core.adapter import Norm
from tdb_core.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
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
from tdb_core.nodes import Node, NodeKind
from tdb_core.plan import Batch, Planner, check_response_bytes, resolve_positions
from tdb_core.runner import ModelRunner, RunOutput
from tdb_core.sae.attach import AttachedSae
from tdb_core.schema import Location, location, norm_name, site_name

# --------------------------------------------------------------------------------------------------
# Specs (data only; the losses live in tdb_core.losses, shared with gradient captures)

__all__ = [
    "DirectionLoss",
    "HeadTrace",
    "LatentTrace",
    "LogProbLoss",
    "LogitDiffLoss",
    "Loss",
    "NeuronTrace",
    "Through",
]

FAMILIES = tuple(
    str(k)
    for k in (
        NodeKind.EMBEDDING,
        NodeKind.MLP_NEURON,
        NodeKind.ATTN_HEAD,
        NodeKind.ATTN_HEAD_PAIR,
        NodeKind.SAE_LATENT,
    )
)
COLUMNS = ("activation", "write_magnitude", "direct_effect", "total_effect")
TOP_ONLY = frozenset({"activation", "write_magnitude"})  # no bottom-k, as TDB
_TOKEN_BYTES = 16  # a token string's bytes in a response estimate (most are far shorter)


@dataclass(frozen=True)
class AttributeSpec:
    """One prompt (or two, or one plus an intervened copy) and a loss.

    ``second``: a second prompt of the same length; ``interventions``: edits applied to a second
    copy of the prompt (baseline vs ablated). At most one of them. Node sets are aligned across the
    two rows. ``families``: which node families to rank (default all the model has).
    """

    prompt: specs.Prompt
    loss: Loss
    second: specs.Prompt | None = None
    interventions: tuple[specs.Intervention, ...] = ()
    top_k: int = 10
    families: tuple[str, ...] = ()
    ig_steps: int = 0
    freeze_norm_scale: bool = True
    node_tokens: int = 5
    prepend_bos: bool | None = None


@dataclass(frozen=True)
class TokenScore:
    token_id: int
    token: str
    score: float


@dataclass(frozen=True)
class NodeRow:
    """A node with every column's value, per prompt row (one or two)."""

    node: Node  # a node at a position: ``node.key`` names it, ``node.label`` is a short name
    values: tuple[dict[str, float], ...]  # per row: column -> value
    upvoted: tuple[TokenScore, ...] = ()
    downvoted: tuple[TokenScore, ...] = ()
    input_tokens: tuple[TokenScore, ...] = ()


@dataclass(frozen=True)
class AttributeResult:
    prompts: tuple[specs.PromptTokens, ...]
    loss_values: tuple[float, ...]  # per row
    rows: tuple[NodeRow, ...]  # the union of every column's top/bottom-k, deterministic order
    token_attribution: tuple[tuple[float, ...], ...]  # per row, per position: embedding act x grad
    bias_direct_effect: tuple[float, ...]  # per row: biases' writes . gradient
    constant: tuple[float, ...]  # per row: loss terms no node writes (norm bias, unembed bias)
    loss_position: int
    stats: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Internals


@dataclass
class _Family:
    """One family at one layer: column tensors ``[rows, *shape]``, how to name an index, and the
    site whose value integrated gradients scale (its values, summed over the last axis where the
    site has one more than the columns, are the family's)."""

    kind: NodeKind
    layer: int | None
    columns: dict[str, torch.Tensor]
    decode: Callable[[tuple[int, ...]], Node]
    ig_site: str
    write: Callable[[int, tuple[int, ...]], torch.Tensor] | None = None  # row, index -> [d_model]


@dataclass
class _Point:
    """Where the loss's direct effects are measured: a residual site, the norm held constant
    there, and where the loss reads the forward pass (``at``: the point's site, or the logits).

    An attention layer writes at its ``hook_attn_out`` and an MLP at its ``hook_mlp_out``: they
    count when that location is before ``at``. SAE latents count when the site they reconstruct
    is at or before ``at`` (the residual there includes their reconstruction).
    """

    site: str
    norm: str | None
    at: Location
    position: int | None = None  # for traces: the traced node's position


def _residual_point(site: str, layer: int, key: str, position: int | None) -> _Point:
    return _Point(site, None, location(key, layer), position)


_Tensors = dict[str, torch.Tensor]


class _WeightCache:
    """What the node table derives from the weights alone, kept between requests (per layer:
    ``W_out`` row norms, the triangular factors of ``W_O``). Everything is dropped together when
    any parameter of the model changes (its storage, version counter, dtype or device), so a
    kept value always equals a fresh computation."""

    def __init__(self) -> None:
        self.stamp: object = None
        self.tensors: dict[Hashable, torch.Tensor] = {}

    def tensor(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        t = self.tensors.get(key)
        if t is None:
            t = self.tensors[key] = make()
        return t


_WEIGHT_CACHES: weakref.WeakKeyDictionary[ModelRunner, _WeightCache] = weakref.WeakKeyDictionary()


def _weight_cache(runner: ModelRunner) -> _WeightCache:
    """The runner's :class:`_WeightCache`, emptied first if any parameter changed since."""
    hf: Any = runner.adapter.model
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in hf.parameters())
    cache = _WEIGHT_CACHES.get(runner)
    if cache is None:
        cache = _WEIGHT_CACHES[runner] = _WeightCache()
    if cache.stamp != stamp:
        cache.tensors.clear()
        cache.stamp = stamp
    return cache


def _head_factors(w_o: torch.Tensor) -> torch.Tensor:
    """Per head, the triangular ``R`` of ``W_O[h]^T = Q R`` ``[H, d_head, d_head]`` (fp32, from a
    float64 QR): ``||x @ W_O[h]|| = ||x @ R[h]^T||`` for any ``x``, since ``Q`` has orthonormal
    columns; the write magnitudes of every head and key position in ``d_head`` work, not
    ``d_model``, as a sum of squares (no cancellation)."""
    r: torch.Tensor = torch.linalg.qr(w_o.double().transpose(1, 2), mode="r").R
    return r.float()


SPARSE = True
"""Compute only what the loss can see: logits at the loss position, and products with the loss
gradient at positions where it is not zero (a logit loss or a trace reads one position; every
other position's direct effects are zero). False computes every position, as a check."""


def _live_positions(d: torch.Tensor) -> torch.Tensor:
    """Flat indices (over ``rows * T``) of the positions where ``d`` ``[rows, T, d_model]`` is
    not all zeros."""
    return d.reshape(d.shape[0] * d.shape[1], -1).ne(0).any(-1).nonzero().flatten()


def _on_live_positions(
    d: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], live: torch.Tensor | None = None
) -> torch.Tensor:
    """``fn(d)`` for a linear map ``fn`` of the last axis of ``d`` ``[rows, T, d_model]``,
    computed only at the positions where ``d[r, t]`` is not all zeros (zeros elsewhere);
    ``live``: those positions (:func:`_live_positions` of ``d``), when already known."""
    if not SPARSE:
        return fn(d)
    rows, T = d.shape[:2]
    flat = d.reshape(rows * T, -1)
    if live is None:
        live = _live_positions(d)  # [n]
    y = fn(flat[live])  # [n, *out]
    out = torch.zeros(rows * T, *y.shape[1:], dtype=y.dtype, device=y.device)
    out[live] = y
    return out.reshape(rows, T, *y.shape[1:])


@contextmanager
def _unembedding_columns(runner: ModelRunner, columns: list[int] | None) -> Iterator[None]:
    """While it is open (a pass of this request, the model's lock held), the model's unembedding
    computes only the logits of ``columns`` and leaves every other logit 0, when it is a plain
    ``nn.Linear``: a loss that reads only those columns gets the same values (to float rounding)
    without a pass over ``W_U`` in the forward nor in the backward. What the model does after
    its unembedding (e.g. Gemma 2's soft cap) is elementwise, so it sees the same numbers."""
    hf: Any = runner.adapter.model
    head = hf.get_output_embeddings() if columns is not None else None
    if type(head) is not torch.nn.Linear or "forward" in vars(head):  # e.g. an offload hook's
        yield
        return
    idx = torch.tensor(columns, device=head.weight.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = head.weight.index_select(0, idx)
        b = head.bias.index_select(0, idx) if head.bias is not None else None
        y = F.linear(x, w, b)  # [..., len(columns)]
        out = torch.zeros(*x.shape[:-1], head.out_features, device=y.device, dtype=y.dtype)
        return out.index_copy(-1, idx, y)

    setattr(head, "forward", forward)  # noqa: B010  (an instance attribute, undone below)
    try:
        yield
    finally:
        del head.forward


def _pair_products(v: torch.Tensor, ow: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
    """``v[r, k, h] . ow[r, q, h]`` ``[rows, H, T_q, T_k]`` for values ``v`` ``[rows, T_k, H,
    d_head]`` and ``ow`` ``[rows, T_q, H, d_head]``; with ``live`` (flat ``rows * T_q``
    positions where ``ow`` may not be zero, see :func:`_live_positions`), computed there only."""
    if not SPARSE or live is None:
        return torch.einsum("rkhd,rqhd->rhqk", v, ow)
    rows, T, H = ow.shape[:3]
    out = torch.zeros(rows, H, T, v.shape[1], device=v.device, dtype=v.dtype)
    r_i, q_i = live // T, live % T
    out[r_i, :, q_i, :] = torch.einsum("nkhd,nhd->nhk", v[r_i], ow[r_i, q_i])
    return out


def _row_vector(x: torch.Tensor) -> Callable[[int, tuple[int, ...]], torch.Tensor]:
    """The write of a node that is one vector of ``x`` ``[rows, T, d_model]`` per position."""

    def write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
        v: torch.Tensor = x[r, idx[0]]
        return v

    return write


def _resolve_loss_tokens(runner: ModelRunner, loss: LogitDiffLoss | LogProbLoss) -> None:
    vocab = runner.schema.dims.d_vocab
    if isinstance(loss, LogitDiffLoss):
        checks.target_distractor(loss.target_ids, loss.distractor_ids, vocab, required=True)
    else:
        checks.targets(loss.target_ids, vocab)


class _Attribution:
    """State of one attribution request."""

    cache: _WeightCache  # set when the columns are computed (with the model's lock held)
    live: torch.Tensor  # flat positions where the loss gradient at the point is not zero

    def __init__(self, runner: ModelRunner, spec: AttributeSpec) -> None:
        self.runner = runner
        self.spec = spec
        self.adapter = runner.adapter
        self.dims = runner.schema.dims
        if spec.second is not None and spec.interventions:
            raise InvalidArgumentError("give a second prompt or interventions, not both")
        checks.top_k(spec.top_k, lo=1)
        checks.top_k(spec.node_tokens, what="node_tokens")
        checks.in_range(spec.ig_steps, 0, 256, "ig_steps")
        prompts = (
            (spec.prompt,)
            if spec.second is None and not spec.interventions
            else (spec.prompt, spec.second or spec.prompt)
        )
        self.batch = runner.tokens.make_batch(prompts, prepend_bos=spec.prepend_bos)
        if len(set(self.batch.lengths)) != 1:
            raise InvalidArgumentError(
                f"the two prompts have {self.batch.lengths[0]} and {self.batch.lengths[1]} tokens; "
                "aligned node tables need prompts of equal length"
            )
        self.n_rows = self.batch.n_prompts
        self.T = self.batch.max_len
        available = {
            NodeKind.EMBEDDING,
            NodeKind.MLP_NEURON,
            NodeKind.ATTN_HEAD,
            NodeKind.ATTN_HEAD_PAIR,
        }
        if runner.saes:
            available.add(NodeKind.SAE_LATENT)
        fams = set(spec.families) if spec.families else set(available)
        unknown = fams - set(FAMILIES)
        if unknown:
            raise InvalidArgumentError(f"unknown node families {sorted(unknown)}; use {FAMILIES}")
        missing = fams - available
        if missing:
            raise NotFoundError(f"node families {sorted(missing)} are not available on this model")
        self.families = fams
        # the attached SAEs, read once: a LoadSae during this request must not change them
        self.attached = tuple(runner.saes.values())
        self.point = self._point()

    # -- the loss and where direct effects are measured
    def _point(self) -> _Point:
        loss, n_layers = self.spec.loss, self.dims.n_layers
        last = site_name("hook_resid_post", n_layers - 1)
        if isinstance(loss, LogitDiffLoss):
            _resolve_loss_tokens(self.runner, loss)
            return _Point(last, norm_name("ln_final"), location("logits"))
        if isinstance(loss, LogProbLoss):
            _resolve_loss_tokens(self.runner, loss)
            return _Point(last, norm_name("ln_final"), location("logits"))
        if isinstance(loss, NeuronTrace):
            self._check_layer(loss.layer)
            checks.index(loss.neuron, self.dims.d_mlp, "neuron")
            (pos,) = resolve_positions([loss.position], self.batch.lengths[:1])[0]
            return self._mlp_side_point(loss.layer, pos)
        if isinstance(loss, HeadTrace):
            self._check_layer(loss.layer)
            checks.index(loss.head, self.dims.n_heads, "head")
            (q,) = resolve_positions(
                [loss.query_position], self.batch.lengths[:1], "query position"
            )[0]
            if loss.key_position is not None:
                (k,) = resolve_positions(
                    [loss.key_position], self.batch.lengths[:1], "key position"
                )[0]
                if k > q:
                    raise InvalidArgumentError(
                        f"key position {k} is after query position {q}; a "
                        "causal head cannot attend to it"
                    )
            elif loss.through is not Through.V:
                raise InvalidArgumentError("tracing through Q, K or QK needs a key position")
            return _Point(
                site_name("hook_resid_pre", loss.layer),
                norm_name("ln1", loss.layer),
                location("hook_resid_pre", loss.layer),
                q,
            )
        if isinstance(loss, DirectionLoss):
            site = self.runner.schema.get(loss.site)
            if site.kind.key not in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
                raise InvalidArgumentError(
                    f"a direction loss reads a residual-stream site "
                    f"(hook_resid_pre/mid/post), not '{loss.site}'"
                )
            if tuple(loss.vector.shape) != (self.dims.d_model,):
                raise InvalidArgumentError(
                    f"direction must have shape [{self.dims.d_model}], got "
                    f"{list(loss.vector.shape)}"
                )
            (pos,) = resolve_positions([loss.position], self.batch.lengths[:1])[0]
            return _residual_point(loss.site, site.layer or 0, site.kind.key, pos)
        if isinstance(loss, LatentTrace):
            att = self.sae(loss.sae)
            checks.index(loss.latent, att.sae.d_sae, "latent", f" of SAE '{loss.sae}'")
            (pos,) = resolve_positions([loss.position], self.batch.lengths[:1])[0]
            key, layer = att.site.kind.key, att.site.layer
            if key in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
                p = _residual_point(att.input, layer or 0, key, pos)
                return p
            if key == "ln_final.hook_normalized":  # read through the final norm, as logits are
                return _Point(
                    site_name("hook_resid_post", n_layers - 1),
                    norm_name("ln_final"),
                    location(key),
                    pos,
                )
            if layer is None:  # hook_embed: only the embeddings come before it
                return _Point(att.input, None, location(key), pos)
            if key.startswith(("attn.", "ln1.")) or key == "hook_attn_out":
                return _Point(
                    site_name("hook_resid_pre", layer),
                    norm_name("ln1", layer),
                    location("hook_resid_pre", layer),
                    pos,
                )
            return self._mlp_side_point(layer, pos)
        raise InvalidArgumentError(f"unsupported loss {type(loss).__name__}")

    def _mlp_side_point(self, layer: int, pos: int) -> _Point:
        """The residual stream an MLP of ``layer`` reads, with the norm it reads it through (ln2,
        or ln1 when one norm feeds both branches, as in Phi)."""
        norm = norm_name(
            "ln2" if self.runner.schema.has_kind("ln2.hook_normalized") else "ln1", layer
        )
        key = "hook_resid_pre" if self.adapter.parallel_blocks else "hook_resid_mid"
        return _Point(site_name(key, layer), norm, location(key, layer), pos)

    def _check_layer(self, layer: int) -> None:
        checks.index(layer, self.dims.n_layers, "layer")

    def loss_position(self) -> int:
        loss = self.spec.loss
        if isinstance(loss, (LogitDiffLoss, LogProbLoss)):
            (pos,) = resolve_positions([loss.position], self.batch.lengths[:1], "loss position")[0]
            return pos
        assert self.point.position is not None
        return self.point.position

    def check_ig_cost(self) -> None:
        """Refuse, before any work, integrated gradients whose passes exceed the row budget."""
        steps = self.spec.ig_steps
        if not steps:
            return
        sites = int(NodeKind.EMBEDDING in self.families) + len(self.saes())
        sites += len(self.mlp_layers()) if NodeKind.MLP_NEURON in self.families else 0
        per_attn_layer = int(NodeKind.ATTN_HEAD in self.families) + int(
            NodeKind.ATTN_HEAD_PAIR in self.families
        )
        sites += per_attn_layer * len(self.attn_layers())
        rows = sites * steps * self.n_rows
        limit = self.runner.limits.max_pass_rows
        if rows > limit:
            raise ResourceExhaustedError(
                f"integrated gradients with {steps} steps over {sites} sites needs {rows} prompt "
                f"rows of forward and backward passes, over the server's limit of {limit}; use "
                "fewer steps or fewer node families"
            )

    def sae(self, sae_id: str) -> AttachedSae:
        """An SAE attached when the request began (NOT_FOUND names the attached ones)."""
        for a in self.attached:
            if a.id == sae_id:
                return a
        return self.runner.saes.get(sae_id)

    def check_response_bytes(self) -> None:
        """Refuse, before any work, a table whose response would be over the server's limit:
        up to six top/bottom-k lists per row, each node with its columns and ``node_tokens``
        tokens in each of three lists."""
        k, rows, tokens = self.spec.top_k, self.n_rows, self.spec.node_tokens
        per_node = 96 + 4 * 6 * rows + 3 * tokens * (16 + _TOKEN_BYTES)
        n_bytes = 6 * k * rows * per_node + rows * self.T * 6
        check_response_bytes(n_bytes, self.runner.limits.max_response_bytes)

    def mlp_layers(self) -> list[int]:
        """Layers whose MLP writes before the point."""
        at = self.point.at
        return [L for L in range(self.dims.n_layers) if location("hook_mlp_out", L) < at]

    def attn_layers(self) -> list[int]:
        """Layers whose attention writes before the point."""
        at = self.point.at
        return [L for L in range(self.dims.n_layers) if location("hook_attn_out", L) < at]

    def saes(self) -> list[AttachedSae]:
        """SAEs whose latents write before the point: the site an SAE reconstructs is at or
        before it (not the traced SAE itself)."""
        if NodeKind.SAE_LATENT not in self.families:
            return []
        traced = self.spec.loss.sae if isinstance(self.spec.loss, LatentTrace) else None
        schema = self.runner.schema
        return [
            a
            for a in self.attached
            if schema.location(a.site.name) <= self.point.at and a.id != traced
        ]

    # -- the pass
    def plan(self, planner: Planner) -> None:
        """Gradient sites of every node family, plus the loss's own needs."""
        plan = planner.plan
        plan.grad_sites.update({nodes.EMBEDDING_SITE, self.point.site})
        for L in self.mlp_layers():
            plan.grad_sites.add(site_name("mlp.hook_post", L))
        for L in self.attn_layers():
            plan.grad_sites.update(
                {site_name(k, L) for k in ("attn.hook_z", "attn.hook_pattern", "attn.hook_v")}
            )
        for att in self.saes():
            plan.grad_sites.update({att.acts, att.input})
        self.plan_loss(planner, range(self.n_rows))
        if self.spec.interventions:
            for iv in self.spec.interventions:
                planner.add_intervention(iv, [1])

    def plan_loss(self, planner: Planner, rows: range) -> None:
        """What the loss needs: its graph tensors, the frozen norm, cut paths for Q/K traces."""
        plan = planner.plan
        if self.spec.freeze_norm_scale and self.point.norm is not None:
            plan.freeze_norms.add(self.point.norm)
        loss = self.spec.loss
        if SPARSE and isinstance(loss, (LogitDiffLoss, LogProbLoss)):
            plan.logit_positions = (self.loss_position(),)  # the unembedding at one position
        if isinstance(loss, NeuronTrace):
            plan.grad_sites.add(site_name("mlp.hook_pre", loss.layer))
        if isinstance(loss, HeadTrace):
            plan.grad_sites.update(
                site_name(k, loss.layer)
                for k in (
                    "attn.hook_attn_scores",
                    "attn.hook_pattern",
                    "attn.hook_v",
                    "attn.hook_z",
                )
            )
            cut = {Through.Q: ("attn.hook_k",), Through.K: ("attn.hook_q",), Through.QK: ()}.get(
                loss.through, ()
            )
            for key in cut:
                planner.add_intervention(
                    specs.Intervention(
                        site_name(key, loss.layer), specs.Zero(), pass_=specs.Pass.BACKWARD
                    ),
                    rows,
                )
        if isinstance(loss, DirectionLoss):
            plan.grad_sites.add(loss.site)
        if isinstance(loss, LatentTrace):
            att = self.sae(loss.sae)
            plan.grad_sites.update({att.acts_pre, att.input})

    def logit_columns(self) -> list[int] | None:
        """The only logits the loss reads (a logit difference's tokens; None: all of them)."""
        loss = self.spec.loss
        if SPARSE and isinstance(loss, LogitDiffLoss):
            return sorted(set(loss.target_ids) | set(loss.distractor_ids))
        return None

    def loss_values(self, out: RunOutput, rows: int | None = None) -> torch.Tensor:
        """The loss of each of the first ``rows`` rows (default: the prompts), differentiable."""
        loss, g = self.spec.loss, out.ctx.graph
        rows = self.n_rows if rows is None else rows
        if isinstance(loss, LogitDiffLoss):
            lg = out.logits_at(self.loss_position())[:rows].float()
            return lg[:, list(loss.target_ids)].mean(-1) - lg[:, list(loss.distractor_ids)].mean(-1)
        if isinstance(loss, LogProbLoss):
            lp = out.logits_at(self.loss_position())[:rows].float().log_softmax(-1)
            return lp[:, list(loss.target_ids)].logsumexp(-1)
        if isinstance(loss, NeuronTrace):
            return g[site_name("mlp.hook_pre", loss.layer)][
                :rows, self.point.position, loss.neuron
            ].float()
        if isinstance(loss, HeadTrace):
            L, q, h = loss.layer, self.point.position, loss.head
            if loss.through is not Through.V:
                assert loss.key_position is not None  # checked when the point was made
                (k,) = resolve_positions([loss.key_position], self.batch.lengths[:1])[0]
                return g[site_name("attn.hook_attn_scores", L)][:rows, h, q, k].float()
            pattern = g[site_name("attn.hook_pattern", L)][:rows, h, q].detach()  # [rows, T_k]
            kv = h // (self.dims.n_heads // self.dims.n_kv_heads)  # the kv head that h reads
            v = g[site_name("attn.hook_v", L)][:rows, :, kv]  # [rows, T_k, d_head]
            if loss.key_position is not None:
                (k,) = resolve_positions([loss.key_position], self.batch.lengths[:1])[0]
                keep = torch.zeros_like(pattern)
                keep[:, k] = 1
                pattern = pattern * keep
            w_o = self.adapter.W_O(loss.layer)[h]  # [d_head, d_model]
            z_v = torch.einsum("rk,rkd->rd", pattern, v)  # [rows, d_head]
            write = z_v @ w_o  # [rows, d_model]
            u = g[site_name("attn.hook_z", L)][:rows, q, h].detach() @ w_o
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            along: torch.Tensor = (write * u).sum(-1).float()
            return along
        if isinstance(loss, LatentTrace):
            att = self.sae(loss.sae)
            return g[att.acts_pre][:rows, self.point.position, loss.latent].float()
        assert isinstance(loss, DirectionLoss)
        vec = loss.vector.to(out.logits.device, g[loss.site].dtype)
        return (g[loss.site][:rows, self.point.position] @ vec).float()

    # -- the table
    def families_from(self, out: RunOutput, grads: dict[str, torch.Tensor]) -> list[_Family]:
        g, rows, T = out.ctx.graph, self.n_rows, self.T
        self.cache = _weight_cache(self.runner)
        d = grads[self.point.site][:rows].detach().float()  # [rows, T, d_model]
        if self.point.position is not None:  # a trace: only the traced position's residual counts
            mask = torch.zeros(T, device=d.device)
            mask[self.point.position] = 1
            d = d * mask[None, :, None]
        self.live = _live_positions(d)
        fams: list[_Family] = []
        if NodeKind.EMBEDDING in self.families:
            x = g[nodes.EMBEDDING_SITE][:rows].detach().float()  # [rows, T, d_model]
            gx = grads[nodes.EMBEDDING_SITE][:rows].float()
            cols = {
                "activation": torch.ones(rows, T, device=x.device),
                "write_magnitude": x.norm(dim=-1),
                "direct_effect": (x * d).sum(-1),
                "total_effect": (x * gx).sum(-1),
            }
            fams.append(
                _Family(
                    NodeKind.EMBEDDING,
                    None,
                    cols,
                    lambda idx: nodes.embedding(idx[0]),
                    nodes.EMBEDDING_SITE,
                    _row_vector(x),
                )
            )
        for L in self.attn_layers():
            fams.extend(self._attn_families(L, g, grads, d))
        if NodeKind.MLP_NEURON in self.families:
            for L in self.mlp_layers():
                fams.append(self._mlp_family(L, g, grads, d))
        for att in self.saes():
            fams.append(self._sae_family(att, g, grads, d))
        return fams

    def _sae_family(
        self, att: AttachedSae, g: _Tensors, grads: _Tensors, d: torch.Tensor
    ) -> _Family:
        rows = self.n_rows
        z = g[att.acts][:rows].detach().float()  # [rows, T, d_sae]
        gz = grads[att.acts][:rows].float()
        stats = att.sae.input_stats(g[att.input][:rows].detach())
        scale = (
            stats.scale.float() if stats is not None else torch.ones((), device=z.device)
        )  # [rows, T, 1]
        dirs = att.residual_directions(self.adapter)  # [d_sae, d_model] or None
        D = att.sae.decoder_directions().float()
        norms = (dirs if dirs is not None else D).norm(dim=-1)  # [d_sae]
        de = torch.zeros_like(z) if dirs is None else z * scale * (d @ dirs.T)
        cols = {
            "activation": z,
            "write_magnitude": z * scale * norms,
            "direct_effect": de,
            "total_effect": z * gz,
        }

        def write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
            p, i = idx
            s = scale if scale.dim() == 0 else scale[r, p, 0]
            w: torch.Tensor = (
                z[r, p, i] * s * (dirs[i] if dirs is not None else torch.zeros(self.dims.d_model))
            )
            return w

        return _Family(
            NodeKind.SAE_LATENT,
            None,
            cols,
            lambda idx: nodes.sae_latent(att.id, idx[1], idx[0]),
            att.acts,
            write if dirs is not None else None,
        )

    def _post_norm_gain(self, norm: Norm | None, raw: torch.Tensor) -> torch.Tensor:
        """Per-position factor turning a raw write into its residual write (post-norm, scale
        held constant): ``gain / scale`` ``[rows, T, d_model]``; 1 without a post norm."""
        if norm is None:
            return torch.ones((), device=raw.device)
        gain = norm.gain()
        factor: torch.Tensor = (gain.float() if gain is not None else 1.0) / norm.scale(raw).float()
        return factor

    def _mlp_family(self, L: int, g: _Tensors, grads: _Tensors, d: torch.Tensor) -> _Family:
        rows = self.n_rows
        site = site_name("mlp.hook_post", L)
        post = g[site][:rows].detach().float()  # [rows, T, d_mlp]
        gpost = grads[site][:rows].float()
        w_out = self.adapter.W_out(L).float()  # [d_mlp, d_model]
        norm = self.adapter.post_mlp_norm(L)
        factor = torch.ones((), device=post.device)
        if norm is not None:
            b = self.adapter.b_out(L)
            raw = post @ w_out + (b.float() if b is not None else 0.0)
            factor = self._post_norm_gain(norm, raw)  # [rows, T, d_model]
        d_eff = d * factor  # gradient seen by the raw write
        live = self.live if norm is None else None  # where d_eff is d: its positions
        if norm is not None:
            write_mag = (
                post.abs() * ((w_out[None, None] * factor[:, :, None]).norm(dim=-1)) * post.sign()
            )
        else:
            w_norm = self.cache.tensor(("w_out_norm", L), lambda: w_out.norm(dim=-1))  # [d_mlp]
            write_mag = post * w_norm
        cols = {
            "activation": post,
            "write_magnitude": write_mag,
            "direct_effect": _on_live_positions(d_eff, lambda x: F.linear(x, w_out), live).mul_(
                post
            ),
            "total_effect": post * gpost,
        }

        def write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
            p, n = idx
            f = factor if factor.dim() == 0 else factor[r, p]
            w: torch.Tensor = post[r, p, n] * w_out[n] * f
            return w

        return _Family(
            NodeKind.MLP_NEURON,
            L,
            cols,
            lambda idx: nodes.mlp_neuron(L, idx[1], idx[0]),
            site,
            write,
        )

    def _attn_families(
        self, L: int, g: _Tensors, grads: _Tensors, d: torch.Tensor
    ) -> list[_Family]:
        rows = self.n_rows
        z_site, pattern_site = site_name("attn.hook_z", L), site_name("attn.hook_pattern", L)
        z = g[z_site][:rows].detach().float()  # [rows, T, H, d_head]
        gz = grads[z_site][:rows].float()
        w_o = self.adapter.W_O(L).float()  # [H, d_head, d_model]
        norm = self.adapter.post_attn_norm(L)
        factor = torch.ones((), device=z.device)
        if norm is not None:
            b = self.adapter.b_O(L)
            raw = torch.einsum("rthd,hdm->rtm", z, w_o) + (b.float() if b is not None else 0.0)
            factor = self._post_norm_gain(norm, raw)  # [rows, T, d_model]
        d_eff = d * factor  # [rows, T, d_model]
        live = self.live if norm is None else None  # where d_eff is d: its positions
        H, d_head, d_model = w_o.shape
        w_o_rows = w_o.reshape(H * d_head, d_model)
        # [rows, T, H, d_head]: W_O[h] d_eff[t]
        ow = _on_live_positions(  # zeros where d_eff is (at every position but ``live``)
            d_eff, lambda x: F.linear(x, w_o_rows).reshape(*x.shape[:-1], H, d_head), live
        )
        fams = []
        # Without a post norm, write magnitudes come from W_O's triangular factors (d_head work
        # per head and position) and a returned row's write is computed when it is read; with
        # one, the factor varies over d_model, so the writes are materialized.
        r_o = (
            None
            if norm is not None
            else self.cache.tensor(("w_o_r", L), lambda: _head_factors(w_o))
        )
        if NodeKind.ATTN_HEAD in self.families:
            head_write: Callable[[int, tuple[int, ...]], torch.Tensor]
            if r_o is None:
                result = torch.einsum("rthd,hdm->rthm", z, w_o)  # [rows, T, H, d_model]
                # the residual write: the raw write through the post norm's factor
                result_w = result * factor[:, :, None]
                write_mag = result_w.norm(dim=-1)

                def head_write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
                    return result_w[r, idx[0], idx[1]]

            else:
                write_mag = torch.einsum("rthd,hed->rthe", z, r_o).norm(dim=-1)

                def head_write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
                    t, h = idx
                    return z[r, t, h] @ w_o[h]

            cols = {
                "activation": z.norm(dim=-1),
                "write_magnitude": write_mag,
                "direct_effect": (z * ow).sum(-1),
                "total_effect": (z * gz).sum(-1),
            }
            fams.append(
                _Family(
                    NodeKind.ATTN_HEAD,
                    L,
                    cols,
                    lambda idx: nodes.attn_head(L, idx[1], idx[0]),
                    z_site,  # a head's write at a position is z[pos, head] @ W_O[head]
                    head_write,
                )
            )
        if NodeKind.ATTN_HEAD_PAIR in self.families:
            p = g[pattern_site][:rows].detach().float()  # [rows, H, T_q, T_k]
            gp = grads[pattern_site][:rows].float()
            v = g[site_name("attn.hook_v", L)][:rows].detach().float()  # [rows, T_k, H_kv, d_h]
            if v.shape[2] != w_o.shape[0]:  # grouped-query attention: one copy per query head
                v = v.repeat_interleave(w_o.shape[0] // v.shape[2], dim=2)
            vo: torch.Tensor | None = None  # [rows, H, T_k, d_model], with a post norm only
            if r_o is None:
                vo = torch.einsum("rkhd,hdm->rhkm", v, w_o)
                vo_mag = torch.einsum("rhkm,rqm->rhqk", vo.pow(2), factor.pow(2)).sqrt()
            else:  # ||v[k, h] @ W_O[h]||, the same for every query
                vo_mag = torch.einsum("rkhd,hed->rhke", v, r_o).norm(dim=-1)[:, :, None, :]
            cols = {
                "activation": p,
                "write_magnitude": p.abs().mul_(vo_mag),
                "direct_effect": _pair_products(v, ow, live).mul_(p),
                "total_effect": p * gp,
            }

            def write(r: int, idx: tuple[int, ...]) -> torch.Tensor:
                h, q, k = idx
                if vo is None:
                    return p[r, h, q, k] * (v[r, k, h] @ w_o[h])
                w: torch.Tensor = p[r, h, q, k] * vo[r, h, k] * factor[r, q]
                return w

            fams.append(
                _Family(
                    NodeKind.ATTN_HEAD_PAIR,
                    L,
                    cols,
                    lambda idx: nodes.attn_head(L, idx[0], idx[1], idx[2]),
                    pattern_site,
                    write,
                )
            )
        return fams


def _topk_union(fams: list[_Family], k: int, n_rows: int) -> list[tuple[int, tuple[int, ...]]]:
    """Top-k (and bottom-k) of every column across all families and rows; union, in a fixed order:
    columns in COLUMNS order, top before bottom, within each by value then family order.

    The nodes of each pick are those of one ``topk`` over every family's column laid end to end
    (NaN ranked as 0, infinities as the largest finite values); :func:`_pick` finds the same
    nodes without building that tensor when the k-th value is not tied across the boundary.
    """
    sizes = [f.columns["activation"][0].numel() for f in fams]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    chosen: list[tuple[int, tuple[int, ...]]] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for col in COLUMNS:
        parts = [f.columns[col].reshape(n_rows, -1) for f in fams]  # [rows, n_f] each
        kk = min(k, offsets[-1])
        for largest in (True, False) if col not in TOP_ONLY else (True,):
            picks = []
            for vals, idx in _pick(parts, kk, largest):
                for v, i in zip(vals, idx, strict=True):
                    picks.append((-v if largest else v, i))
            picks_sorted = sorted(set(picks), key=lambda t: (t[0], t[1]))
            for _, flat_i in picks_sorted:
                fam_i = bisect.bisect_right(offsets, flat_i) - 1
                shape = fams[fam_i].columns[col].shape[1:]
                local = flat_i - offsets[fam_i]
                idx_t = _unravel(local, tuple(shape))
                key = (fam_i, idx_t)
                if key not in seen:
                    seen.add(key)
                    chosen.append(key)
    return chosen


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index into ``shape`` of a flat (row-major) offset, as ``torch.unravel_index``."""
    out = []
    for n in reversed(shape):
        flat, i = divmod(flat, n)
        out.append(i)
    return tuple(reversed(out))


_BLOCK = 256  # elements per block when bounding the k-th value by block extremes


def _pick(parts: list[torch.Tensor], k: int, largest: bool) -> list[tuple[list[float], list[int]]]:
    """Per row: the values and flat indices (into ``parts`` laid end to end) of
    ``torch.cat(parts, 1).nan_to_num(nan=0.0).topk(k, largest=largest)``, as a set.

    One pass takes each block's extreme; at least k blocks hold a value at or beyond the k-th
    most extreme block extreme, so only the blocks reaching that bound are searched. When the
    k-th value is tied and not every tied node fits, which ones ``topk`` keeps is up to its
    implementation: then (and where NaN or infinities take part) this runs that very ``topk``.
    """
    rows = parts[0].shape[0]
    extremes = []
    first_block = [0]  # per part: index of its first block (a part's last block may be short)
    for p in parts:
        n = p.shape[1]
        full = n - n % _BLOCK
        if full:
            blocks = p[:, :full].reshape(rows, -1, _BLOCK)
            extremes.append(blocks.amax(-1) if largest else blocks.amin(-1))
        if n > full:
            tail = p[:, full:]
            extremes.append((tail.amax(-1) if largest else tail.amin(-1))[:, None])
        first_block.append(first_block[-1] + -(-n // _BLOCK))
    ext = torch.cat(extremes, dim=1)  # [rows, n_blocks]; NaN anywhere shows up here
    starts = [0]
    for p in parts:
        starts.append(starts[-1] + p.shape[1])
    out: list[tuple[list[float], list[int]]] = []
    for r in range(rows):
        exact = None
        if ext.shape[1] >= k and not bool(ext[r].isnan().any()):
            bound = ext[r].topk(k, largest=largest).values[-1]
            reach = (ext[r] >= bound) if largest else (ext[r] <= bound)
            vals_l, idx_l = [], []
            for b in reach.nonzero().flatten().tolist():
                j = bisect.bisect_right(first_block, b) - 1
                lo = (b - first_block[j]) * _BLOCK
                seg = parts[j][r, lo : lo + _BLOCK]
                hit = ((seg >= bound) if largest else (seg <= bound)).nonzero().flatten()
                vals_l.append(seg[hit])
                idx_l.append(hit + (starts[j] + lo))
            vals, idx = torch.cat(vals_l), torch.cat(idx_l)
            kth = vals.topk(k, largest=largest).values[-1]
            beyond = (vals > kth) if largest else (vals < kth)
            tied = vals == kth
            if int(beyond.sum()) + int(tied.sum()) == k:  # no tie across the boundary
                keep = beyond | tied
                if bool(vals[keep].isfinite().all()):
                    exact = (vals[keep].tolist(), idx[keep].tolist())
        if exact is None:
            flat = torch.nan_to_num(torch.cat([p[r : r + 1] for p in parts], dim=1), nan=0.0)
            v, i = flat.topk(k, dim=1, largest=largest, sorted=True)
            exact = (v[0].tolist(), i[0].tolist())
        out.append(exact)
    return out


def _token_scores(
    runner: ModelRunner,
    scores: torch.Tensor,
    k: int,
    largest: bool,
    minus: torch.Tensor | None = None,
) -> list[tuple[TokenScore, ...]]:
    """The ``k`` largest (or smallest) tokens of each row of ``scores`` [n, vocab], one top-k;
    with ``minus`` ``[n, 1]``, of ``scores - minus`` (subtracted from the k values only)."""
    if k <= 0:
        return [() for _ in range(scores.shape[0])]
    vals, idx = scores.topk(min(k, scores.shape[-1]), dim=-1, largest=largest)
    if minus is not None:
        vals = vals - minus
    out = []
    for v_row, i_row in zip(vals.tolist(), idx.tolist(), strict=True):
        strs = runner.tokens.strings(i_row)
        out.append(tuple(TokenScore(int(i), s, float(v)) for i, s, v in zip(i_row, strs, v_row)))
    return out


def _integrated_gradients(att: _Attribution, fams: list[_Family]) -> None:
    """Replace each family's total_effect by integrated gradients from a zero baseline at the
    family's site (midpoint rule, ``ig_steps`` points), batched across steps."""
    runner, steps, rows = att.runner, att.spec.ig_steps, att.n_rows
    alphas = [(i + 0.5) / steps for i in range(steps)]
    by_site: dict[str, list[_Family]] = {}
    for f in fams:
        by_site.setdefault(f.ig_site, []).append(f)
    per_pass = max(1, runner.limits.max_prompts // rows)
    prompts = att.batch.rows[:rows]
    for site, site_fams in by_site.items():
        grad_sum: torch.Tensor | None = None
        value: torch.Tensor | None = None
        for start in range(0, steps, per_pass):
            chunk = alphas[start : start + per_pass]
            batch = Batch(tuple(r for _ in chunk for r in prompts), len(chunk) * rows, 0, 0)
            planner = runner.planner(batch)
            for j, a in enumerate(chunk):
                planner.add_intervention(
                    specs.Intervention(site, specs.Scale(a)), range(j * rows, (j + 1) * rows)
                )
            if att.spec.interventions:
                for j in range(len(chunk)):
                    for iv in att.spec.interventions:
                        planner.add_intervention(iv, [j * rows + 1])
            planner.plan.grad_sites.add(site)
            att.plan_loss(planner, range(batch.n_prompts))
            with _unembedding_columns(runner, att.logit_columns()):
                out = runner.run(batch, planner.plan, grad=True)
            losses = att.loss_values(out, batch.n_prompts)
            x = out.ctx.graph[site]
            (gx,) = torch.autograd.grad(losses.sum(), [x], allow_unused=True)
            if gx is None:  # the site does not reach the loss (e.g. an SAE read after a trace)
                gx = torch.zeros_like(x)
            gsum = gx.detach().float().reshape(len(chunk), rows, *gx.shape[1:]).sum(0)
            grad_sum = gsum if grad_sum is None else grad_sum + gsum
            if value is None:
                value = x.detach().float()[:rows] / chunk[0]
        assert grad_sum is not None and value is not None
        ig = value * grad_sum / steps  # [rows, *site]
        for f in site_fams:  # embeddings sum over d_model, heads over d_head
            per_node = f.columns["total_effect"].dim() < ig.dim()
            f.columns["total_effect"] = ig.sum(-1) if per_node else ig


@dataclass
class Columns:
    """Every node's columns before ranking (what the table is built from)."""

    att: _Attribution
    out: RunOutput
    losses: torch.Tensor  # [rows]
    grads: dict[str, torch.Tensor]
    families: list[_Family]

    def family(self, kind: str, layer: int | None = None) -> _Family:
        """The family of a kind (a NodeKind or its string) at a layer."""
        for f in self.families:
            if f.kind == kind and f.layer == layer:
                return f
        raise KeyError((kind, layer))


class _Clock:
    """Seconds spent in each stage of a request, added into ``into`` (when given)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.into is None:
            return
        now = time.perf_counter()
        self.into[stage] = self.into.get(stage, 0.0) + now - self.last
        self.last = now


def _prepared(runner: ModelRunner, spec: AttributeSpec) -> tuple[_Attribution, Planner]:
    """A validated, planned attribution (every error is raised here, before work)."""
    att = _Attribution(runner, spec)
    att.check_ig_cost()
    att.check_response_bytes()
    planner = runner.planner(att.batch)
    att.plan(planner)
    return att, planner


def compute_columns(
    runner: ModelRunner, spec: AttributeSpec, stages: dict[str, float] | None = None
) -> Columns:
    """One forward and one ``autograd.grad`` for every family's four columns (plus IG passes).

    The gradients are taken with the model's admission and execution lock held (``session``), so
    concurrent attributions keep at most one graph alive at a time. ``stages``: when given,
    receives the seconds spent in ``forward``, ``backward`` and ``columns`` (integrated gradients
    count as ``columns``)."""
    att, planner = _prepared(runner, spec)
    with runner.session(att.batch, planner.plan, grad=True):
        return _columns(runner, att, planner, stages)


def _columns(
    runner: ModelRunner,
    att: _Attribution,
    planner: Planner,
    stages: dict[str, float] | None = None,
) -> Columns:
    clock = _Clock(stages)
    spec = att.spec
    with _unembedding_columns(runner, att.logit_columns()):
        out = runner.run(att.batch, planner.plan, grad=True)
    losses = att.loss_values(out)
    clock.lap("forward")
    names = sorted(planner.plan.grad_sites - {"hook_embed"})
    tensors = [out.ctx.graph[n] for n in names]
    grads_list = torch.autograd.grad(losses.sum(), tensors, allow_unused=True)
    grads = {
        n: (gr if gr is not None else torch.zeros_like(t))
        for n, t, gr in zip(names, tensors, grads_list)
    }
    clock.lap("backward")
    with torch.no_grad():
        fams = att.families_from(out, grads)
    if spec.ig_steps:
        _integrated_gradients(att, fams)
    clock.lap("columns")
    return Columns(att, out, losses.detach(), grads, fams)


def attribute(
    runner: ModelRunner, spec: AttributeSpec, stages: dict[str, float] | None = None
) -> AttributeResult:
    """Build TDB's node table for ``spec`` (see the module docstring).

    ``stages``: when given, receives the seconds spent in each stage: ``forward``, ``backward``,
    ``columns`` (see :func:`compute_columns`), ``ranking`` (the top-k union), ``node_tokens``
    (up/down-voted output tokens and input tokens of the rows) and ``rows`` (building the result).
    """
    att, planner = _prepared(runner, spec)
    with runner.session(att.batch, planner.plan, grad=True):
        return _table(runner, spec, _columns(runner, att, planner, stages), stages)


def _table(
    runner: ModelRunner, spec: AttributeSpec, cols: Columns, stages: dict[str, float] | None = None
) -> AttributeResult:
    """The node table from the columns (the session held: the graph is still alive)."""
    clock = _Clock(stages)
    att, out, losses, grads, fams = cols.att, cols.out, cols.losses, cols.grads, cols.families
    with torch.no_grad():
        chosen = _topk_union(fams, spec.top_k, att.n_rows)
        clock.lap("ranking")
        nodes = [(fams[fam_i], idx) for fam_i, idx in chosen]
        pushed, input_of = _node_tokens(att, nodes)
        clock.lap("node_tokens")
        rows_out = []
        for i, (f, idx) in enumerate(nodes):
            values = tuple(
                {c: float(f.columns[c][r][idx]) for c in COLUMNS} for r in range(att.n_rows)
            )
            up, down = pushed.get(i, ((), ()))
            rows_out.append(NodeRow(f.decode(idx), values, up, down, input_of.get(i, ())))
        # the parts of the loss no node writes
        d = grads[att.point.site][: att.n_rows].float()
        if att.point.position is not None:
            mask = torch.zeros(att.T, device=d.device)
            mask[att.point.position] = 1
            d = d * mask[None, :, None]
        bias = torch.zeros(att.n_rows, device=d.device)
        for L in att.attn_layers():
            b = runner.adapter.b_O(L)
            if b is not None and runner.adapter.post_attn_norm(L) is None:
                bias += (d * b.float()).sum((-1, -2))
        for L in att.mlp_layers():
            b = runner.adapter.b_out(L)
            if b is not None and runner.adapter.post_mlp_norm(L) is None:
                bias += (d * b.float()).sum((-1, -2))
        # the residual at the point is the sum of every write plus the biases
        x_point = out.ctx.graph[att.point.site][: att.n_rows].detach().float()
        constant = losses.detach() - (x_point * d).sum((-1, -2))
        emb = [f for f in fams if f.kind is NodeKind.EMBEDDING]
        tok_attr = emb[0].columns["total_effect"] if emb else torch.zeros(att.n_rows, att.T)
    prompts = tuple(specs.PromptTokens(r, runner.tokens.strings(r)) for r in att.batch.rows)
    n_nodes = sum(f.columns["activation"][0].numel() for f in fams)
    result = AttributeResult(
        prompts=prompts,
        loss_values=tuple(float(x) for x in losses.detach()),
        rows=tuple(rows_out),
        token_attribution=tuple(tuple(float(x) for x in tok_attr[r]) for r in range(att.n_rows)),
        bias_direct_effect=tuple(float(x) for x in bias),
        constant=tuple(float(x) for x in constant),
        loss_position=att.loss_position(),
        stats={"nodes_ranked": float(n_nodes)},
    )
    clock.lap("rows")
    return result


_Pushed = tuple[tuple[TokenScore, ...], tuple[TokenScore, ...]]  # (upvoted, downvoted)


def _node_tokens(
    att: _Attribution, nodes: list[tuple[_Family, tuple[int, ...]]]
) -> tuple[dict[int, _Pushed], dict[int, tuple[TokenScore, ...]]]:
    """Each row's up/down-voted output tokens (its write in row 0, through the final norm's gain
    and ``W_U``, mean-subtracted) and each neuron row's input tokens, by row index.

    Every write is read through ``W_U`` in one product (one pass over the unembedding); with tied
    embeddings the neurons' input directions ride in the same product (see
    :func:`_input_scores`), otherwise they are read by the normalized embedding in a second."""
    runner, k = att.runner, att.spec.node_tokens
    if not k:
        return {}, {}
    adapter = runner.adapter
    writes = [(i, f.write(0, idx).float()) for i, (f, idx) in enumerate(nodes) if f.write]
    neurons = [
        (i, (f.layer or 0, idx[1]))
        for i, (f, idx) in enumerate(nodes)
        if f.kind is NodeKind.MLP_NEURON
    ]
    w_u = adapter.W_U().float()
    parts = []
    if writes:
        stacked = torch.stack([w for _, w in writes])  # [n, d_model]
        gain = adapter.final_norm().gain()
        parts.append(stacked * gain.float() if gain is not None else stacked)
    w_in, kinds = _input_directions(runner, [ln for _, ln in neurons])
    tied = bool(neurons) and _tied_embedding(runner)
    if tied:
        parts.append(w_in)
    scores = torch.cat(parts) @ w_u if parts else None  # [n (+ neurons), vocab]
    pushed: dict[int, _Pushed] = {}
    if writes:
        assert scores is not None
        vecs = scores[: len(writes)]
        mean = vecs.mean(-1, keepdim=True)
        ups = _token_scores(runner, vecs, k, True, mean)
        downs = _token_scores(runner, vecs, k, False, mean)
        pushed = {i: (ups[j], downs[j]) for j, (i, _) in enumerate(writes)}
    if not neurons:
        return pushed, {}
    products = scores[len(writes) :] if tied and scores is not None else None
    inputs = _token_scores(runner, _input_scores(runner, w_in, kinds, products), k, True)
    return pushed, {i: inputs[j] for j, (i, _) in enumerate(neurons)}


def _tied_embedding(runner: ModelRunner) -> bool:
    """Whether the unembedding is the token embedding read transposed (tied weights)."""
    e, u = runner.adapter.W_E(), runner.adapter.W_U()
    return bool(
        e.shape == u.T.shape
        and e.data_ptr() == u.data_ptr()
        and e.stride() == u.T.stride()
        and e.dtype == u.dtype
    )


def _input_directions(
    runner: ModelRunner, neurons: list[tuple[int, int]]
) -> tuple[torch.Tensor, list[str]]:
    """Each (layer, neuron)'s W_in column times its input norm's gain ``[n, d_model]`` (fp32),
    and that norm's kind."""
    if not neurons:
        return torch.empty(0, runner.schema.dims.d_model, device=runner.adapter.W_E().device), []
    cols, kinds = [], []
    for layer, neuron in neurons:
        col = runner.adapter.W_in(layer)[:, neuron].float()  # [d_model]
        norm = runner.adapter.mlp_in_norm(layer)
        gain = norm.gain()
        cols.append(col * gain.float() if gain is not None else col)
        kinds.append(norm.kind)
    return torch.stack(cols), kinds


def _input_scores(
    runner: ModelRunner, w: torch.Tensor, kinds: list[str], products: torch.Tensor | None
) -> torch.Tensor:
    """Each direction of ``w`` ``[n, d_model]`` read by every token's normalized embedding
    (mean removed for LayerNorm, unit RMS) ``[n, vocab]``.

    ``products``: ``w @ W_E^T`` when already computed (tied embeddings: it is ``w @ W_U``). Then
    the normalized embedding ``s_t (E_t - mu_t)`` is applied through each token's mean ``mu_t``
    and scale ``s_t``: ``s_t (E_t . w - mu_t sum(w))``, the same number as reading the normalized
    row (to float rounding) without a second pass over the vocabulary."""
    out = torch.empty(w.shape[0], runner.adapter.W_E().shape[0], device=w.device)
    for kind in set(kinds):  # one kind per model in practice
        sel = [j for j, k_ in enumerate(kinds) if k_ == kind]
        if products is None:
            out[sel] = w[sel] @ _normalized_embedding(runner, kind).T
            continue
        mu, s = _embedding_stats(runner, kind)
        prod = products[sel]
        if kind == "layernorm":
            prod = prod - w[sel].sum(-1, keepdim=True) * mu
        out[sel] = prod * s
    return out


def _neuron_input_tokens(
    runner: ModelRunner, neurons: list[tuple[int, int]], k: int
) -> list[tuple[TokenScore, ...]]:
    """For each (layer, neuron): the tokens whose embedding, read through the MLP's input (norm
    gain, W_in column), most activates the neuron's pre-activation (TDB's "input tokens that
    upvote", weights only). One product over the embedding for all neurons."""
    if not neurons:
        return []
    w, kinds = _input_directions(runner, neurons)
    products = w @ runner.adapter.W_U().float() if _tied_embedding(runner) else None
    return _token_scores(runner, _input_scores(runner, w, kinds, products), k, True)


EMBEDDING_CACHE_MAX_BYTES = 1 << 30
"""The largest normalized embedding kept between requests (per model and norm kind)."""


def _embedding_stamp(runner: ModelRunner) -> tuple[object, ...]:
    hf: Any = runner.adapter.model  # a HF PreTrainedModel
    weight: torch.Tensor = hf.get_input_embeddings().weight
    return (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype)


def _embedding_stats(runner: ModelRunner, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the mean ``mu`` a norm of ``kind`` removes (0 unless LayerNorm) and the factor
    ``s`` giving unit RMS, ``[vocab]`` each (fp32): the normalized embedding is ``s (E - mu)``.
    Kept on the runner like :func:`_normalized_embedding`."""
    stamp = _embedding_stamp(runner)
    key = f"normalized_embedding_stats:{kind}"
    kept = runner.derived.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[1][0], kept[1][1]
    emb = runner.adapter.W_E().float()  # [vocab, d_model]
    mu = emb.mean(-1) if kind == "layernorm" else torch.zeros(emb.shape[0], device=emb.device)
    e: torch.Tensor = emb - mu[:, None] if kind == "layernorm" else emb
    s = math.sqrt(e.shape[-1]) / e.norm(dim=-1).clamp_min(1e-12)
    stats = torch.stack([mu, s])
    if stats.numel() * stats.element_size() <= EMBEDDING_CACHE_MAX_BYTES:
        runner.derived[key] = (stamp, stats)
    return mu, s


def _normalized_embedding(runner: ModelRunner, kind: str) -> torch.Tensor:
    """What a norm of ``kind`` makes of each token's embedding ``[vocab, d_model]`` (fp32): mean
    removed for LayerNorm, unit RMS. It depends only on the weights, so it is kept on the runner
    (up to :data:`EMBEDDING_CACHE_MAX_BYTES`) and recomputed when the embedding changes."""
    stamp = _embedding_stamp(runner)
    key = f"normalized_embedding:{kind}"
    kept = runner.derived.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[1]
    emb = runner.adapter.W_E().float()  # [vocab, d_model]
    e: torch.Tensor = emb - emb.mean(-1, keepdim=True) if kind == "layernorm" else emb
    e = e * (math.sqrt(e.shape[-1]) / e.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    if e.numel() * e.element_size() <= EMBEDDING_CACHE_MAX_BYTES:
        runner.derived[key] = (stamp, e)
    return e
