"""Shared pieces: timing, random-init models of realistic shapes, a byte-level tokenizer stand-in."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median time of each function, runs interleaved so drift affects all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class ByteTokenizer:
    """Enough of a tokenizer for benchmarks that feed token ids (one id per UTF-8 byte)."""

    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode())}

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        return bytes(i % 256 for i in ids).decode(errors="replace")


def gpt2_config(
    size: str = "small", vocab: int = 50257, n_layer: int | None = None, n_embd: int | None = None
):
    from transformers import GPT2Config

    shapes = {"small": (12, 768, 12), "tiny": (2, 64, 4)}
    layers, embd, heads = shapes[size]
    return GPT2Config(
        n_layer=n_layer or layers,
        n_embd=n_embd or embd,
        n_head=heads,
        vocab_size=vocab,
        n_positions=1024,
        architectures=["GPT2LMHeadModel"],
    )


def random_model(config: Any, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result))
