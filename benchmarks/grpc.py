"""Forward through gRPC vs the in-process runner, same request; plus empty-call latency.

    python -m benchmarks grpc [--seq 64] [--repeats 20]

GPT-2-small-shaped random model, one prompt of 64 tokens: a Forward with no capture (the per-call
overhead; target <= 1.03) and one capturing every layer's residual stream (2.4 MB, streamed in
chunks; target <= 1.05), each against the same request in process, interleaved. The empty call
is a health Check.
"""

from __future__ import annotations

import argparse
import statistics
import time

import grpc
import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model
from benchmarks.service import BIG_LIMITS, serving
from tdb_core import specs
from tdb_core.ops.forward import forward
from tdb_core.runner import Limits, ModelRunner


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks grpc")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    import adapters
    from tdb_client import TdbClient

    config = gpt2_config("small")
    runner = ModelRunner(
        adapters.wrap_model("gpt2-small", random_model(config), ByteTokenizer()),
        Limits(**BIG_LIMITS),
    )
    ids = torch.randint(
        1, config.vocab_size, (args.seq,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    sites = ["blocks.*.hook_resid_post"]
    with serving(runner) as svc, TdbClient(f"127.0.0.1:{svc.port}") as client:

        def in_process() -> None:
            forward(
                runner,
                specs.ForwardSpec(
                    prompts=(specs.Prompt(token_ids=tuple(ids)),),
                    captures=tuple(specs.Capture(s) for s in sites),
                ),
            )

        def over_grpc() -> None:
            client.forward([ids], capture=sites)

        def in_process_plain() -> None:
            forward(runner, specs.ForwardSpec(prompts=(specs.Prompt(token_ids=tuple(ids)),)))

        def over_grpc_plain() -> None:
            client.forward([ids])

        t = interleaved_medians(
            {
                "in_process_plain": in_process_plain,
                "grpc_plain": over_grpc_plain,
                "in_process": in_process,
                "grpc": over_grpc,
            },
            args.repeats,
        )
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            req = health_pb2.HealthCheckRequest()
            for _ in range(50):
                stub.Check(req)
            lat = []
            for _ in range(500):
                s = time.perf_counter()
                stub.Check(req)
                lat.append(time.perf_counter() - s)
    lat.sort()
    emit(
        {
            "benchmark": "grpc",
            "seq": args.seq,
            "captured_mb": round(12 * args.seq * 768 * 4 / 1e6, 2),
            "no_capture_in_process_ms": round(t["in_process_plain"] * 1e3, 2),
            "no_capture_grpc_ms": round(t["grpc_plain"] * 1e3, 2),
            "ratio_no_capture": round(t["grpc_plain"] / t["in_process_plain"], 4),
            "target_ratio_no_capture": 1.03,
            "in_process_ms": round(t["in_process"] * 1e3, 2),
            "grpc_ms": round(t["grpc"] * 1e3, 2),
            "ratio": round(t["grpc"] / t["in_process"], 4),
            "target_ratio": 1.05,
            "empty_call_p50_ms": round(statistics.median(lat) * 1e3, 3),
            "empty_call_p99_ms": round(lat[int(0.99 * len(lat))] * 1e3, 3),
        }
    )
    return 0
