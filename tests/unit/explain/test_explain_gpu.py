"""Device checks: mining bookkeeping and the local HF backend on CUDA agree with the CPU.

Skipped where no CUDA device is present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

from tdb_core.explain.backends import HFLocalBackend
from tdb_core.explain.mining import MiningConfig, NodeRef, mine_head_records, mine_records
from tdb_core.explain.prompts import build_simulation_prompt
from tdb_core.explain.simulators import VALUE_TOKENS

if TYPE_CHECKING:
    from tests.unit.explain.conftest import TinyLM, WordData

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_mining_with_cuda_activations_matches_cpu(word_data: WordData) -> None:
    """An activation function returning CUDA tensors gives the same records and statistics as on CPU."""
    refs = [NodeRef(f"n{j}", 0, j) for j in range(3)]
    head_refs = [NodeRef(f"h{j}", 0, j) for j in range(2)]
    config = MiningConfig(window_len=16, top_k=8, n_random=6)
    texts = word_data.texts[:50]
    cpu = mine_records(texts, word_data.tokenizer, word_data.planted, refs, config, progress=False)
    gpu = mine_records(
        texts,
        word_data.tokenizer,
        lambda ids: word_data.planted(ids.cuda()),
        refs,
        config,
        progress=False,
    )
    for a, b in zip(cpu, gpu, strict=True):
        assert (
            a.record.most_positive_activation_records == b.record.most_positive_activation_records
        )
        assert a.record.random_sample == b.record.random_sample
        assert a.density == b.density and a.max_activation == b.max_activation
        assert b.record.mean == pytest.approx(a.record.mean, abs=1e-6)
    cpu_heads = mine_head_records(
        texts, word_data.tokenizer, word_data.planted_pairs, head_refs, config, progress=False
    )
    gpu_heads = mine_head_records(
        texts,
        word_data.tokenizer,
        lambda ids: word_data.planted_pairs(ids.cuda()),
        head_refs,
        config,
        progress=False,
    )
    for a, b in zip(cpu_heads, gpu_heads, strict=True):
        assert (
            a.record.most_positive_activation_records == b.record.most_positive_activation_records
        )


def test_hf_backend_on_cuda_matches_cpu(tiny_lm: TinyLM) -> None:
    """Slot logprobs of the tiny model on CUDA equal those on CPU within 1e-4."""
    prompt = build_simulation_prompt("cats", [" cat", " sat"])
    cpu = HFLocalBackend(tiny_lm.model, "cpu", tokenizer=tiny_lm.tokenizer).slot_logprobs(
        prompt, VALUE_TOKENS
    )
    gpu = HFLocalBackend(tiny_lm.model, "cuda", tokenizer=tiny_lm.tokenizer).slot_logprobs(
        prompt, VALUE_TOKENS
    )
    tiny_lm.model.to("cpu")
    for a, b in zip(cpu, gpu, strict=True):
        assert a is not None and b is not None
        for value in VALUE_TOKENS:
            assert b[value] == pytest.approx(a[value], abs=1e-4)
