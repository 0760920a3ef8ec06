"""Micro-batching: 8 concurrent clients vs the same requests sent one at a time.

    python -m benchmarks batching [--clients 8] [--requests 256] [--model toy|gpt2-small]

Each request is a Forward of one prompt reading one site at the last position. Target: >= 1.5x
the serial throughput on CPU.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import ByteTokenizer, emit, gpt2_config, random_model
from benchmarks.service import BIG_LIMITS, serving
from tdb_core.runner import Limits, ModelRunner

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox jumps over the lazy dog while the cat sleeps",
    "I ate an apple and then a banana at the station near the river",
    "After the meeting, Sarah and Tom walked to the park and Tom said hi to",
]


def _runner(name: str) -> ModelRunner:
    import adapters

    if name == "toy":
        from tdb_core.toy import TOY_MODEL_DIR

        return ModelRunner(adapters.load_model("toy", str(TOY_MODEL_DIR)), Limits(**BIG_LIMITS))
    config = gpt2_config("small")
    return ModelRunner(
        adapters.wrap_model("gpt2-small", random_model(config), ByteTokenizer()),
        Limits(**BIG_LIMITS),
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks batching")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--model", default="toy", choices=("toy", "gpt2-small"))
    args = p.parse_args(argv)
    from tdb_client import Capture, TdbClient

    runner = _runner(args.model)
    cap = [Capture("blocks.1.hook_resid_post", positions=(-1,))]
    with serving(runner) as svc:
        target = f"127.0.0.1:{svc.port}"
        with TdbClient(target) as c:
            for i in range(4):
                c.forward(PROMPTS[i % 4], capture=cap)
            start = time.perf_counter()
            for i in range(args.requests):
                c.forward(PROMPTS[i % 4], capture=cap)
            serial = time.perf_counter() - start
        clients = [TdbClient(target) for _ in range(args.clients)]
        try:
            before = dict(runner.stats)

            def work(i: int) -> None:
                clients[i % args.clients].forward(PROMPTS[i % 4], capture=cap)

            with ThreadPoolExecutor(args.clients) as pool:
                start = time.perf_counter()
                list(pool.map(work, range(args.requests)))
                concurrent = time.perf_counter() - start
        finally:
            for c in clients:
                c.close()
    emit(
        {
            "benchmark": "batching",
            "model": args.model,
            "clients": args.clients,
            "requests": args.requests,
            "serial_rps": round(args.requests / serial, 1),
            "concurrent_rps": round(args.requests / concurrent, 1),
            "speedup": round(serial / concurrent, 3),
            "target_speedup": 1.5,
            "passes": runner.stats["passes"] - before["passes"],
            "merged_requests": runner.stats["merged_requests"] - before["merged_requests"],
        }
    )
    return 0
