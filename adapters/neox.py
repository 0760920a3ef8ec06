"""GPT-NeoX (``GPTNeoXForCausalLM``: Pythia, GPT-NeoX-20B): rotary embeddings, LayerNorm blocks.

Quirks, beside the code that needs them:

- **Parallel residual** (``use_parallel_residual``, true for Pythia): attention and MLP both read
  the block input, ``resid_post = resid_pre + attn_out + mlp_out``. The schema then has no
  ``hook_resid_mid``; ``hook_attn_out``/``hook_mlp_out`` are each branch's write, and ``ln2`` (HF's
  ``post_attention_layernorm``, despite its name the MLP's pre-norm) reads ``hook_resid_pre``.
  With ``use_parallel_residual=False`` the block is sequential and every GPT-2 site exists.
- **Partial rotary** (``rotary_pct``, 0.25 for Pythia): only the first ``rotary_pct * d_head``
  dimensions of each query/key head are rotated. ``hook_q``/``hook_k`` are the projections before
  rotation, ``hook_rot_q``/``hook_rot_k`` after it (their remaining dimensions equal the plain
  projections). No ``hook_pos_embed``.
- The fused ``query_key_value`` projection is laid out per head (``[head, (q, k, v), d_head]``):
  ``hook_q``/``hook_k`` are its per-head slices, read (and edited) at its output; values are read
  inside the attention function. The unembedding (``lm_head``, HF's former ``embed_out``) is
  untied and has no bias.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from adapters.base import DecoderAdapter, Layout
from tdb_core.adapter import register_adapter
from tdb_core.hooks import HookContext
from tdb_core.schema import site_name


@register_adapter
class GPTNeoXAdapter(DecoderAdapter):
    architectures = ("GPTNeoXForCausalLM",)
    norm_kind = "layernorm"
    rotary = True
    layout = Layout(
        embed="gpt_neox.embed_in",
        blocks="gpt_neox.layers",
        ln1="input_layernorm",
        attn="attention",
        o_proj="attention.dense",
        ln2="post_attention_layernorm",
        mlp="mlp",
        mlp_in="mlp.dense_h_to_4h",
        mlp_out="mlp.dense_4h_to_h",
        ln_final="gpt_neox.final_layer_norm",
        unembed="lm_head",
    )
    meanings: ClassVar[dict[str, str]] = {
        "ln2.hook_normalized": "input of the MLP pre-norm (HF post_attention_layernorm) "
        "normalized, before the gain and bias; in a parallel block that input is hook_resid_pre",
    }

    @property
    def parallel_blocks(self) -> bool:
        return bool(self.model.config.use_parallel_residual)

    def _install_pre_rotary(
        self, ctx: HookContext, layer: int, block: torch.nn.Module, fwd: Callable[..., None]
    ) -> None:
        """``hook_q``/``hook_k`` are the per-head q and k slices of the fused projection's output
        ``[B, T, head * (q, k, v) * d_head]``; an edit of either is written back into it."""
        q_site, k_site = site_name("attn.hook_q", layer), site_name("attn.hook_k", layer)
        if not ctx.wants_any((q_site, k_site)):
            return
        d = self.dims.d_head

        def qkv_hook(mod: Any, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            qkv = out.unflatten(-1, (-1, 3 * d))  # [B, T, head, 3 * d_head]
            q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
            q2, k2 = ctx.point(q_site, q), ctx.point(k_site, k)
            if q2 is q and k2 is k:
                return None
            return torch.cat([q2, k2, v], dim=-1).flatten(-2)

        fwd(block.get_submodule("attention.query_key_value"), qkv_hook)
