"""Hook wiring shared by decoder-only transformers: a map from canonical parts to HF modules.

A concrete adapter names its modules in a :class:`Layout` and states its quirks (weight layouts,
norm kind, gated or parallel MLP, post-norms, soft-capped logits); :class:`DecoderAdapter` turns
that into torch hooks that call the active :class:`~tdb_core.hooks.HookContext`. Where each site
is read:

    hook_embed / hook_pos_embed   output of the embedding modules (a scaled embedding module's
                                  output is what the residual receives, scale included)
    hook_resid_pre                input of the block
    ln1.* / ln2.*                 derived from the pre-norms' input: hook_scale, and
                                  hook_normalized before the gain and bias (TransformerLens's
                                  meaning); an edit of either recomputes the norm's output
    attn.hook_q / hook_k          rotary families: outputs of the query/key projections
                                  (``q_proj``/``k_proj``), before the model rotates them;
                                  otherwise inside the "tdb" attention function
    attn.hook_rot_q / hook_rot_k  rotary families: inside the "tdb" attention function (what the
                                  scores read); an edit of hook_q/hook_k is rotated into them
    attn.hook_v .. hook_z         inside the "tdb" attention function; k, rot_k and v with their
                                  kv heads, before grouped-query attention repeats them
    attn.hook_result              derived from the output projection's input, z @ W_O per head
    hook_attn_out                 output of the attention module, or of the post-attention norm
                                  where the layout has one (Gemma 2): what joins the residual
    hook_resid_mid                input of ln2; edits are applied by adjusting hook_attn_out so
                                  that resid_pre + attn_out equals the edited value. Absent in
                                  parallel blocks (attention and MLP both read hook_resid_pre)
    mlp.hook_pre / hook_pre_linear   outputs of the gate (or in) / up projections
    mlp.hook_post                 input of the down (out) projection
    hook_mlp_out                  output of the MLP module, or of the post-MLP norm where the
                                  layout has one: what joins the residual
    hook_resid_post               output of the block
    ln_final.*, logits            final norm, as ln1; unembedding output, or the model's output
                                  logits where the model soft-caps them after the unembedding

Architecture-specific meanings are defined once here (:data:`GATED_MLP_MEANINGS`,
:data:`PARALLEL_MEANINGS`, :data:`POST_NORM_MEANINGS`, ...) and reach clients through the model's
schema (``GetModelInfo`` reports each site's meaning), so a site that means something different
in an architecture says so where it is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, ClassVar

import torch

from tdb_core import specs
from tdb_core.adapter import Adapter, AttnWeights, Norm
from tdb_core.errors import FailedPreconditionError
from tdb_core.hooks import HookContext, register_attention_layers
from tdb_core.schema import SITE_KIND_BY_KEY, ModelDims, ModelSchema, norm_name, site_name


@dataclass(frozen=True)
class Layout:
    """HF module paths of the canonical parts. Block-relative paths start at a block.

    ``ln2`` is None when the MLP reads the attention pre-norm's output (one shared norm, as in
    Phi and GPT-J): the ``ln2.*`` sites are then absent. ``post_attn_norm``/``post_mlp_norm`` name
    norms applied to a branch's output before it joins the residual (Gemma 2); the branch's
    ``hook_*_out`` is then the norm's output. ``q_proj``/``k_proj`` name the query/key
    projections of rotary families, whose outputs (``[..., heads * d_head]``) are ``hook_q`` and
    ``hook_k``; ``qkv_proj`` names a fused projection laid out per head (``[..., heads * (q, k,
    v) * d_head]``, GPT-NeoX) instead, whose q and k slices are ``hook_q`` and ``hook_k``.
    """

    embed: str
    blocks: str
    ln1: str
    attn: str
    o_proj: str
    mlp: str
    mlp_in: str
    mlp_out: str
    ln_final: str
    unembed: str
    pos_embed: str | None = None
    ln2: str | None = None
    mlp_up: str | None = None  # gated MLPs: the up projection (mlp_in is then the gate)
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    q_proj: str | None = None
    k_proj: str | None = None
    qkv_proj: str | None = None


def _get(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return root.get_submodule(path)


def _unsupported(module: torch.nn.Module, what: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"this model's {type(module).__name__} module {what}; the adapter cannot wire it"
    )


def module_tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of ``module`` (e.g. ``weight``), checked to be a tensor."""
    t = getattr(module, name, None)
    if not isinstance(t, torch.Tensor):
        raise _unsupported(module, f"has no tensor '{name}'")
    return t


