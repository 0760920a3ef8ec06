"""Llama and its close relatives: ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``.

The three share one block: RMSNorm pre-norms, rotary embeddings, grouped-query attention and a
gated (SwiGLU) MLP ``down(act(gate(x)) * up(x))``. Each has its own config class; the sizes are
read from the fields they share (``num_key_value_heads``, ``head_dim``, ``intermediate_size``).
Family quirks live in the HF modules and need no wiring here:

- Qwen2 has biases on the q/k/v projections (not on the output projection); ``hook_q``/``hook_k``/
  ``hook_v`` include them.
- Mistral attends within a sliding window (``sliding_window``) on every layer; Qwen2 does on layers
  ``>= max_window_layers`` when ``use_sliding_window``. The window is part of the mask HF builds
  for each layer, so ``hook_attn_scores`` shows keys outside it as ``-inf`` like causal masking.
- Llama may have biases (``attention_bias``, ``mlp_bias``); ``b_O``/``b_out`` return them or None.

Sites: no ``hook_pos_embed`` (rotary); ``hook_q``/``hook_k`` are the ``q_proj``/``k_proj``
outputs before rotary and ``hook_rot_q``/``hook_rot_k`` after it (TransformerLens's names);
``hook_k``/``hook_rot_k``/``hook_v`` have ``num_key_value_heads`` heads; ``mlp.hook_pre`` = gate projection, ``mlp.hook_pre_linear`` = up
projection, ``mlp.hook_post`` = the down projection's input; ``ln1``/``ln2`` are
``input_layernorm``/``post_attention_layernorm`` (``hook_scale`` = ``sqrt(mean(x^2) + eps)``).
"""

from __future__ import annotations

from adapters.base import DecoderAdapter, Layout
from tdb_core.adapter import register_adapter


@register_adapter
class LlamaAdapter(DecoderAdapter):
    architectures = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
    norm_kind = "rmsnorm"
    rotary = True
    layout = Layout(
        embed="model.embed_tokens",
        blocks="model.layers",
        ln1="input_layernorm",
        attn="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        o_proj="self_attn.o_proj",
        ln2="post_attention_layernorm",
        mlp="mlp",
        mlp_in="mlp.gate_proj",
        mlp_up="mlp.up_proj",
        mlp_out="mlp.down_proj",
        ln_final="model.norm",
        unembed="lm_head",
    )
