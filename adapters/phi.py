"""Phi (``PhiForCausalLM``: phi-1, phi-1.5, phi-2): parallel blocks with one shared LayerNorm.

Chosen as the fourth family over OPT and GPT-J because it is the most recent of the three (phi-2,
2023; TransformerLens supports it) and because it adds quirks no other supported family has: a
single pre-norm that feeds both branches (so ``ln2`` is absent), and an unembedding with a bias.

Quirks, beside the code that needs them:

- **Parallel block, one norm.** ``resid_post = resid_pre + attn(ln(x)) + mlp(ln(x))``: the schema
  has no ``hook_resid_mid`` and no ``ln2.*`` (the MLP reads ``ln1``'s output);
  ``hook_attn_out``/``hook_mlp_out`` are each branch's write.
- **Partial rotary** (``partial_rotary_factor``, 0.4 for phi-2): only the first dimensions of each
  head rotate; ``hook_q``/``hook_k`` are read after rotation (and after the optional per-head
  ``q_layernorm``/``k_layernorm`` when ``qk_layernorm``). No ``hook_pos_embed``.
- Biases everywhere: q/k/v, ``dense`` (``b_O``), ``fc1``/``fc2`` (``b_out``) and ``lm_head``
  (``b_U``: ``logits = final norm output @ W_U + b_U``).
"""

from __future__ import annotations

from adapters.base import DecoderAdapter, Layout
from tdb_core.adapter import register_adapter


@register_adapter
class PhiAdapter(DecoderAdapter):
    architectures = ("PhiForCausalLM",)
    norm_kind = "layernorm"
    layout = Layout(
        embed="model.embed_tokens",
        blocks="model.layers",
        ln1="input_layernorm",
        attn="self_attn",
        o_proj="self_attn.dense",
        mlp="mlp",
        mlp_in="mlp.fc1",
        mlp_out="mlp.fc2",
        ln_final="model.final_layernorm",
        unembed="lm_head",
    )

    @property
    def parallel_blocks(self) -> bool:
        return True
