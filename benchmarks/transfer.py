"""Transfer throughput of a 64 MiB capture over loopback vs JSON of the same array.

    python -m benchmarks transfer [--mib 64] [--repeats 5]

A small-bodied model with a 65,536-token vocabulary; capturing its logits for 256 tokens is
64 MiB. Measured at the client from the header's arrival (the server has finished computing) to
the last chunk decoded into a NumPy array. JSON: dumps + loads + np.asarray of the same array.
Target: >= 1,000 MB/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, random_model
from benchmarks.service import BIG_LIMITS, serving, serving_in_child
from tdb_core.runner import Limits, ModelRunner


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks transfer")
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="serve from this process (client and server then share one GIL)",
    )
    args = p.parse_args(argv)

    import adapters
    from tdb.v1 import inference_pb2 as ipb
    from tdb.v1 import inference_pb2_grpc as ipb_grpc
    from tdb_client.client import capture_pb, prompt_pb
    from tdb_client.tensors import StreamAssembler

    vocab = 65536
    n_tokens = args.mib * 2**20 // (vocab * 4)
    config = gpt2_config("tiny", vocab=vocab)
    runner = ModelRunner(
        adapters.wrap_model("wide-vocab", random_model(config), ByteTokenizer()),
        Limits(**BIG_LIMITS),
    )
    seq = 256 if n_tokens >= 256 else n_tokens
    ids = torch.randint(
        1, vocab, (n_tokens // seq, seq), generator=torch.Generator().manual_seed(0)
    ).tolist()
    req = ipb.ForwardRequest(
        prompts=[prompt_pb(r) for r in ids], captures=[capture_pb("logits")], top_k=0
    )
    rates, arr = [], None
    import grpc

    server = serving(runner) if args.in_process else serving_in_child(runner)
    with server as svc, grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
        stub = ipb_grpc.InferenceServiceStub(ch)
        for _ in range(args.repeats + 1):
            stream = stub.Forward(req)
            first = next(stream)
            start = time.perf_counter()
            asm = StreamAssembler(first.header)
            for msg in stream:
                asm.add(msg.chunk)
            arr = asm.array(first.header.captures[0].values)
            rates.append(arr.nbytes / (time.perf_counter() - start) / 1e6)
    rates = rates[1:]
    assert arr is not None
    sample = arr.reshape(-1)[: 4 * 2**20 // 4]  # JSON of 4 MiB (it is ~100x slower; scale up)
    start = time.perf_counter()
    back = np.asarray(json.loads(json.dumps(sample.tolist())), dtype=np.float32)
    json_rate = sample.nbytes / (time.perf_counter() - start) / 1e6
    assert back.shape == sample.shape
    emit(
        {
            "benchmark": "transfer",
            "server": "in-process" if args.in_process else "child process",
            "mib": round(arr.nbytes / 2**20, 1),
            "grpc_stream_mb_s": round(statistics.median(rates), 1),
            "json_mb_s": round(json_rate, 2),
            "speedup_vs_json": round(statistics.median(rates) / json_rate, 1),
            "target_mb_s": 1000,
        }
    )
    return 0
