"""The architectures of the conformance suite: tiny random-init configs and what each one lacks.

Every case is small (2 layers, d_model 64, 4 heads), uses grouped-query attention where the family
has it, and turns on the family's quirks at sizes where they matter for a 10-20 token prompt
(sliding windows of 4-5 tokens, soft-caps of a few units, partial rotary). Module paths here are
written from the HF modeling code independently of the adapters, so hand edits in the tests do not
reuse the code under test.

To add an architecture: write its reference in ``references.py`` and append an :class:`ArchCase`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tests.unit.adapters import references as R

INIT = 0.1  # initializer range: large enough that attention is far from uniform at this size


@dataclass(frozen=True)
class ArchCase:
    """One architecture under test.

    absent: site kinds the architecture lacks. o_proj / block / ln1 / ln_final: HF module paths,
    ``{L}`` the layer.
    offset_norms: norms multiply by ``1 + w`` (their weights are randomized around 0, not 1).
    hf_sdpa: whether HF implements sdpa attention for it (Gemma 2 does not: soft-capping).
    """

    name: str
    architecture: str
    config: Callable[[int], Any]
    reference: Callable[[Any, list[int]], R.Acts]
    o_proj: str
    block: str
    ln1: str
    ln_final: str
    absent: frozenset[str] = field(default_factory=frozenset)
    gqa: bool = False
    offset_norms: bool = False
    hf_sdpa: bool = True


def _gpt2(vocab: int) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=4,
        vocab_size=vocab,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )


def _neox(parallel: bool, rotary_pct: float) -> Callable[[int], Any]:
    def build(vocab: int) -> Any:
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            rotary_pct=rotary_pct,
            use_parallel_residual=parallel,
            initializer_range=INIT,
            bos_token_id=0,
            eos_token_id=0,
            architectures=["GPTNeoXForCausalLM"],
        )

    return build


def _llama(vocab: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
        initializer_range=INIT,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["LlamaForCausalLM"],
    )


def _mistral(vocab: int) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        intermediate_size=96,
        max_position_embeddings=64,
        sliding_window=5,
        initializer_range=INIT,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["MistralForCausalLM"],
    )


def _qwen2(vocab: int) -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        initializer_range=INIT,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["Qwen2ForCausalLM"],
    )


def _gemma2(vocab: int) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        intermediate_size=96,
        max_position_embeddings=64,
        query_pre_attn_scalar=20,
        sliding_window=4,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
        initializer_range=INIT,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        architectures=["Gemma2ForCausalLM"],
    )


def _phi(vocab: int, qk_layernorm: bool = False) -> Any:
    from transformers import PhiConfig

    return PhiConfig(
        qk_layernorm=qk_layernorm,
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        partial_rotary_factor=0.5,
        initializer_range=INIT,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["PhiForCausalLM"],
    )


# Site kinds each quirk removes from the schema.
_ROTARY = frozenset({"hook_pos_embed"})
_NOT_ROTARY = frozenset({"attn.hook_rot_q", "attn.hook_rot_k"})
_UNGATED = frozenset({"mlp.hook_pre_linear"})
_PARALLEL = frozenset({"hook_resid_mid"})
_SHARED_NORM = frozenset({"ln2.hook_scale", "ln2.hook_normalized"})

_PHI = ArchCase(
    "phi",
    "PhiForCausalLM",
    _phi,
    R.reference_phi,
    o_proj="model.layers.{L}.self_attn.dense",
    block="model.layers.{L}",
    ln1="model.layers.{L}.input_layernorm",
    ln_final="model.final_layernorm",
    absent=_ROTARY | _UNGATED | _PARALLEL | _SHARED_NORM,
    gqa=True,
)

ARCHS: tuple[ArchCase, ...] = (
    ArchCase(
        "gpt2",
        "GPT2LMHeadModel",
        _gpt2,
        R.reference_gpt2,
        o_proj="transformer.h.{L}.attn.c_proj",
        block="transformer.h.{L}",
        ln1="transformer.h.{L}.ln_1",
        ln_final="transformer.ln_f",
        absent=_UNGATED | _NOT_ROTARY,
    ),
    ArchCase(
        "neox",
        "GPTNeoXForCausalLM",
        _neox(parallel=True, rotary_pct=0.25),
        R.reference_neox,
        o_proj="gpt_neox.layers.{L}.attention.dense",
        block="gpt_neox.layers.{L}",
        ln1="gpt_neox.layers.{L}.input_layernorm",
        ln_final="gpt_neox.final_layer_norm",
        absent=_ROTARY | _UNGATED | _PARALLEL,
    ),
    ArchCase(
        "neox_sequential",
        "GPTNeoXForCausalLM",
        _neox(parallel=False, rotary_pct=0.5),
        R.reference_neox,
        o_proj="gpt_neox.layers.{L}.attention.dense",
        block="gpt_neox.layers.{L}",
        ln1="gpt_neox.layers.{L}.input_layernorm",
        ln_final="gpt_neox.final_layer_norm",
        absent=_ROTARY | _UNGATED,
    ),
    ArchCase(
        "llama",
        "LlamaForCausalLM",
        _llama,
        R.reference_llama,
        o_proj="model.layers.{L}.self_attn.o_proj",
        block="model.layers.{L}",
        ln1="model.layers.{L}.input_layernorm",
        ln_final="model.norm",
        absent=_ROTARY,
        gqa=True,
    ),
    ArchCase(
        "mistral",
        "MistralForCausalLM",
        _mistral,
        R.reference_llama,
        o_proj="model.layers.{L}.self_attn.o_proj",
        block="model.layers.{L}",
        ln1="model.layers.{L}.input_layernorm",
        ln_final="model.norm",
        absent=_ROTARY,
        gqa=True,
    ),
    ArchCase(
        "qwen2",
        "Qwen2ForCausalLM",
        _qwen2,
        R.reference_llama,
        o_proj="model.layers.{L}.self_attn.o_proj",
        block="model.layers.{L}",
        ln1="model.layers.{L}.input_layernorm",
        ln_final="model.norm",
        absent=_ROTARY,
        gqa=True,
    ),
    ArchCase(
        "gemma2",
        "Gemma2ForCausalLM",
        _gemma2,
        R.reference_gemma2,
        o_proj="model.layers.{L}.self_attn.o_proj",
        block="model.layers.{L}",
        ln1="model.layers.{L}.input_layernorm",
        ln_final="model.norm",
        absent=_ROTARY,
        gqa=True,
        offset_norms=True,
        hf_sdpa=False,
    ),
    _PHI,
    # per-head q/k LayerNorms before the rotary embedding: hook_q/hook_k are their outputs
    replace(_PHI, name="phi_qk_norm", config=lambda vocab: _phi(vocab, qk_layernorm=True)),
)

ARCH_BY_NAME: dict[str, ArchCase] = {c.name: c for c in ARCHS}
ARCH_NAMES: tuple[str, ...] = tuple(ARCH_BY_NAME)
GQA_ARCH_NAMES: tuple[str, ...] = tuple(c.name for c in ARCHS if c.gqa)
ROTARY_ARCH_NAMES: tuple[str, ...] = tuple(c.name for c in ARCHS if "hook_pos_embed" in c.absent)
SDPA_ARCH_NAMES: tuple[str, ...] = tuple(c.name for c in ARCHS if c.hf_sdpa)

# arch -> site kind -> max abs difference from the reference (filled by the site test, printed
# by conftest at the end of the run)
MAX_DIFF: dict[str, dict[str, float]] = {}


def randomize(model: torch.nn.Module, seed: int, offset_norms: bool) -> None:
    """Random norm gains/biases and linear biases, so folding or forgetting any of them shows.

    Gains are drawn around 1, or around 0 for norms that multiply by ``1 + w`` (Gemma).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            module = name.rsplit(".", 2)[-2] if name.count(".") else name
            if "norm" in module or module.startswith("ln"):
                if name.endswith("weight"):
                    p.copy_(
                        (0.0 if offset_norms else 1.0) + 0.2 * torch.randn(p.shape, generator=g)
                    )
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def build_model(case: ArchCase, vocab: int, seed: int = 0) -> torch.nn.Module:
    """The tiny random-init HF model of a case (fp32, eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(case.config(vocab)).eval()
    randomize(model, seed, case.offset_norms)
    return model
