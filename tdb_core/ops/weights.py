"""GetWeights: a model's parameters in the schema's layout, and folded views of them.

Parameters use TransformerLens names, unprocessed (no folding, no centring), each the numbers the
adapter computes with:

    W_E [vocab, d_model]            token embedding (Gemma: times sqrt(d_model), as hook_embed)
    W_pos [n_ctx, d_model]          learned position embedding (absent with rotary embeddings)
    blocks.L.ln1.w / .b [d_model]   attention pre-norm gain (the effective one: 1 + w for Gemma)
                                    and bias; ln2.* the MLP pre-norm (absent when one norm feeds
                                    both branches), ln1_post.* / ln2_post.* Gemma 2's post-norms
    blocks.L.attn.W_Q/W_K/W_V [head, d_model, d_head]  q = ln1(x) @ W_Q[h] + b_Q[h], before
                                    rotary; grouped-query keys/values repeated per query head, as
                                    TransformerLens's W_K / W_V (hook_k / hook_v keep the kv heads)
    blocks.L.attn.b_Q/b_K/b_V [head, d_head]
    blocks.L.attn.W_O [head, d_head, d_model], b_O [d_model]   hook_result[h] = z[h] @ W_O[h]
    blocks.L.mlp.W_in [d_model, d_mlp], b_in [d_mlp]   the projection producing hook_pre; in gated
                                    MLPs (as TransformerLens) W_gate/b_gate produce hook_pre (the
                                    gate) and W_in/b_in the linear factor hook_pre_linear
    blocks.L.mlp.W_out [d_mlp, d_model], b_out [d_model]
    ln_final.w / .b [d_model], W_U [d_model, vocab], b_U [vocab]

``heads`` slice the head axis of attention parameters and ``neurons`` the d_mlp axis of MLP
parameters; other parameters come whole. The response size is checked before anything is copied.

Folded views: a neuron's logit weights (``W_out[n]`` read through the final norm's gain, centred
for LayerNorm, and ``W_U``; before any soft-cap), a head's OV circuit ``W_V[h] @ W_O[h]`` and QK
circuit ``W_Q[h] @ W_K[h]^T`` (norms and rotary not applied), or those circuits read for one
token pair through ``W_E`` and ``W_U``.
"""

from __future__ import annotations

import enum
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from tdb_core import checks
from tdb_core.adapter import Norm
from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.plan import ALLOWED_DTYPES, check_response_bytes
from tdb_core.runner import ModelRunner


class ViewKind(enum.Enum):
    NEURON_LOGITS = "neuron_logits"
    HEAD_OV = "head_ov"
    HEAD_QK = "head_qk"


@dataclass(frozen=True)
class WeightView:
    kind: ViewKind
    layer: int
    unit: int  # neuron or head
    source_token: int | None = None
    destination_token: int | None = None


@dataclass(frozen=True)
class WeightsSpec:
    names: tuple[str, ...] = ()  # names or globs
    heads: tuple[int, ...] | None = None
    neurons: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    views: tuple[WeightView, ...] = ()


@dataclass(frozen=True)
class Weight:
    name: str
    dims: tuple[str, ...]
    values: torch.Tensor
    kept: tuple[int, ...] | None = None  # indices kept on the sliced axis


@dataclass(frozen=True)
class _Param:
    dims: tuple[str, ...]
    get: Callable[[], torch.Tensor]


