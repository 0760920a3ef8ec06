"""The hook engine: what happens at a hook site during one forward pass.

An adapter calls into the active :class:`HookContext` at every site the context wants, with the
site's tensor in schema layout ``[batch, *site dims]``. The context

1. applies forward edits (interventions, SAE splices) out of place and returns the new tensor,
2. wraps it so backward edits replace the gradient flowing through it,
3. records reduced, detached captures, and keeps graph references for gradients.

A site nobody asked about is never touched, so hooks cannot change results: with captures only,
logits are bit-identical to a run without them.

The engine also owns the attention function that transformers calls (registered as ``"tdb"`` in
its attention interface). It computes attention eagerly so that queries, keys, values, scores,
pattern and z are real tensors of the graph, for every architecture, whatever attention
implementation the model was loaded with.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from tdb_core import specs
from tdb_core.cache import Recorded
from tdb_core.errors import InvalidArgumentError
from tdb_core.schema import SiteInfo, site_name

# --------------------------------------------------------------------------------------------------
# Resolved (device-side) forms of captures and edits. Built by tdb_core.plan from user specs.


@dataclass
class BlockIndex:
    """Which block of a site tensor a capture or edit addresses.

    rows: batch rows ``[R]``; pos: per-row absolute positions ``[R, P]`` (None: every position);
    units: indices on the unit axis ``[U]`` (None: every unit); keys: per-row absolute key
    positions ``[R, K]`` on the k_pos axis of attention scores/pattern (None: every key).
    ``pos_axis``/``unit_axis``/``key_axis`` are axes of the batched site tensor.
    """

    rows: torch.Tensor
    pos: torch.Tensor | None
    units: torch.Tensor | None
    pos_axis: int
    unit_axis: int | None
    keys: torch.Tensor | None = None
    key_axis: int | None = None


@dataclass
class ResolvedCapture:
    site: SiteInfo
    index: BlockIndex
    valid: torch.Tensor | None  # [B, P] bool: positions inside each prompt (None: all valid)
    top_k: specs.TopK | None
    dtype: torch.dtype | None
    out_device: torch.device
    n_rows: int  # captures read the first n_rows rows (the prompts; not sources or references)
    units_list: tuple[int, ...] | None = None
    key_valid: torch.Tensor | None = None  # [B, T] real key positions (scores/pattern only)
    version: int | None = None  # version counter of a zero-copy view when it was taken
    values: torch.Tensor | None = None
    indices: torch.Tensor | None = None


@dataclass
class ResolvedEdit:
    """One intervention on one site, for a set of rows.

    ``source_rows`` ([R]) give each edited row its patch source; ``reference_rows`` the rows a
    reference mean averages over; ``tensor`` the resolved operand of SetTensor/AddVector.
    """

    site: SiteInfo
    index: BlockIndex
    op: specs.Op
    pass_: specs.Pass
    tensor: torch.Tensor | None = None
    source_rows: torch.Tensor | None = None
    reference_rows: torch.Tensor | None = None


Splice = Callable[["HookContext", torch.Tensor], torch.Tensor]


@dataclass
class HookPlan:
    """Everything a forward pass must do at hook sites, keyed by concrete site name."""

    captures: dict[str, list[ResolvedCapture]] = field(default_factory=dict)
    edits: dict[str, list[ResolvedEdit]] = field(default_factory=dict)
    splices: dict[str, Splice] = field(default_factory=dict)
    grad_sites: set[str] = field(default_factory=set)
    freeze_norms: set[str] = field(default_factory=set)  # "ln_final", "blocks.L.ln1", ...
    observers: dict[str, Callable[[torch.Tensor], None]] = field(default_factory=dict)
    clone_captures: bool = False  # copy every capture (set after a model wrote to a view in place)
    # positions whose logits the pass computes (None: every position); ignored when the logits
    # site itself is hooked
    logit_positions: tuple[int, ...] | None = None
    # when set, every captured site's whole tensor (a copy) is recorded here (the prompt cache)
    record: dict[str, Recorded] | None = None

    def captures_intact(self) -> bool:
        """False if a zero-copy capture was modified in place after it was taken."""
        return all(
            c.version is None or c.values is None or c.values._version == c.version
            for caps in self.captures.values()
            for c in caps
        )

    def reset_captures(self) -> None:
        for caps in self.captures.values():
            for c in caps:
                c.values = c.indices = None
                c.version = None

    def sites(self) -> set[str]:
        return (
            set(self.captures)
            | set(self.edits)
            | set(self.splices)
            | self.grad_sites
            | set(self.observers)
        )


# --------------------------------------------------------------------------------------------------
# Applying edits


def _layout_axes(index: BlockIndex) -> tuple[int, ...]:
    """Axes of the site tensor that the block layout puts first after the batch: position, then
    unit (if any), then key position (if keys are selected)."""
    axes = (index.pos_axis,) if index.unit_axis is None else (index.pos_axis, index.unit_axis)
    if index.keys is not None:
        assert index.key_axis is not None and index.unit_axis is not None
        axes = (*axes, index.key_axis)
    return axes


def _to_block_layout(x: torch.Tensor, index: BlockIndex) -> torch.Tensor:
    """View ``x`` as ``[B, pos, unit, rest...]`` (``[B, pos, rest...]`` without a unit axis;
    ``[B, q_pos, head, k_pos]`` when key positions are selected)."""
    axes = _layout_axes(index)
    return x.movedim(axes, tuple(range(1, 1 + len(axes))))


def _from_block_layout(xb: torch.Tensor, index: BlockIndex) -> torch.Tensor:
    axes = _layout_axes(index)
    return xb.movedim(tuple(range(1, 1 + len(axes))), axes)


def _block_indices(xb: torch.Tensor, index: BlockIndex) -> tuple[torch.Tensor, ...]:
    """Advanced-index tuple selecting the block ``[R, P, U]`` (``[R, P, U, K]`` with key
    positions) of a block-layout tensor."""
    rows = index.rows
    n_rows = rows.shape[0]
    pos = index.pos
    if pos is None:
        pos = torch.arange(xb.shape[1], device=xb.device).expand(n_rows, -1)
    if index.unit_axis is None:
        return rows[:, None], pos
    units = index.units
    if units is None:
        units = torch.arange(xb.shape[2], device=xb.device)
    if index.keys is None:
        return rows[:, None, None], pos[:, :, None], units[None, None, :]
    keys = index.keys  # [R, K]
    return (
        rows[:, None, None, None],
        pos[:, :, None, None],
        units[None, None, :, None],
        keys[:, None, None, :],
    )


def _masked_mean_over_positions(
    xb: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Mean of ``xb[rows]`` over each row's real positions: ``[R, *rest]`` per row."""
    sel = xb[rows]  # [R, T, ...]
    n_pos = sel.shape[1]
    valid = torch.arange(n_pos, device=xb.device)[None, :] < lengths[rows][:, None]  # [R, T]
    w = valid.to(sel.dtype).reshape(*valid.shape, *([1] * (sel.dim() - 2)))
    return (sel * w).sum(1) / w.sum(1)  # [R, ...]


