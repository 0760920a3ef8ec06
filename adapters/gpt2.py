"""GPT-2 (``GPT2LMHeadModel``): learned positions, pre-LayerNorm blocks, GELU MLP.

Quirk: GPT-2 uses ``Conv1D`` modules, whose weight is stored ``[in, out]`` (the transpose of
``nn.Linear``), and a fused ``c_attn`` projection for Q, K and V. The unembedding is tied to the
token embedding and has no bias.
"""

from __future__ import annotations

from typing import Any

import torch

from adapters.base import DecoderAdapter, Layout, module_tensor
from tdb_core.adapter import AttnWeights, register_adapter
from tdb_core.schema import ModelDims


@register_adapter
class GPT2Adapter(DecoderAdapter):
    architectures = ("GPT2LMHeadModel",)
    norm_kind = "layernorm"
    layout = Layout(
        embed="transformer.wte",
        pos_embed="transformer.wpe",
        blocks="transformer.h",
        ln1="ln_1",
        attn="attn",
        o_proj="attn.c_proj",
        ln2="ln_2",
        mlp="mlp",
        mlp_in="mlp.c_fc",
        mlp_out="mlp.c_proj",
        ln_final="transformer.ln_f",
        unembed="lm_head",
    )

    def read_dims(self, config: Any) -> ModelDims:
        return ModelDims(
            n_layers=config.n_layer,
            n_heads=config.n_head,
            n_kv_heads=config.n_head,
            d_model=config.n_embd,
            d_head=config.n_embd // config.n_head,
            d_mlp=config.n_inner or 4 * config.n_embd,
            d_vocab=config.vocab_size,
            n_ctx=config.n_positions,
        )

    # W_E, W_U: the generic accessors (wte and lm_head are ordinary [vocab, d_model] weights)

    def W_O(self, layer: int) -> torch.Tensor:
        d = self.dims
        w = module_tensor(self._block_module(layer, "attn.c_proj"), "weight")
        return w.view(d.n_heads, d.d_head, d.d_model)  # Conv1D: [in = H * d_head, d_model]

    def b_O(self, layer: int) -> torch.Tensor:
        return module_tensor(self._block_module(layer, "attn.c_proj"), "bias")

    def W_out(self, layer: int) -> torch.Tensor:
        c_proj = self._block_module(layer, "mlp.c_proj")
        return module_tensor(c_proj, "weight")  # Conv1D: [d_mlp, d_model]

    def b_out(self, layer: int) -> torch.Tensor:
        return module_tensor(self._block_module(layer, "mlp.c_proj"), "bias")

    def W_in(self, layer: int) -> torch.Tensor:
        c_fc = self._block_module(layer, "mlp.c_fc")
        return module_tensor(c_fc, "weight")  # Conv1D: [d_model, d_mlp]

    def attn_weights(self, layer: int) -> AttnWeights:
        d = self.dims
        c_attn = self._block_module(layer, "attn.c_attn")
        # fused c_attn, Conv1D: weight [d_model, 3 * d_model] = [q | k | v], each [H * d_head]
        w = module_tensor(c_attn, "weight").reshape(d.d_model, 3, d.n_heads, d.d_head)
        w = w.permute(1, 2, 0, 3)
        b = module_tensor(c_attn, "bias").reshape(3, d.n_heads, d.d_head)
        return AttnWeights(w[0], w[1], w[2], b[0], b[1], b[2])
