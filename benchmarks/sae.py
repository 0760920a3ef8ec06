"""SAE Encode throughput (tokens/s) through gRPC vs a raw torch matmul + activation of the same
shapes (in process). A TopK SAE (k=32); activations in, per-token latents, L0 and
reconstruction error out.

    python -m benchmarks sae [--d-in 768] [--d-sae 24576] [--tokens 2048]

Target: ratio >= 0.8.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model
from benchmarks.service import BIG_LIMITS, serving
from tdb_core.runner import Limits, ModelRunner
from tdb_core.sae import SaeConfig, TopKArch, build_sae


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks sae")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    import adapters
    from tdb_client import TdbClient

    g = torch.Generator().manual_seed(0)
    sae = build_sae(
        SaeConfig(
            d_in=args.d_in,
            d_sae=args.d_sae,
            architecture=TopKArch(k=args.top_k),
            site="blocks.0.hook_resid_pre",
        ),
        {
            "W_enc": torch.randn(args.d_in, args.d_sae, generator=g) / args.d_in**0.5,
            "b_enc": torch.zeros(args.d_sae),
            "W_dec": torch.randn(args.d_sae, args.d_in, generator=g) * 0.01,
            "b_dec": torch.zeros(args.d_in),
        },
    )
    config = gpt2_config("tiny", n_embd=args.d_in, n_layer=1)
    config.n_head = 12 if args.d_in % 12 == 0 else 1
    runner = ModelRunner(
        adapters.wrap_model("m", random_model(config), ByteTokenizer()), Limits(**BIG_LIMITS)
    )
    runner.saes.attach("bench", sae, "memory")
    x = torch.randn(args.tokens, args.d_in, generator=g)
    x_np = x.numpy()
    W, b = sae.W_enc.detach(), sae.b_enc.detach()

    def raw() -> None:
        with torch.no_grad():
            torch.relu(((x - sae.b_dec) @ W + b).topk(args.top_k, dim=-1).values)

    with serving(runner) as svc, TdbClient(f"127.0.0.1:{svc.port}") as c:

        def rpc() -> None:
            c.encode("bench", activations=x_np, top_k=args.top_k)

        t = interleaved_medians({"raw": raw, "rpc": rpc}, args.repeats)
        out = c.encode("bench", activations=x_np, top_k=args.top_k)
    assert np.isfinite(out.top_values).all()
    emit(
        {
            "benchmark": "sae",
            "d_in": args.d_in,
            "d_sae": args.d_sae,
            "tokens": args.tokens,
            "raw_tokens_per_s": round(args.tokens / t["raw"]),
            "encode_rpc_tokens_per_s": round(args.tokens / t["rpc"]),
            "ratio": round(t["raw"] / t["rpc"], 3),
            "target_ratio": 0.8,
        }
    )
    return 0
