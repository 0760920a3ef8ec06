"""Phi (``PhiForCausalLM``: phi-1, phi-1.5, phi-2): parallel blocks with one shared LayerNorm.

Chosen as the fourth family over OPT and GPT-J because it is the most recent of the three (phi-2,
2023; TransformerLens supports it) and because it adds quirks no other supported family has: a
single pre-norm that feeds both branches (so ``ln2`` is absent), and an unembedding with a bias.

Quirks, beside the code that needs them:

- **Parallel block, one norm.** ``resid_post = resid_pre + attn(ln(x)) + mlp(ln(x))``: the schema
  has no ``hook_resid_mid`` and no ``ln2.*`` (the MLP reads ``ln1``'s output);
  ``hook_attn_out``/``hook_mlp_out`` are each branch's write.
- **Partial rotary** (``partial_rotary_factor``, 0.4 for phi-2): only the first dimensions of each
  head rotate. ``hook_q``/``hook_k`` are what the rotary embedding receives: the projections, or
  the outputs of the optional per-head ``q_layernorm``/``k_layernorm`` when ``qk_layernorm``;
  ``hook_rot_q``/``hook_rot_k`` are after rotation (the last dimensions equal ``hook_q``'s). No
  ``hook_pos_embed``.
- Biases everywhere: q/k/v, ``dense`` (``b_O``), ``fc1``/``fc2`` (``b_out``) and ``lm_head``
  (``b_U``: ``logits = final norm output @ W_U + b_U``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from adapters.base import DecoderAdapter, Layout, heads_hook
from tdb_core.adapter import register_adapter
from tdb_core.hooks import HookContext
from tdb_core.schema import site_name


@register_adapter
class PhiAdapter(DecoderAdapter):
    architectures = ("PhiForCausalLM",)
    norm_kind = "layernorm"
    rotary = True
    layout = Layout(
        embed="model.embed_tokens",
        blocks="model.layers",
        ln1="input_layernorm",
        attn="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        o_proj="self_attn.dense",
        mlp="mlp",
        mlp_in="mlp.fc1",
        mlp_out="mlp.fc2",
        ln_final="model.final_layernorm",
        unembed="lm_head",
    )

    meanings: ClassVar[dict[str, str]] = {
        "attn.hook_q": "queries: the q_proj output with its bias (then q_layernorm's output when "
        "the config has qk_layernorm), before the partial rotary embedding",
        "attn.hook_k": "keys: the k_proj output with its bias (then k_layernorm's output when the "
        "config has qk_layernorm), before the partial rotary embedding; one per kv head",
    }

    @property
    def parallel_blocks(self) -> bool:
        return True

    def _install_pre_rotary(
        self, ctx: HookContext, layer: int, block: torch.nn.Module, fwd: Callable[..., None]
    ) -> None:
        if not self.hf_config.qk_layernorm:
            super()._install_pre_rotary(ctx, layer, block, fwd)
            return
        # The per-head norms run on [B, heads, T, d_head]; their outputs are what is rotated.
        for key, path in (
            ("attn.hook_q", "self_attn.q_layernorm"),
            ("attn.hook_k", "self_attn.k_layernorm"),
        ):
            site = site_name(key, layer)
            if ctx.wants(site):
                module = block.get_submodule(path)
                fwd(module, heads_hook(ctx, site, self.dims.d_head, heads_first=True))
