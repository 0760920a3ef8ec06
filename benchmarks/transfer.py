"""Transfer throughput of a 64 MiB capture over loopback vs the plain grpcio limit and JSON.

    python -m benchmarks transfer [--mib 64] [--repeats 7]

A small-bodied model with a 65,536-token vocabulary; capturing its logits for 256 tokens is
64 MiB, served from a child process (as a real server is). Measured at the client from the
header's arrival (the server has finished computing) to the last chunk decoded into a NumPy
array. The baseline, in the same run and interleaved with it: a plain grpcio server in another
child process streaming the same number of bytes as raw ``bytes`` messages of the same chunk
size (no protobuf), copied by the client into a preallocated buffer — what grpcio itself can
move on this machine. JSON: dumps + loads + np.asarray of the same array.
Target: >= 1,000 MB/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, random_model
from benchmarks.service import BIG_LIMITS, ChildServer, serving, serving_in_child
from tdb_core.runner import Limits, ModelRunner

RAW_METHOD = "/bench.Raw/Stream"


def _serve_raw(n_bytes: int, chunk: int, port_out: Any, stop: Any) -> None:
    from concurrent import futures

    import grpc

    data = memoryview(np.random.default_rng(0).bytes(n_bytes))

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        for start in range(0, n_bytes, chunk):
            yield bytes(data[start : start + chunk])

    handler = grpc.method_handlers_generic_handler(
        "bench.Raw", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_out.send(port)
    stop.wait()
    server.stop(0)


@contextlib.contextmanager
def raw_server_in_child(n_bytes: int, chunk: int) -> Iterator[ChildServer]:
    """A plain grpcio server (another process) streaming ``n_bytes`` in ``chunk``-byte messages."""
    ctx = multiprocessing.get_context("fork")
    port_in, port_out = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    child = ctx.Process(target=_serve_raw, args=(n_bytes, chunk, port_out, stop), daemon=True)
    child.start()
    try:
        if not port_in.poll(60):
            raise RuntimeError("raw grpcio server did not start")
        yield ChildServer(int(port_in.recv()))
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks transfer")
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="serve from this process (client and server then share one GIL)",
    )
    args = p.parse_args(argv)

    import adapters
    from services.convert import CHUNK_BYTES
    from tdb.v1 import inference_pb2 as ipb
    from tdb_client.client import capture_pb, prompt_pb
    from tdb_client.tensors import StreamAssembler, chunk_decoder

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
    n_bytes = len(ids) * seq * vocab * 4
    rates: list[float] = []
    raw_rates: list[float] = []
    arr = None
    import grpc

    server = serving(runner) if args.in_process else serving_in_child(runner)
    with (
        server as svc,
        raw_server_in_child(n_bytes, CHUNK_BYTES) as raw_svc,
        grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch,
        grpc.insecure_channel(f"127.0.0.1:{raw_svc.port}") as raw_ch,
    ):
        forward = ch.unary_stream(  # what TdbClient.forward reads the stream with
            "/tdb.v1.InferenceService/Forward",
            request_serializer=ipb.ForwardRequest.SerializeToString,
            response_deserializer=chunk_decoder(ipb.ForwardResponse),
        )
        raw_call = raw_ch.unary_stream(RAW_METHOD)

        def ours() -> float:
            nonlocal arr
            stream = forward(req)
            first = next(stream)
            start = time.perf_counter()
            asm = StreamAssembler(first.header)
            for chunk in stream:
                asm.add(chunk)
            arr = asm.array(first.header.captures[0].values)
            return arr.nbytes / (time.perf_counter() - start) / 1e6

        def raw() -> float:
            stream = raw_call(b"")
            first = next(stream)
            start = time.perf_counter()
            out = np.empty(n_bytes, dtype=np.uint8)
            view = memoryview(out)
            view[: len(first)] = first
            filled = len(first)
            for msg in stream:
                view[filled : filled + len(msg)] = msg
                filled += len(msg)
            assert filled == n_bytes
            return n_bytes / (time.perf_counter() - start) / 1e6

        for i in range(args.repeats + 1):  # interleaved; the first round warms up
            r, w = ours(), raw()
            if i:
                rates.append(r)
                raw_rates.append(w)
    assert arr is not None and arr.nbytes == n_bytes
    sample = arr.reshape(-1)[: 4 * 2**20 // 4]  # JSON of 4 MiB (it is ~100x slower; scale up)
    start = time.perf_counter()
    back = np.asarray(json.loads(json.dumps(sample.tolist())), dtype=np.float32)
    json_rate = sample.nbytes / (time.perf_counter() - start) / 1e6
    assert back.shape == sample.shape
    ours_mb_s, raw_mb_s = statistics.median(rates), statistics.median(raw_rates)
    emit(
        {
            "benchmark": "transfer",
            "server": "in-process" if args.in_process else "child process",
            "mib": round(arr.nbytes / 2**20, 1),
            "chunk_bytes": CHUNK_BYTES,
            "grpc_stream_mb_s": round(ours_mb_s, 1),
            "raw_grpcio_mb_s": round(raw_mb_s, 1),
            "fraction_of_raw": round(ours_mb_s / raw_mb_s, 3),
            "json_mb_s": round(json_rate, 2),
            "speedup_vs_json": round(ours_mb_s / json_rate, 1),
            "target_mb_s": 1000,
        }
    )
    return 0
