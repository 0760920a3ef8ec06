"""Ablate: N intervention sets in one batched call vs N separate Forward calls (both over gRPC).

    python -m benchmarks ablate [--sets 32] [--model toy|gpt2-small]

Each set zero-ablates one attention head at the last position (cycling over layers and heads).
"""

from __future__ import annotations

import argparse
import time

from benchmarks.batching import PROMPTS, _runner
from benchmarks.common import emit
from benchmarks.service import serving


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks ablate")
    p.add_argument("--sets", type=int, default=32)
    p.add_argument("--model", default="toy", choices=("toy", "gpt2-small"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from tdb_client import TdbClient
    from tdb_client import interventions as iv

    runner = _runner(args.model)
    d = runner.schema.dims
    sets = {
        f"L{i % d.n_layers}H{(i // d.n_layers) % d.n_heads}": [
            iv.zero(
                f"blocks.{i % d.n_layers}.attn.hook_z[head={(i // d.n_layers) % d.n_heads},pos=-1]"
            )
        ]
        for i in range(args.sets)
    }
    prompt = PROMPTS[0]
    with serving(runner) as svc, TdbClient(f"127.0.0.1:{svc.port}") as c:
        c.ablate(prompt, dict(list(sets.items())[:2]))
        batched, separate = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            c.ablate(prompt, sets)
            batched.append(time.perf_counter() - start)
            start = time.perf_counter()
            for ivs in sets.values():
                c.forward(prompt, interventions=ivs)
            separate.append(time.perf_counter() - start)
    b, s = min(batched), min(separate)
    emit(
        {
            "benchmark": "ablate",
            "model": args.model,
            "sets": len(sets),
            "batched_ablate_ms": round(b * 1e3, 1),
            "separate_forwards_ms": round(s * 1e3, 1),
            "speedup": round(s / b, 3),
        }
    )
    return 0