def _const(x: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: x


def _norm_params(table: dict[str, _Param], prefix: str, norm: Norm | None) -> None:
    if norm is None:
        return
    gain, bias = norm.gain(), norm.bias
    if gain is not None:
        table[prefix + ".w"] = _Param(("d_model",), _const(gain))
    if bias is not None:
        table[prefix + ".b"] = _Param(("d_model",), _const(bias))


def parameters(runner: ModelRunner) -> dict[str, _Param]:
    """Every parameter of the model by name, in forward order (built lazily: nothing is read)."""
    a, dims = runner.adapter, runner.schema.dims
    t: dict[str, _Param] = {"W_E": _Param(("vocab", "d_model"), a.W_E)}
    w_pos = a.W_pos()
    if w_pos is not None:
        t["W_pos"] = _Param(("n_ctx", "d_model"), _const(w_pos))
    gated = runner.schema.has_kind("mlp.hook_pre_linear")
    has_ln2 = runner.schema.has_kind("ln2.hook_normalized")
    for L in range(dims.n_layers):
        p = f"blocks.{L}."
        _norm_params(t, p + "ln1", a.attn_in_norm(L))

        w0 = a.attn_weights(L)
        for which in ("W_Q", "W_K", "W_V"):
            t[p + "attn." + which] = _Param(
                ("head", "d_model", "d_head"), partial(_qkv, runner, L, which)
            )
        for which in ("b_Q", "b_K", "b_V"):
            if getattr(w0, which) is not None:
                t[p + "attn." + which] = _Param(("head", "d_head"), partial(_qkv, runner, L, which))
        t[p + "attn.W_O"] = _Param(("head", "d_head", "d_model"), partial(a.W_O, L))
        b_o = a.b_O(L)
        if b_o is not None:
            t[p + "attn.b_O"] = _Param(("d_model",), _const(b_o))
        _norm_params(t, p + "ln1_post", a.post_attn_norm(L))
        if has_ln2:
            _norm_params(t, p + "ln2", a.mlp_in_norm(L))
        pre, linear = ("W_gate", "W_in") if gated else ("W_in", None)
        t[p + "mlp." + pre] = _Param(("d_model", "d_mlp"), partial(a.W_in, L))
        b_in = a.b_in(L)
        if b_in is not None:
            t[p + "mlp." + pre.replace("W_", "b_")] = _Param(("d_mlp",), _const(b_in))
        if linear is not None:
            w_up = _present(a.W_up(L))
            t[p + "mlp.W_in"] = _Param(("d_model", "d_mlp"), _const(w_up))
            b_up = a.b_up(L)
            if b_up is not None:
                t[p + "mlp.b_in"] = _Param(("d_mlp",), _const(b_up))
        t[p + "mlp.W_out"] = _Param(("d_mlp", "d_model"), partial(a.W_out, L))
        b_out = a.b_out(L)
        if b_out is not None:
            t[p + "mlp.b_out"] = _Param(("d_model",), _const(b_out))
        _norm_params(t, p + "ln2_post", a.post_mlp_norm(L))
    _norm_params(t, "ln_final", a.final_norm())
    t["W_U"] = _Param(("d_model", "vocab"), a.W_U)
    b_u = a.b_U()
    if b_u is not None:
        t["b_U"] = _Param(("vocab",), _const(b_u))
    return t


def _qkv(runner: ModelRunner, layer: int, which: str) -> torch.Tensor:
    """W_Q/W_K/W_V or b_Q/b_K/b_V of a layer, keys and values repeated per query head."""
    dims = runner.schema.dims
    x = _present(getattr(runner.adapter.attn_weights(layer), which))
    n_rep = dims.n_heads // dims.n_kv_heads
    if which[-1] in "KV" and n_rep > 1:
        x = x.repeat_interleave(n_rep, dim=0)  # as TransformerLens's W_K / W_V properties
    return x


def _present(x: torch.Tensor | None) -> torch.Tensor:
    assert x is not None, "the parameter table lists only parameters the model has"
    return x


def _sizes(runner: ModelRunner) -> dict[str, int]:
    d = runner.schema.dims
    return {
        "vocab": d.d_vocab,
        "d_model": d.d_model,
        "n_ctx": d.n_ctx,
        "head": d.n_heads,
        "d_head": d.d_head,
        "d_mlp": d.d_mlp,
    }


def get_weights(runner: ModelRunner, spec: WeightsSpec) -> tuple[Weight, ...]:
    """The named parameters (sliced), then the views; sizes checked before any copy."""
    if not spec.names and not spec.views:
        raise InvalidArgumentError(
            "give parameter names (e.g. 'W_E', 'blocks.0.attn.W_Q', '*' for all) or views"
        )
    if spec.dtype is not None and spec.dtype not in ALLOWED_DTYPES:
        raise InvalidArgumentError(
            f"weights dtype {spec.dtype} is not allowed; use float32, float16 or bfloat16"
        )
    dims = runner.schema.dims
    if spec.heads is not None:
        checks.non_empty(spec.heads, "heads (omit the list to keep every head)")
        for h in spec.heads:
            checks.index(h, dims.n_heads, "head")
    if spec.neurons is not None:
        checks.non_empty(spec.neurons, "neurons (omit the list to keep every neuron)")
        for n in spec.neurons:
            checks.index(n, dims.d_mlp, "neuron")
    table = parameters(runner)
    chosen: list[str] = []
    for pattern in spec.names:
        if not any(c in pattern for c in "*?["):
            if pattern not in table:
                raise NotFoundError(
                    f"no parameter {checks.quote(pattern)} in this model; parameters are "
                    f"{_summary(table)}"
                )
            found = [pattern]
        else:
            found = [n for n in table if fnmatch.fnmatchcase(n, pattern)]
            if not found:
                raise NotFoundError(
                    f"parameter pattern {checks.quote(pattern)} matches nothing; parameters are "
                    f"{_summary(table)}"
                )
        chosen.extend(n for n in found if n not in chosen)
    for v in spec.views:
        _check_view(runner, v)
    itemsize = torch.empty((), dtype=spec.dtype or runner.dtype).element_size()
    sizes = _sizes(runner)
    total = 0
    for name in chosen:
        shape = [sizes[d] for d in table[name].dims]
        for i, d in enumerate(table[name].dims):
            if d == "head" and spec.heads is not None:
                shape[i] = len(spec.heads)
            if d == "d_mlp" and spec.neurons is not None:
                shape[i] = len(spec.neurons)
        total += math.prod(shape) * itemsize
    for v in spec.views:
        if v.source_token is None:
            total += (dims.d_vocab if v.kind is ViewKind.NEURON_LOGITS else dims.d_model**2) * 4
    check_response_bytes(total, runner.limits.max_response_bytes)

    out: list[Weight] = []
    with torch.no_grad():
        for name in chosen:
            param = table[name]
            x = param.get().detach()
            kept = None
            for axis, d in enumerate(param.dims):
                sel = spec.heads if d == "head" else spec.neurons if d == "d_mlp" else None
                if sel is not None:
                    x = x.index_select(axis, torch.tensor(sel, device=x.device))
                    kept = tuple(sel)
            x = x.to(spec.dtype or x.dtype).cpu().contiguous()
            out.append(Weight(name, param.dims, x, kept))
        for v in spec.views:
            out.append(_view(runner, v))
    return tuple(out)


def _summary(table: dict[str, _Param]) -> str:
    names = [n for n in table if not n.startswith("blocks.")]
    layered = sorted({n.split(".", 2)[2] for n in table if n.startswith("blocks.")})
    return ", ".join(names + [f"blocks.L.{n}" for n in layered])


def _check_view(runner: ModelRunner, v: WeightView) -> None:
    dims = runner.schema.dims
    checks.index(v.layer, dims.n_layers, "layer")
    if v.kind is ViewKind.NEURON_LOGITS:
        checks.index(v.unit, dims.d_mlp, "neuron")
        if v.source_token is not None or v.destination_token is not None:
            raise InvalidArgumentError("a neuron's logit weights take no token pair")
        return
    checks.index(v.unit, dims.n_heads, "head")
    if (v.source_token is None) != (v.destination_token is None):
        raise InvalidArgumentError("give both the source and the destination token, or neither")
    if v.source_token is not None:
        assert v.destination_token is not None
        checks.token_ids([v.source_token, v.destination_token], dims.d_vocab, "token pair")


def _view(runner: ModelRunner, v: WeightView) -> Weight:
    a = runner.adapter
    L, u = v.layer, v.unit
    if v.kind is ViewKind.NEURON_LOGITS:
        w = a.W_out(L)[u].float()  # [d_model]
        norm = a.final_norm()
        if norm.kind == "layernorm":
            w = w - w.mean()
        gain = norm.gain()
        if gain is not None:
            w = w * gain.float()
        logits = (w @ a.W_U().float()).cpu()  # [vocab]
        return Weight(f"neuron_logits[blocks.{L}.mlp.W_out[{u}]]", ("vocab",), logits)
    n_rep = runner.schema.dims.n_heads // runner.schema.dims.n_kv_heads
    aw = a.attn_weights(L)
    kv = u // n_rep
    if v.kind is ViewKind.HEAD_OV:
        m = aw.W_V[kv].float() @ a.W_O(L)[u].float()  # [d_model, d_model]
        label = f"head_ov[blocks.{L}.attn[{u}]]"
    else:
        m = aw.W_Q[u].float() @ aw.W_K[kv].float().T  # [d_model (query), d_model (key)]
        label = f"head_qk[blocks.{L}.attn[{u}]]"
    if v.source_token is None:
        return Weight(label, ("d_model", "d_model"), m.cpu())
    assert v.destination_token is not None
    w_e = a.W_E().float()
    src, dst = v.source_token, v.destination_token
    if v.kind is ViewKind.HEAD_OV:
        value = w_e[src] @ m @ a.W_U().float()[:, dst]
    else:
        value = w_e[dst] @ m @ w_e[src]
    return Weight(f"{label}[{src}->{dst}]", (), value.reshape(()).cpu())
