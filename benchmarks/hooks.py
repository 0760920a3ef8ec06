"""Hooked vs plain forward: capturing every site vs a plain HF forward of the same model.

    python -m benchmarks hooks [--arch gpt2] [--batch 1] [--seq 64] [--repeats 20]

The plain baseline is the HF model as ``from_pretrained`` loads it (default attention
implementation), under ``torch.no_grad``. Reported: the ratio for every site, and for every site
except ``attn.hook_result`` (the one derived site that costs an extra matmul per layer, like
TransformerLens's opt-in ``use_attn_result``).
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import ByteTokenizer, emit, interleaved_medians, random_model
from benchmarks.models import ARCH_CONFIGS
from tdb_core import specs
from tdb_core.ops.forward import forward
from tdb_core.runner import Limits, ModelRunner


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks hooks")
    p.add_argument("--arch", default="gpt2", choices=sorted(ARCH_CONFIGS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    import adapters

    config = ARCH_CONFIGS[args.arch]()
    plain = random_model(config)
    hooked = adapters.wrap_model(args.arch, copy.deepcopy(plain), ByteTokenizer())
    runner = ModelRunner(
        hooked, Limits(max_tokens_per_prompt=4096, max_prompts=1024, max_response_bytes=2**40)
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (args.batch, args.seq), generator=g)
    prompts = tuple(specs.Prompt(token_ids=tuple(r.tolist())) for r in ids)
    no_result = tuple(
        specs.Capture(s.name) for s in runner.schema.sites if s.kind.key != "attn.hook_result"
    )

    def run_plain() -> None:
        with torch.no_grad():
            plain(input_ids=ids)

    def run_all() -> None:
        forward(runner, specs.ForwardSpec(prompts=prompts, captures=(specs.Capture("*"),), top_k=0))

    def run_no_result() -> None:
        forward(runner, specs.ForwardSpec(prompts=prompts, captures=no_result, top_k=0))

    def run_none() -> None:
        forward(runner, specs.ForwardSpec(prompts=prompts, top_k=0))

    t = interleaved_medians(
        {"plain": run_plain, "all": run_all, "no_result": run_no_result, "none": run_none},
        args.repeats,
    )
    emit(
        {
            "benchmark": "hooks",
            "arch": args.arch,
            "batch": args.batch,
            "seq": args.seq,
            "n_sites": len(runner.schema.sites),
            "plain_ms": round(t["plain"] * 1e3, 2),
            "runner_no_capture_ms": round(t["none"] * 1e3, 2),
            "capture_all_ms": round(t["all"] * 1e3, 2),
            "capture_all_but_result_ms": round(t["no_result"] * 1e3, 2),
            "ratio_all_sites": round(t["all"] / t["plain"], 4),
            "ratio_all_but_result": round(t["no_result"] / t["plain"], 4),
            "ratio_no_capture": round(t["none"] / t["plain"], 4),
            "target_ratio_no_capture": 1.03,
            "target_ratio_all_but_result": 1.05,
            "target_ratio_all_sites": 1.15,
        }
    )
    return 0