def _select(per_row: torch.Tensor, idx: tuple[torch.Tensor, ...], n_pos: int) -> torch.Tensor:
    """The block ``idx`` selects from a value that is the same at every position of a row:
    ``per_row`` is ``[R, *block-layout dims after the position]`` for the edit's R rows."""
    n_rows = per_row.shape[0]
    full = per_row[:, None].expand(n_rows, n_pos, *per_row.shape[1:])
    local = torch.arange(n_rows, device=per_row.device).reshape(idx[0].shape)
    return full[(local, *idx[1:])]


def _edit_value(
    edit: ResolvedEdit,
    xb: torch.Tensor,
    block: torch.Tensor,
    idx: tuple[torch.Tensor, ...],
    lengths: torch.Tensor,
) -> torch.Tensor:
    """New values for a forward edit's block ``[R, P, (U,) rest...]``."""
    op = edit.op
    if isinstance(op, specs.Zero):
        return torch.zeros_like(block)
    if isinstance(op, specs.SetValue):
        return torch.full_like(block, op.value)
    if isinstance(op, specs.SetTensor):
        assert edit.tensor is not None
        return edit.tensor.to(block.dtype).expand_as(block)
    if isinstance(op, specs.Scale):
        return block * op.factor
    if isinstance(op, specs.AddVector):
        assert edit.tensor is not None
        return block + op.coeff * edit.tensor.to(block.dtype)
    if isinstance(op, specs.MeanOverPositions):
        mean = _masked_mean_over_positions(xb, edit.index.rows, lengths)  # [R, (U_all,) rest]
        return _select(mean, idx, xb.shape[1])
    if isinstance(op, specs.MeanOverReference):
        assert edit.reference_rows is not None
        per_row = _masked_mean_over_positions(xb, edit.reference_rows, lengths)
        w = lengths[edit.reference_rows].to(xb.dtype)
        w = w.reshape(-1, *([1] * (per_row.dim() - 1)))
        mean = (per_row * w).sum(0) / w.sum()  # token-weighted mean, [(U_all,) rest]
        return _select(mean[None].expand(idx[0].shape[0], *mean.shape), idx, xb.shape[1])
    if isinstance(op, specs.PatchFrom):
        assert edit.source_rows is not None
        src_idx = (edit.source_rows.reshape(idx[0].shape), *idx[1:])
        return xb[src_idx]
    raise InvalidArgumentError(f"unsupported intervention operation {type(op).__name__}")


