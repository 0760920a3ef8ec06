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
  ``hook_q``/``hook_k`` are its per-head slices, read (and edited) at its output (``qkv_proj``);
  values are read inside the attention function. The unembedding (``lm_head``, HF's former
  ``embed_out``) is untied and has no bias.
"""

from __future__ import annotations

from typing import ClassVar

from adapters.base import DecoderAdapter, Layout, module_bias, module_tensor
from tdb_core.adapter import AttnWeights, register_adapter


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
        qkv_proj="attention.query_key_value",
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
        return bool(self.hf_config.use_parallel_residual)

    def attn_weights(self, layer: int) -> AttnWeights:
        d = self.dims
        qkv = self._block_module(layer, "attention.query_key_value")
        # nn.Linear [H * 3 * d_head, d_model], outputs laid out per head: [head, (q, k, v), d_head]
        w = module_tensor(qkv, "weight").T.reshape(d.d_model, d.n_heads, 3, d.d_head)
        w = w.permute(2, 1, 0, 3)
        b = module_bias(qkv)
        bb = None if b is None else b.reshape(d.n_heads, 3, d.d_head).permute(1, 0, 2)
        return AttnWeights(
            w[0],
            w[1],
            w[2],
            None if bb is None else bb[0],
            None if bb is None else bb[1],
            None if bb is None else bb[2],
        )