def module_bias(module: torch.nn.Module) -> torch.Tensor | None:
    """The module's ``bias`` tensor, or None where it has none (or ``bias=False``)."""
    b = getattr(module, "bias", None)
    if b is not None and not isinstance(b, torch.Tensor):
        raise _unsupported(module, "has a 'bias' that is not a tensor")
    return b


def _blocks_of(root: torch.nn.Module, path: str) -> list[torch.nn.Module]:
    blocks = _get(root, path)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise _unsupported(blocks, f"at '{path}' is not a list of blocks (nn.ModuleList)")
    return list(blocks)


def _first(out: Any) -> torch.Tensor:
    """A module's output tensor: the output, or its first element where it is a tuple."""
    first: torch.Tensor = out[0] if isinstance(out, tuple) else out
    return first


def _replace_first(out: Any, x: torch.Tensor) -> Any:
    return (x, *out[1:]) if isinstance(out, tuple) else x


_BASE_KINDS = (
    "hook_embed",
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
    "logits",
)

# -- meanings that differ from the generic text of tdb_core.schema, defined once per quirk -------

GATED_MLP_MEANINGS: dict[str, str] = {
    "mlp.hook_pre": "gate projection output (gate_proj(x)), before the activation",
    "mlp.hook_pre_linear": "up projection output (up_proj(x)), the linear factor of the gated MLP",
    "mlp.hook_post": "act(hook_pre) * hook_pre_linear: the input of the down projection",
}

PARALLEL_MEANINGS: dict[str, str] = {
    "hook_attn_out": "attention branch output added to the residual; in this parallel block "
    "attention and MLP both read hook_resid_pre (there is no hook_resid_mid)",
    "hook_mlp_out": "MLP branch output added to the residual; the MLP reads hook_resid_pre "
    "(through its pre-norm), not resid_pre + attn_out",
    "hook_resid_post": "residual leaving the parallel block: resid_pre + attn_out + mlp_out",
}

SHARED_NORM_MEANINGS: dict[str, str] = {
    "ln1.hook_normalized": "input of the block's one pre-norm normalized, before the gain and "
    "bias (see the generic meaning); attention and MLP both read hook_normalized * gain + bias",
}

POST_NORM_MEANINGS: dict[str, str] = {
    "attn.hook_result": "per-head output-projection term z[head] @ W_O[head], without the output "
    "bias, before the post-attention norm: sum over heads + b_O is the "
    "projection output, and hook_attn_out is that output normalized",
    "hook_attn_out": "output of the post-attention norm applied to the attention projection "
    "(what is added to the residual)",
    "hook_mlp_out": "output of the post-MLP norm applied to the MLP down projection (what is "
    "added to the residual)",
}

SOFTCAP_LOGITS_MEANING = (
    "next-token logits after final soft-capping: cap * tanh(u / cap), u the "
    "unembedding output (the final norm's output @ W_U)"
)


