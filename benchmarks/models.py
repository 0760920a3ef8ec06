"""Benchmark-sized configs per architecture (random init; GPT-2-small-like shapes, CPU-runnable).

Every family gets 12 layers, d_model 768 and 12 heads, with its own quirks switched on at their
usual settings (grouped-query attention with 4 kv heads, partial rotary, soft-capping, sliding
windows). Vocabularies are those of the family where they are ~32-51k; Qwen2's and Gemma 2's much
larger real vocabularies are cut to 32k so the unembedding does not dominate a CPU run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.common import gpt2_config

_SHAPE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048
)


def neox_config() -> Any:
    """Pythia-160m's shape: parallel residual, rotary on a quarter of each head."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        **_SHAPE,
        intermediate_size=3072,
        vocab_size=50304,
        rotary_pct=0.25,
        use_parallel_residual=True,
        architectures=["GPTNeoXForCausalLM"],
    )


def llama_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **_SHAPE,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        architectures=["LlamaForCausalLM"],
    )


def mistral_config() -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        **_SHAPE,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        sliding_window=4096,
        architectures=["MistralForCausalLM"],
    )


def qwen2_config() -> Any:
    from transformers import Qwen2Config

    return Qwen2Config(
        **_SHAPE,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        architectures=["Qwen2ForCausalLM"],
    )


def gemma2_config() -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        **_SHAPE,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=2048,
        vocab_size=32000,
        query_pre_attn_scalar=64,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        architectures=["Gemma2ForCausalLM"],
    )


def phi_config() -> Any:
    """phi-1.5's proportions (head_dim 64, rotary on half of it, biases, one shared norm)."""
    from transformers import PhiConfig

    return PhiConfig(
        **_SHAPE,
        intermediate_size=3072,
        vocab_size=51200,
        partial_rotary_factor=0.5,
        architectures=["PhiForCausalLM"],
    )


ARCH_CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: gpt2_config("small"),
    "neox": neox_config,
    "llama": llama_config,
    "mistral": mistral_config,
    "qwen2": qwen2_config,
    "gemma2": gemma2_config,
    "phi": phi_config,
}
