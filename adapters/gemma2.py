"""Gemma 2 (``Gemma2ForCausalLM``): sandwich RMSNorms, soft-capping, alternating sliding windows.

Quirks, beside the code that needs them:

- **Scaled embedding.** The embedding module multiplies by ``sqrt(d_model)`` (cast to the model's
  dtype). ``hook_embed`` is that module's output, what the residual stream receives, and ``W_E``
  includes the scale, so ``hook_embed == W_E[token]`` as for every other model (TransformerLens
  folds the scale into ``W_E`` the same way). ``W_U`` is the tied, *unscaled* matrix.
- **RMSNorm with (1 + w).** Every norm multiplies by ``1 + weight`` (norm kind ``rmsnorm_offset``);
  ``hook_normalized`` is ``x / scale`` before that gain (TransformerLens folds the 1 into ``w``).
- **Extra norms around attention and MLP.** ``ln1`` = ``input_layernorm``, ``ln2`` =
  ``pre_feedforward_layernorm``; ``post_attention_layernorm`` and ``post_feedforward_layernorm``
  normalize each branch's output before it joins the residual, so ``hook_attn_out``/``hook_mlp_out``
  are their outputs; ``attn.hook_result`` (sum + ``b_O`` = the ``o_proj`` output) and
  ``hook_post @ W_out + b_out`` are the branch outputs *before* those norms
  (``post_attn_norm``/``post_mlp_norm`` give them).
- **Attention scaling and soft-capping.** Scores are ``q.k * query_pre_attn_scalar**-0.5`` (not
  ``d_head**-0.5``), then ``cap * tanh(s / cap)`` with ``attn_logit_softcapping``, then masked;
  ``hook_attn_scores`` is that value. The attention function receives the scale and the cap from
  the module, as HF's eager attention does.
- **Sliding window on alternate layers** (``layer_types``; layer 0 slides by default): part of the
  per-layer mask HF builds, so out-of-window keys show as ``-inf`` in ``hook_attn_scores``.
- **Final logit soft-capping** (``final_logit_softcapping``) happens after ``lm_head``, so the
  ``logits`` site is read from the model's output: ``cap * tanh((ln_final @ W_U) / cap)``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from adapters.base import DecoderAdapter, Layout, module_tensor
from tdb_core.adapter import register_adapter


@register_adapter
class Gemma2Adapter(DecoderAdapter):
    architectures = ("Gemma2ForCausalLM",)
    norm_kind = "rmsnorm_offset"
    rotary = True
    layout = Layout(
        embed="model.embed_tokens",
        blocks="model.layers",
        ln1="input_layernorm",
        attn="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        o_proj="self_attn.o_proj",
        post_attn_norm="post_attention_layernorm",
        ln2="pre_feedforward_layernorm",
        mlp="mlp",
        mlp_in="mlp.gate_proj",
        mlp_up="mlp.up_proj",
        mlp_out="mlp.down_proj",
        post_mlp_norm="post_feedforward_layernorm",
        ln_final="model.norm",
        unembed="lm_head",
    )
    meanings: ClassVar[dict[str, str]] = {
        "hook_embed": "token embedding times sqrt(d_model) (Gemma's embedding scale; W_E includes "
        "it): what the residual stream receives",
        "attn.hook_q": "queries: the q_proj output, before the rotary embedding and the "
        "query_pre_attn_scalar**-0.5 scaling",
        "attn.hook_rot_q": "queries after the rotary embedding (hook_q rotated by position), "
        "before the query_pre_attn_scalar**-0.5 scaling",
        "attn.hook_attn_scores": "attention scores: q.k * query_pre_attn_scalar**-0.5, soft-capped "
        "as cap * tanh(s / cap), masked (causal, and the sliding window on "
        "sliding layers), pre-softmax; masked entries are -inf",
        "ln1.hook_normalized": "input of input_layernorm normalized, before its (1 + w) gain: "
        "x / hook_scale; the attention reads hook_normalized * (1 + w)",
        "ln2.hook_normalized": "input of pre_feedforward_layernorm normalized, before its (1 + w) "
        "gain: x / hook_scale; the MLP reads hook_normalized * (1 + w)",
        "ln_final.hook_normalized": "input of the final norm normalized, before its (1 + w) gain: "
        "x / hook_scale; the unembedding reads hook_normalized * (1 + w)",
    }

    def W_E(self) -> torch.Tensor:
        emb = self.model.get_submodule("model.embed_tokens")
        weight, scale = module_tensor(emb, "weight"), module_tensor(emb, "embed_scale")
        return weight * scale.to(weight.dtype)  # [vocab, d_model], scaled

    def logit_softcap(self) -> float | None:
        cap = self.hf_config.final_logit_softcapping
        return None if cap is None else float(cap)