def heads_hook(ctx: HookContext, site: str, d_head: int, heads_first: bool = False) -> Any:
    """A forward hook that serves a module's output as ``site`` ``[B, T, heads, d_head]``: the
    output is ``[B, T, heads * d_head]``, or ``[B, heads, T, d_head]`` when ``heads_first``. The
    output is replaced when the site's value was (an edit or a splice), or when the site is
    differentiated (the model must then read the site's tensor, not the output it views)."""

    def hook(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if heads_first:
            x = out.transpose(1, 2)
        else:  # torch leaves Tensor.unflatten unannotated
            x = out.unflatten(-1, (-1, d_head))  # type: ignore[no-untyped-call]
        y = ctx.point(site, x)
        if y is x and not ctx.needs_graph(site):
            return None
        return y.transpose(1, 2) if heads_first else y.flatten(-2)

    return hook


def fused_qk_hook(ctx: HookContext, q_site: str, k_site: str, d_head: int) -> Any:
    """A forward hook that serves the q and k slices of a per-head fused projection's output
    ``[B, T, heads * (q, k, v) * d_head]`` as ``q_site``/``k_site`` ``[B, T, heads, d_head]``;
    an edit of either (or a gradient wanted at either) is written back into the output."""

    def hook(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        # [B, T, heads, 3 * d_head]; torch leaves Tensor.unflatten unannotated
        qkv = out.unflatten(-1, (-1, 3 * d_head))  # type: ignore[no-untyped-call]
        q, k, v = qkv[..., :d_head], qkv[..., d_head : 2 * d_head], qkv[..., 2 * d_head :]
        q2, k2 = ctx.point(q_site, q), ctx.point(k_site, k)
        if q2 is q and k2 is k and not (ctx.needs_graph(q_site) or ctx.needs_graph(k_site)):
            return None
        return torch.cat([q2, k2, v], dim=-1).flatten(-2)

    return hook


def head_writes(z: torch.Tensor, w_o: torch.Tensor) -> torch.Tensor:
    """Each head's write ``z[..., h, :] @ w_o[h]``: z ``[B, P, H, d_head]``, w_o ``[H, d_head,
    d_model]`` -> ``[B, P, H, d_model]`` (one batched product over heads; a view of its
    ``[H, B * P, d_model]`` result, not copied to the site's layout)."""
    return torch.einsum("bthd,hdm->bthm", z, w_o)


class DecoderAdapter(Adapter):
    """Generic wiring for decoder-only models described by a :class:`Layout`.

    Weights default to ``nn.Linear`` layout (``weight`` is ``[out, in]``); adapters of models
    with other layouts (GPT-2's ``Conv1D``) override the accessors. ``meanings`` holds an
    architecture's own site meanings, on top of those its quirks imply.
    """

    layout: Layout
    norm_kind: str = "layernorm"
    meanings: ClassVar[dict[str, str]] = {}
    rotary: ClassVar[bool] = False  # rotates queries and keys: hook_q/hook_k vs hook_rot_q/rot_k

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._blocks: list[torch.nn.Module] = _blocks_of(model, self.layout.blocks)
        register_attention_layers(
            [_get(b, self.layout.attn) for b in self._blocks], rotary=self.rotary
        )

    # -- schema ------------------------------------------------------------------------------------
    @property
    def hf_config(self) -> Any:
        """The HF model's config. Its fields differ by architecture (``n_layer`` or
        ``num_hidden_layers``, quirk flags such as ``use_parallel_residual``), so they are read
        untyped, as :meth:`read_dims` reads them."""
        return self.model.config

    @cached_property
    def dims(self) -> ModelDims:
        return self.read_dims(self.hf_config)

    def read_dims(self, config: Any) -> ModelDims:
        """Sizes from the HF config; adapters override for configs with other field names."""
        n_heads = config.num_attention_heads
        d_model = config.hidden_size
        return ModelDims(
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_model=d_model,
            d_head=getattr(config, "head_dim", None) or d_model // n_heads,
            d_mlp=config.intermediate_size,
            d_vocab=config.vocab_size,
            n_ctx=config.max_position_embeddings,
        )

    @cached_property
    def schema(self) -> ModelSchema:
        keys = [k for k in _BASE_KINDS if self._has_kind(k)]
        if self.layout.pos_embed is not None:
            keys.insert(1, "hook_pos_embed")
        meanings = self.site_meanings()
        kinds = tuple(
            replace(SITE_KIND_BY_KEY[k], meaning=meanings[k])
            if k in meanings
            else SITE_KIND_BY_KEY[k]
            for k in keys
        )
        return ModelSchema(self.dims, kinds)

    def _has_kind(self, key: str) -> bool:
        if key in ("attn.hook_rot_q", "attn.hook_rot_k"):
            return self.rotary
        if key == "mlp.hook_pre_linear":
            return self.layout.mlp_up is not None
        if key == "hook_resid_mid":
            return not self.parallel_blocks
        if key.startswith("ln2."):
            return self.layout.ln2 is not None
        return True

    def site_meanings(self) -> dict[str, str]:
        """Site meanings that differ from the generic ones, from the quirks, then ``meanings``."""
        out: dict[str, str] = {}
        if self.layout.mlp_up is not None:
            out.update(GATED_MLP_MEANINGS)
        if self.parallel_blocks:
            out.update(PARALLEL_MEANINGS)
        if self.layout.ln2 is None:
            out.update(SHARED_NORM_MEANINGS)
        if self.layout.post_attn_norm is not None or self.layout.post_mlp_norm is not None:
            out.update(POST_NORM_MEANINGS)
        if self.logit_softcap() is not None:
            out["logits"] = SOFTCAP_LOGITS_MEANING
        out.update(self.meanings)
        return out

    # -- weights, in schema layout (nn.Linear: weight [out, in]) -----------------------------------
    def _block_module(self, layer: int, path: str) -> torch.nn.Module:
        return _get(self._blocks[layer], path)

    def W_E(self) -> torch.Tensor:
        return module_tensor(_get(self.model, self.layout.embed), "weight")  # [vocab, d_model]

    def W_U(self) -> torch.Tensor:
        return module_tensor(_get(self.model, self.layout.unembed), "weight").T  # [d_model, vocab]

    def b_U(self) -> torch.Tensor | None:
        return module_bias(_get(self.model, self.layout.unembed))

    def W_O(self, layer: int) -> torch.Tensor:
        d = self.dims
        o_proj = self._block_module(layer, self.layout.o_proj)
        w = module_tensor(o_proj, "weight")  # [d_model, H * d_head]
        return w.T.reshape(d.n_heads, d.d_head, d.d_model)

    def b_O(self, layer: int) -> torch.Tensor | None:
        return module_bias(self._block_module(layer, self.layout.o_proj))

    def W_in(self, layer: int) -> torch.Tensor:
        """The projection that produces ``mlp.hook_pre`` ``[d_model, d_mlp]`` (the gate, in gated
        MLPs; TransformerLens calls that one ``W_gate`` and the up projection ``W_in``)."""
        return module_tensor(self._block_module(layer, self.layout.mlp_in), "weight").T

    def W_out(self, layer: int) -> torch.Tensor:
        mlp_out = self._block_module(layer, self.layout.mlp_out)
        return module_tensor(mlp_out, "weight").T  # [d_mlp, d_model]

    def b_out(self, layer: int) -> torch.Tensor | None:
        return module_bias(self._block_module(layer, self.layout.mlp_out))

    def W_pos(self) -> torch.Tensor | None:
        path = self.layout.pos_embed
        if path is None:
            return None
        return module_tensor(_get(self.model, path), "weight")  # [n_ctx, d_model]

    def attn_weights(self, layer: int) -> AttnWeights:
        """Separate ``q_proj``/``k_proj``/``v_proj`` ``nn.Linear`` modules beside the output
        projection (Llama, Mistral, Qwen2, Gemma 2, Phi); fused layouts override this."""
        d = self.dims
        attn = self.layout.o_proj.rsplit(".", 1)[0]

        def split(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            m = self._block_module(layer, f"{attn}.{name}")
            w = module_tensor(m, "weight").T.reshape(d.d_model, n, d.d_head).permute(1, 0, 2)
            b = module_bias(m)  # w: [n, d_model, d_head]
            return w, None if b is None else b.reshape(n, d.d_head)

        (wq, bq), (wk, bk), (wv, bv) = (
            split("q_proj", d.n_heads),
            split("k_proj", d.n_kv_heads),
            split("v_proj", d.n_kv_heads),
        )
        return AttnWeights(wq, wk, wv, bq, bk, bv)

    def b_in(self, layer: int) -> torch.Tensor | None:
        return module_bias(self._block_module(layer, self.layout.mlp_in))

    def W_up(self, layer: int) -> torch.Tensor | None:
        path = self.layout.mlp_up
        return None if path is None else module_tensor(self._block_module(layer, path), "weight").T

    def b_up(self, layer: int) -> torch.Tensor | None:
        path = self.layout.mlp_up
        return None if path is None else module_bias(self._block_module(layer, path))

    # -- norms -------------------------------------------------------------------------------------
    def norm_of(self, module: torch.nn.Module) -> Norm:
        eps = getattr(module, "eps", None)
        if eps is None:
            eps = getattr(module, "variance_epsilon", None)
        if eps is None:
            raise _unsupported(module, "has neither 'eps' nor 'variance_epsilon'")
        return Norm(
            self.norm_kind,
            float(eps),
            getattr(module, "weight", None),
            getattr(module, "bias", None),
        )

    def final_norm(self) -> Norm:
        return self.norm_of(_get(self.model, self.layout.ln_final))

    def attn_in_norm(self, layer: int) -> Norm:
        return self.norm_of(self._block_module(layer, self.layout.ln1))

    def mlp_in_norm(self, layer: int) -> Norm:
        """The norm whose output the MLP reads: ``ln2``, or ``ln1`` where one norm feeds both."""
        return self.norm_of(self._block_module(layer, self.layout.ln2 or self.layout.ln1))

    def post_attn_norm(self, layer: int) -> Norm | None:
        path = self.layout.post_attn_norm
        return None if path is None else self.norm_of(self._block_module(layer, path))

    def post_mlp_norm(self, layer: int) -> Norm | None:
        path = self.layout.post_mlp_norm
        return None if path is None else self.norm_of(self._block_module(layer, path))

    # -- hooks -------------------------------------------------------------------------------------
    def install(self, ctx: HookContext) -> list[Any]:
        handles: list[Any] = []
        m, lay = self.model, self.layout

        def fwd(module: torch.nn.Module, fn: Callable[..., Any]) -> None:
            handles.append(module.register_forward_hook(fn))

        def pre(module: torch.nn.Module, fn: Callable[..., Any]) -> None:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

        if ctx.wants("hook_embed"):
            fwd(_get(m, lay.embed), lambda mod, args, out: ctx.point("hook_embed", out))
        if lay.pos_embed is not None and ctx.wants("hook_pos_embed"):

            def pos_hook(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
                batch = ctx.lengths.shape[0]
                return ctx.point("hook_pos_embed", out.expand(batch, *out.shape[1:]))

            fwd(_get(m, lay.pos_embed), pos_hook)

        for layer, block in enumerate(self._blocks):
            self._install_block(ctx, layer, block, fwd, pre)

        self._install_norm(ctx, _get(m, lay.ln_final), norm_name("ln_final"), fwd)
        if ctx.wants("logits"):
            if self.logit_softcap() is None:
                fwd(_get(m, lay.unembed), lambda mod, args, out: ctx.point("logits", out))
            else:
                # The model soft-caps after the unembedding: the logits are its output's.
                def logits_hook(mod: Any, args: Any, out: Any) -> Any:
                    out.logits = ctx.point("logits", out.logits)  # [B, T, vocab]
                    return out

                fwd(m, logits_hook)
        return handles

    def _install_block(
        self,
        ctx: HookContext,
        layer: int,
        block: torch.nn.Module,
        fwd: Callable[..., None],
        pre: Callable[..., None],
    ) -> None:
        lay = self.layout
        resid_pre, resid_mid, resid_post = (
            site_name("hook_resid_pre", layer),
            site_name("hook_resid_mid", layer),
            site_name("hook_resid_post", layer),
        )
        attn_out, mlp_out = site_name("hook_attn_out", layer), site_name("hook_mlp_out", layer)
        mid_edit = ctx.has_edit(resid_mid)

        if ctx.wants(resid_pre) or mid_edit:

            def block_pre(
                mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[tuple[Any, ...], dict[str, Any]]:
                if args:
                    x = ctx.point(resid_pre, args[0])
                    ctx.stash[("resid_pre", layer)] = x
                    return (x, *args[1:]), kwargs
                x = ctx.point(resid_pre, kwargs["hidden_states"])
                ctx.stash[("resid_pre", layer)] = x
                return args, {**kwargs, "hidden_states": x}

            pre(block, block_pre)

        self._install_norm(ctx, _get(block, lay.ln1), norm_name("ln1", layer), fwd)
        if self.rotary:
            self._install_pre_rotary(ctx, layer, block, fwd)
        if lay.ln2 is not None:
            self._install_norm(ctx, _get(block, lay.ln2), norm_name("ln2", layer), fwd)
            if ctx.wants(resid_mid):

                def ln2_pre(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                    x = args[0] if args else kwargs["hidden_states"]
                    ctx.observe(resid_mid, x)

                pre(_get(block, lay.ln2), ln2_pre)

        result = site_name("attn.hook_result", layer)
        if ctx.wants(result):
            o_proj = _get(block, lay.o_proj)

            def o_proj_hook(mod: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
                z = args[0]  # [B, T, H * d_head]
                w_o = self.W_O(layer)  # [H, d_head, d_model]
                z = z.reshape(*z.shape[:-1], w_o.shape[0], w_o.shape[1])  # [B, T, H, d_head]
                if not ctx.needs_graph(result):
                    # only what the captures keep: their rows, positions and heads
                    def block(n: int, pos: Any, heads: Any) -> torch.Tensor:
                        zz, w = z[:n].detach(), w_o.detach()
                        if pos is not None:
                            zz = zz[torch.arange(n, device=zz.device)[:, None], pos]
                        if heads is not None:
                            zz, w = zz.index_select(2, heads), w.index_select(0, heads)
                        return head_writes(zz, w)

                    ctx.observe_derived(result, block)
                    return out
                res = torch.einsum("bthd,hdm->bthm", z, w_o)  # [B, T, H, d_model]
                edited = ctx.point(result, res)
                b_o = self.b_O(layer)
                new = edited.sum(2)  # [B, T, d_model]
                new = new if b_o is None else new + b_o
                if edited is res and torch.is_grad_enabled():
                    # differentiated, not edited: the module's own value (logits stay
                    # bit-identical), gradients through the per-head site
                    return out.detach() + (new - new.detach())
                return new

            fwd(o_proj, o_proj_hook)

        if ctx.wants(attn_out) or mid_edit:

            def attn_out_hook(mod: Any, args: tuple[Any, ...], out: Any) -> Any:
                a = ctx.point(attn_out, _first(out))
                if mid_edit:
                    r = ctx.stash[("resid_pre", layer)]
                    mid = ctx.edit(resid_mid, a + r)  # what the block will compute, edited
                    a = mid - r
                return _replace_first(out, a)

            fwd(_get(block, lay.post_attn_norm or lay.attn), attn_out_hook)

        self._install_mlp(ctx, layer, block, fwd, pre)

        if ctx.wants(mlp_out):
            fwd(
                _get(block, lay.post_mlp_norm or lay.mlp),
                lambda mod, args, out: _replace_first(out, ctx.point(mlp_out, _first(out))),
            )
        if ctx.wants(resid_post):
            fwd(
                block,
                lambda mod, args, out: _replace_first(out, ctx.point(resid_post, _first(out))),
            )

    def _install_pre_rotary(
        self, ctx: HookContext, layer: int, block: torch.nn.Module, fwd: Callable[..., None]
    ) -> None:
        """``hook_q``/``hook_k`` of a rotary model: the projections' outputs, before rotation
        (the attention function sees them rotated, as ``hook_rot_q``/``hook_rot_k``)."""
        fused = self.layout.qkv_proj
        if fused is not None:
            q_site, k_site = site_name("attn.hook_q", layer), site_name("attn.hook_k", layer)
            if ctx.wants_any((q_site, k_site)):
                fwd(_get(block, fused), fused_qk_hook(ctx, q_site, k_site, self.dims.d_head))
            return
        for key, path in (("attn.hook_q", self.layout.q_proj), ("attn.hook_k", self.layout.k_proj)):
            site = site_name(key, layer)
            if ctx.wants(site):
                assert path is not None, f"{type(self).__name__}: rotary layout without {key}"
                fwd(_get(block, path), heads_hook(ctx, site, self.dims.d_head))

    def _install_mlp(
        self,
        ctx: HookContext,
        layer: int,
        block: torch.nn.Module,
        fwd: Callable[..., None],
        pre: Callable[..., None],
    ) -> None:
        lay = self.layout
        pre_site, linear_site, post_site = (
            site_name(k, layer) for k in ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post")
        )
        if ctx.wants(pre_site):
            fwd(_get(block, lay.mlp_in), lambda mod, args, out: ctx.point(pre_site, out))
        if lay.mlp_up is not None and ctx.wants(linear_site):
            fwd(
                _get(block, lay.mlp_up),
                lambda mod, args, out: ctx.point(linear_site, out),
            )
        if ctx.wants(post_site):

            def post_hook(
                mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[tuple[Any, ...], dict[str, Any]]:
                return (ctx.point(post_site, args[0]), *args[1:]), kwargs

            pre(_get(block, lay.mlp_out), post_hook)

    def _install_norm(
        self, ctx: HookContext, module: torch.nn.Module, name: str, fwd: Callable[..., None]
    ) -> None:
        """Hooks of a norm, both derived from its input ``x``: ``{name}.hook_scale`` and
        ``{name}.hook_normalized`` (``(x - mean) / scale``, or ``x / scale`` for RMSNorm: before
        the gain and bias, as in TransformerLens). The module's output is
        ``norm.affine(hook_normalized)``.

        The module's own output goes on untouched unless a forward edit or a splice (an SAE)
        replaces one of the two values: then the output is recomputed from them, so an edited
        normalized value gets the gain and bias. Reading leaves logits bit-identical. When a site
        is differentiated, or the scale is frozen (``freeze_norms``), the output keeps the
        module's value and gradients flow through ``affine(normalize(x, scale))``, with the scale
        held constant when frozen.
        """
        scale_site, norm_site = name + ".hook_scale", name + ".hook_normalized"
        freeze = ctx.freezes(name)
        if not (ctx.wants(scale_site) or ctx.wants(norm_site) or freeze):
            return
        norm = self.norm_of(module)
        graph = freeze or ctx.needs_graph(scale_site) or ctx.needs_graph(norm_site)
        may_replace = _replaces_values(ctx, scale_site) or _replaces_values(ctx, norm_site)
        read_normalized = ctx.wants(norm_site)

        def norm_hook(mod: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            x = args[0]
            read_scale, read_normed = norm.read(x)  # both values from one fused kernel
            if not graph:  # read only
                ctx.point(scale_site, read_scale)
                if read_normalized:
                    ctx.point(norm_site, read_normed)
                return out
            # the same values as a read (bit for bit), with gradients through the formulas
            grad = torch.is_grad_enabled()
            raw_scale = _valued(read_scale, norm.scale(x)) if grad else read_scale
            scale = ctx.point(scale_site, raw_scale)
            held = scale.detach() if freeze else scale
            if scale is not raw_scale:  # an edited scale: the normalized value follows it
                raw = norm.normalize(x, held)
            else:
                raw = _valued(read_normed, norm.normalize(x, held)) if grad else read_normed
            normed = ctx.point(norm_site, raw)
            if may_replace and (normed is not raw or scale is not raw_scale):
                return norm.affine(normed)  # the output follows the edited values
            if not torch.is_grad_enabled():
                return out
            new = norm.affine(normed)  # the module's own value; gradients through the sites
            return out.detach() + (new - new.detach())

        fwd(module, norm_hook)


def _valued(value: torch.Tensor, formula: torch.Tensor) -> torch.Tensor:
    """``value`` bit for bit, differentiated as ``formula`` (which computes the same thing)."""
    return value.detach() + (formula - formula.detach())


def _replaces_values(ctx: HookContext, site: str) -> bool:
    """Whether a forward edit or a splice may replace the site's value in the forward pass (a
    backward-only edit leaves the forward values as they are)."""
    return site in ctx.plan.splices or any(
        e.pass_ is specs.Pass.FORWARD for e in ctx.plan.edits.get(site, ())
    )