def apply_forward_edit(x: torch.Tensor, edit: ResolvedEdit, lengths: torch.Tensor) -> torch.Tensor:
    """Return ``x`` with the edit's block replaced, out of place (autograd flows through)."""
    xb = _to_block_layout(x, edit.index)
    idx = _block_indices(xb, edit.index)
    block = xb[idx]
    new = _edit_value(edit, xb, block, idx, lengths)
    return _from_block_layout(xb.index_put(idx, new), edit.index)


class _BackwardEdit(torch.autograd.Function):
    """Identity in the forward pass; applies edits to the gradient in the backward pass."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, edits: list[ResolvedEdit], lengths: torch.Tensor
    ) -> torch.Tensor:
        ctx.edits = edits
        ctx.lengths = lengths
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        for edit in ctx.edits:
            grad = apply_forward_edit(grad, edit, ctx.lengths)
        return grad, None, None


# --------------------------------------------------------------------------------------------------
# Captures


def _select_block(x: torch.Tensor, index: BlockIndex) -> torch.Tensor:
    """``x`` cut to the index's positions and units (rows are all of ``x``'s), in site layout."""
    has_units = index.unit_axis is not None and index.units is not None
    if index.pos is None and not has_units:
        return x
    xb = _to_block_layout(x, index)
    if index.pos is not None:
        rows = torch.arange(xb.shape[0], device=xb.device)[:, None]
        xb = xb[rows, index.pos]  # [B, P, ...]
    if has_units:
        assert index.units is not None
        xb = xb.index_select(2, index.units)
    return _from_block_layout(xb, index)


def _reduce_capture(
    cap: ResolvedCapture,
    x: torch.Tensor,
    masked: torch.Tensor | None,
    clone: bool,
    selected: bool = False,
    masked_in_place: bool = False,
) -> None:
    """Select the capture's block of ``x`` (detached), fill padding, top-k, cast, and store.

    The block is cut first, so masking, top-k and casts touch only what is kept. ``selected``:
    ``x`` is already the block (a derived site computed for the capture's positions and units).
    ``masked_in_place``: ``x`` already holds -inf where ``masked`` says (padding is still filled
    with -inf).
    A capture that needs no reduction keeps a view of the activation instead of a copy (unless
    ``clone``); :meth:`HookPlan.captures_intact` tells whether the model later wrote to it in place.
    """
    x = x.detach()
    if x.shape[0] != cap.n_rows:
        x = x[: cap.n_rows]
    index = cap.index
    if (
        (masked is None or masked_in_place)
        and cap.valid is None
        and cap.key_valid is None
        and cap.top_k is None
        and (cap.dtype is None or cap.dtype == x.dtype)
        and x.device == cap.out_device
        and (selected or (index.pos is None and (index.units is None or index.unit_axis is None)))
    ):  # the whole site as it is: keep a view (or a copy when asked to)
        if clone:
            x = x.clone()
        else:
            cap.version = x._version
        cap.values, cap.indices = x, None
        return
    out = x if selected else _select_block(x, index)
    copied = out is not x
    fill = 0.0
    if masked is not None:  # attention scores: show masked entries as -inf
        fill = float("-inf")
        if not masked_in_place:
            m = masked[: cap.n_rows].expand(x.shape)
            out = out.masked_fill(m if selected else _select_block(m, index), fill)
            copied = True
    if cap.valid is not None:
        xb = _to_block_layout(out, index)
        shape = (*cap.valid.shape, *([1] * (xb.dim() - 2)))
        out = _from_block_layout(xb.masked_fill(~cap.valid.reshape(shape), fill), index)
        copied = True
    if cap.key_valid is not None:  # key positions past a prompt's end are padding too
        out = out.masked_fill(~cap.key_valid[:, None, None, :], fill)
        copied = True
    indices = None
    if cap.top_k is not None:
        k = min(cap.top_k.k, out.shape[-1])
        if cap.top_k.mode is specs.TopKMode.ABS:
            _, indices = out.abs().topk(k, dim=-1)
            out = out.gather(-1, indices)
        else:
            out, indices = out.topk(k, dim=-1, largest=cap.top_k.mode is specs.TopKMode.LARGEST)
        copied = True
    if cap.dtype is not None and out.dtype != cap.dtype:
        out = out.to(cap.dtype)
        copied = True
    if out.device != cap.out_device:
        out = out.to(cap.out_device)
        copied = True
    if not copied:
        if clone:
            out = out.clone()
        else:  # zero-copy: keep a view, and check after the pass that nothing wrote to it
            cap.version = out._version
    cap.values = out
    cap.indices = None if indices is None else indices.to(cap.out_device)


reduce_capture = _reduce_capture  # gradient captures (tdb_core.gradients) reduce the same way


DerivedBlock = Callable[[int, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
"""Computes a derived site for its first ``n`` rows, at positions ``pos`` ``[n, P]`` (None: all)
and units ``units`` ``[U]`` (None: all), in site layout: ``[n, P or T, U or all, ...]``."""


# --------------------------------------------------------------------------------------------------
# The context


class HookContext:
    """The state of one forward pass at hook sites. Adapters call ``point``/``edit``/``observe``."""

    def __init__(
        self, plan: HookPlan, lengths: torch.Tensor, check: Callable[[], None] | None = None
    ) -> None:
        self.plan = plan
        self.check = check  # the request's cancellation check, called at every layer
        self.lengths = lengths  # [B] real length of each row
        self._active = plan.sites()
        self.graph: dict[str, torch.Tensor] = {}
        self.stash: dict[Any, torch.Tensor] = {}  # adapter scratch space (e.g. resid_pre per layer)
        self._blocked: dict[tuple[Any, ...], tuple[torch.Tensor, bool]] = {}

    # -- what the adapter asks
    def wants(self, site: str) -> bool:
        return site in self._active

    def wants_any(self, sites: tuple[str, ...] | list[str]) -> bool:
        return any(s in self._active for s in sites)

    def has_edit(self, site: str) -> bool:
        return site in self.plan.edits or site in self.plan.splices

    def needs_graph(self, site: str) -> bool:
        """Whether the site's value must be a real tensor of the graph (edited or differentiated)."""
        return self.has_edit(site) or site in self.plan.grad_sites

    def freezes(self, norm: str) -> bool:
        return norm in self.plan.freeze_norms

    # -- what the adapter calls
    def _root(self, site: str, x: torch.Tensor) -> None:
        """Make a gradient site that no parameter feeds (the embeddings) a leaf of the graph."""
        if site in self.plan.grad_sites and not x.requires_grad and torch.is_grad_enabled():
            x.requires_grad_()

    def edit(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """Apply forward edits, backward edits and splices at ``site``; returns the new tensor."""
        self._root(site, x)
        edits = self.plan.edits.get(site)
        if edits:
            fwd = [e for e in edits if e.pass_ is specs.Pass.FORWARD]
            bwd = [e for e in edits if e.pass_ is specs.Pass.BACKWARD]
            for e in fwd:
                x = apply_forward_edit(x, e, self.lengths)
            if bwd and torch.is_grad_enabled():
                x = _BackwardEdit.apply(x, bwd, self.lengths)  # type: ignore[no-untyped-call]
        splice = self.plan.splices.get(site)
        if splice is not None:
            x = splice(self, x)
        return x

    def observe_derived(self, site: str, block: DerivedBlock) -> None:
        """Record captures of a site that is computed rather than read (``attn.hook_result``),
        computing only what the captures keep: a capture of some positions or units gets just
        that block, and the whole site is computed (once) only when something needs all of it.
        Sites with edits or gradients must go through :meth:`point` with the whole tensor."""
        caps = self.plan.captures.get(site, ())
        whole = site in self.plan.observers or any(
            c.index.pos is None and (c.index.units is None or c.index.unit_axis is None)
            for c in caps
        )
        if whole:
            observed = site in self.plan.observers
            n = self.lengths.shape[0] if observed else max(c.n_rows for c in caps)
            self.observe(site, block(n, None, None))
            rec = self.plan.record
            if rec is not None and site in rec:
                rec[site] = Recorded(rec[site].values, derived=True)
            return
        for cap in caps:
            units = cap.index.units if cap.index.unit_axis is not None else None
            values = block(cap.n_rows, cap.index.pos, units)
            _reduce_capture(cap, values, None, self.plan.clone_captures, selected=True)

    def observe(
        self,
        site: str,
        x: torch.Tensor,
        masked: torch.Tensor | None = None,
        masked_in_place: bool = False,
    ) -> None:
        """Record captures of ``site`` and keep its graph tensor if gradients are wanted."""
        for cap in self.plan.captures.get(site, ()):
            _reduce_capture(
                cap, x, masked, self.plan.clone_captures, masked_in_place=masked_in_place
            )
        if self.plan.record is not None and site in self.plan.captures:
            self.plan.record[site] = Recorded(x.detach().clone(), masked)
        if site in self.plan.grad_sites:
            self._root(site, x)
            self.graph[site] = x
        observer = self.plan.observers.get(site)
        if observer is not None:
            observer(x)

    def point(self, site: str, x: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Edit then observe: the usual thing to do at a site."""
        if site not in self._active:
            return x
        x = self.edit(site, x)
        self.observe(site, x, masked)
        return x

    def blocked_keys(self, mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Where HF's additive float mask ``[B, 1, T_q, T_k]`` blocks a key, and whether every
        query row keeps at least one key; computed once per mask per pass (layers share it)."""
        key = (mask.data_ptr(), tuple(mask.shape), tuple(mask.stride()))
        got = self._blocked.get(key)
        if got is None:
            blocked = mask <= torch.finfo(mask.dtype).min
            got = self._blocked[key] = (blocked, not bool(blocked.all(-1).any()))
        return got


_ACTIVE: contextvars.ContextVar[HookContext | None] = contextvars.ContextVar(
    "tdb_hook_context", default=None
)


def active_context() -> HookContext | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def activate(ctx: HookContext) -> Iterator[HookContext]:
    """Make ``ctx`` the context the attention function sees, for the duration of a forward."""
    token = _ACTIVE.set(ctx)
    try:
        yield ctx
    finally:
        _ACTIVE.reset(token)


# --------------------------------------------------------------------------------------------------
# The attention function registered with transformers


ATTENTION_NAME = "tdb"
_LAYER_OF_MODULE: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, bool]] = (
    weakref.WeakKeyDictionary()
)


def register_attention_layers(modules: list[torch.nn.Module], rotary: bool = False) -> None:
    """Tell the attention function which layer each attention module is (adapters call this), and
    whether the model rotates queries and keys before it: the queries and keys it receives are
    then ``hook_rot_q``/``hook_rot_k`` (the adapter reads ``hook_q``/``hook_k`` before the
    rotation), otherwise ``hook_q``/``hook_k``."""
    for layer, module in enumerate(modules):
        _LAYER_OF_MODULE[module] = (layer, rotary)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, T, d] -> [B, H_kv * n_rep, T, d], each kv head repeated for its query heads."""
    if n_rep == 1:
        return x
    b, h_kv, t, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, t, d).reshape(b, h_kv * n_rep, t, d)


_SUPPORTED_KWARGS = {
    "position_ids",
    "use_cache",
    "cache_position",
    "sliding_window",
    "is_causal",
    "output_attentions",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "head_mask",
}


def tdb_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with hook points for q, k (or rot_q, rot_k), v, scores, pattern and z.

    query ``[B, H, T, d_head]``, key/value ``[B, H_kv, T, d_head]`` (after rotary), additive
    float mask ``[B, 1, T, T]``. Keys and values are hooked with their ``H_kv`` heads, before
    being repeated for the query heads of their group. Returns z ``[B, T, H, d_head]`` and the
    pattern, as HF's eager attention does, and computes exactly what it computes.
    """
    unknown = set(kwargs) - _SUPPORTED_KWARGS
    if unknown or kwargs.get("head_mask") is not None:
        raise InvalidArgumentError(
            f"attention arguments {sorted(unknown) or ['head_mask']} are not supported by the tdb "
            "attention function"
        )
    ctx = _ACTIVE.get()
    if ctx is not None and ctx.check is not None:
        ctx.check()  # a cancelled or expired request stops here, layer by layer
    n_rep = query.shape[1] // key.shape[1]
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    names: dict[str, str] = {}
    if ctx is not None:
        layer, rotary = _LAYER_OF_MODULE[module]
        q_hook, k_hook = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
        names = {
            "q": site_name("attn." + q_hook, layer),
            "k": site_name("attn." + k_hook, layer),
            **{
                h: site_name("attn." + h, layer)
                for h in ("hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
            },
        }
        if not ctx.wants_any(list(names.values())):
            ctx = None
    if ctx is not None:  # keys and values with their own (kv) heads, as TransformerLens
        query = ctx.point(names["q"], query.transpose(1, 2)).transpose(1, 2)
        key = ctx.point(names["k"], key.transpose(1, 2)).transpose(1, 2)
        value = ctx.point(names["hook_v"], value.transpose(1, 2)).transpose(1, 2)
    key = _repeat_kv(key, n_rep)  # [B, H, T, d_head]
    value = _repeat_kv(value, n_rep)

    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [B, H, T_q, T_k]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    blocked, observed = None, False
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores + mask
        if ctx is not None and ctx.wants(names["hook_attn_scores"]):
            blocked, every_row_sees = ctx.blocked_keys(mask)
            if every_row_sees and not ctx.needs_graph(names["hook_attn_scores"]):
                # Read only: write the capture's -inf into the scores themselves (no copy). The
                # softmax is bit for bit the same: a blocked entry's exp underflowed to 0 already,
                # and every row keeps a finite maximum.
                scores.masked_fill_(blocked, float("-inf"))
                ctx.observe(names["hook_attn_scores"], scores, blocked, masked_in_place=True)
                observed = True
    if ctx is not None and not observed:
        scores = ctx.point(names["hook_attn_scores"], scores, masked=blocked)

    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)  # [B, H, T_q, T_k]
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout, training=True)
    if ctx is not None:
        pattern = ctx.point(names["hook_pattern"], pattern)

    z = torch.matmul(pattern, value).transpose(1, 2)  # [B, T, H, d_head]
    if ctx is not None:
        z = ctx.point(names["hook_z"], z)
    return z.contiguous(), pattern


def register_attention_function() -> None:
    """Register ``tdb_attention`` (with HF's eager float mask) with transformers, once."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_NAME, tdb_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
