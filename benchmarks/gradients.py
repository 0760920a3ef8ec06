"""Gradient captures vs their in-process anchor: GPT-2-small-shaped random model, 1 x 64 tokens.

    python -m benchmarks gradients [--seq 64] [--repeats 5] [--size small]

Forward with a logit-difference loss and one gradient capture of every ``hook_resid_pre``
(through the runner, reductions and result conversion included) against the plain HF forward with
``output_hidden_states`` and one ``torch.autograd.grad`` into the same tensors, with HF's default
attention (sdpa) and with its eager attention (the served model computes attention eagerly, as
HF's eager code does, so that q/k/v, scores and pattern exist). The gradients are checked equal
(1e-5 of the largest) before timing. Target: <= 1.1x.
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model
from benchmarks.service import BIG_LIMITS
from tdb_core import specs
from tdb_core.losses import LogitDiffLoss
from tdb_core.ops.forward import forward
from tdb_core.runner import Limits, ModelRunner


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gradients")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", choices=("small", "tiny"), default="small")
    args = p.parse_args(argv)
    import adapters

    config = gpt2_config(args.size)
    plain = random_model(config)
    runner = ModelRunner(
        adapters.wrap_model("gpt2", copy.deepcopy(plain), ByteTokenizer()), Limits(**BIG_LIMITS)
    )
    ids = torch.randint(
        1, config.vocab_size, (1, args.seq), generator=torch.Generator().manual_seed(0)
    )
    spec = specs.ForwardSpec(
        prompts=(specs.Prompt(token_ids=tuple(ids[0].tolist())),),
        loss=LogitDiffLoss((11,), (12,)),
        grad_captures=(specs.Capture("blocks.*.hook_resid_pre"),),
        freeze_norm_scale=False,
        top_k=0,
    )

    eager = copy.deepcopy(plain)
    eager.set_attn_implementation("eager")

    def anchor(model: torch.nn.Module) -> list[torch.Tensor]:
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = out.hidden_states[: config.n_layer]  # the input of each block
        loss = out.logits[0, -1, 11] - out.logits[0, -1, 12]
        return list(torch.autograd.grad(loss, hidden))

    def run_anchor() -> list[torch.Tensor]:
        return anchor(plain)

    def run_eager() -> list[torch.Tensor]:
        return anchor(eager)

    def run_service() -> specs.ForwardResult:
        return forward(runner, spec)

    want, got = run_anchor(), run_service()
    worst = max(
        float((g.values[0] - w[0]).abs().max() / w.abs().max().clamp_min(1e-30))
        for g, w in zip(got.grad_captures, want, strict=True)
    )
    assert worst <= 1e-5, f"gradients differ from the anchor by {worst:.2e} of the largest"
    t = interleaved_medians(
        {"anchor": run_anchor, "eager": run_eager, "grad": run_service}, args.repeats, warmup=1
    )
    emit(
        {
            "benchmark": "gradients",
            "size": args.size,
            "seq": args.seq,
            "sites": len(got.grad_captures),
            "max_rel_diff": worst,
            "anchor_forward_autograd_ms": round(t["anchor"] * 1e3, 1),
            "anchor_eager_attention_ms": round(t["eager"] * 1e3, 1),
            "forward_grad_captures_ms": round(t["grad"] * 1e3, 1),
            "ratio": round(t["grad"] / t["anchor"], 3),
            "ratio_vs_eager_anchor": round(t["grad"] / t["eager"], 3),
            "target_ratio": 1.1,
        }
    )
    return 0
