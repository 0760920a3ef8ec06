"""gRPC-Web vs native gRPC: a Forward returning a 16 MiB capture, through each, in one run.

    python -m benchmarks grpcweb [--mib 16] [--repeats 9] [--in-process]

The server (child process, as real clients and servers are) serves both its gRPC port and its
HTTP port; the client calls Forward for a 16 MiB logits capture (a small-bodied model with a
65,536-token vocabulary, 64 tokens) over each, alternating, and assembles the streamed tensor
into a NumPy array either way, checked against the first call's values (the gRPC-Web client parses the frames of a plain HTTP/1.1
response with http.client, as a browser's fetch reader would). Throughput is the array's bytes
over the time from the request to the last byte decoded: the whole call, compute included (the
same on both paths), and also from the first response message, transfer only. Binary
(``application/grpc-web+proto``) is the target's figure; base64 text is reported beside it.
Ratios are medians over rounds of each round's gRPC-Web / native pair. Target: gRPC-Web >= 0.5x
native throughput.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import statistics
import struct
import time

import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, random_model
from benchmarks.service import BIG_LIMITS, serving, serving_in_child
from tdb_core.runner import Limits, ModelRunner


def _web_forward(port: int, body: bytes, text: bool, response_type, assembler_type):
    """One gRPC-Web Forward; (array, seconds to the first message, seconds in all)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    ctype = "application/grpc-web-text" if text else "application/grpc-web+proto"
    conn.request(
        "POST",
        "/tdb.v1.InferenceService/Forward",
        body=base64.b64encode(body) if text else body,
        headers={"content-type": ctype, "x-grpc-web": "1"},
    )
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("grpc-status") is None, r.getheaders()
    if text:  # padded base64 chunks, one per frame: decode whole 4-character groups as they come
        from services.grpcweb import decode_text_body

        pending, raw_tail = b"", b""

        def read(n: int) -> bytes:
            nonlocal pending, raw_tail
            while len(pending) < n:
                raw = r.read1(1 << 20)
                if not raw:
                    break
                raw_tail += raw
                cut = len(raw_tail) // 4 * 4
                pending += decode_text_body(raw_tail[:cut])
                raw_tail = raw_tail[cut:]
            out, pending = pending[:n], pending[n:]
            return out
    else:
        read = r.read
    header = asm = first_s = None
    while True:
        flags, n = struct.unpack(">BI", read(5))
        payload = read(n)
        if flags & 0x80:
            trailers = payload.decode()
            assert "grpc-status: 0" in trailers, trailers
            break
        msg = response_type.FromString(payload)
        if header is None:
            first_s = time.perf_counter() - start
            header = msg.header
            asm = assembler_type(header)
        else:
            asm.add(msg.chunk)
    array = asm.array(header.captures[0].values)
    total = time.perf_counter() - start
    conn.close()
    return array, first_s, total


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks grpcweb")
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument(
        "--in-process",
        action="store_true",
        help="serve from this process (client and server then share one GIL)",
    )
    args = p.parse_args(argv)

    import grpc
    import numpy as np

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
    ids = torch.randint(1, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(0))
    req = ipb.ForwardRequest(
        prompts=[prompt_pb(r) for r in ids.tolist()], captures=[capture_pb("logits")], top_k=0
    )
    body = req.SerializeToString()
    framed = struct.pack(">BI", 0, len(body)) + body

    def native(stub) -> tuple[np.ndarray, float, float]:
        start = time.perf_counter()
        stream = stub.Forward(req)
        first = next(stream)
        first_s = time.perf_counter() - start
        asm = StreamAssembler(first.header)
        for msg in stream:
            asm.add(msg.chunk)
        arr = asm.array(first.header.captures[0].values)
        return arr, first_s, time.perf_counter() - start

    runs: dict[str, list[tuple[float, float]]] = {"native": [], "grpcweb": [], "grpcweb_text": []}
    server = serving(runner, http=True) if args.in_process else serving_in_child(runner, http=True)
    with server as svc, grpc.insecure_channel(f"127.0.0.1:{svc.port}") as ch:
        stub = ipb_grpc.InferenceServiceStub(ch)
        reference = None
        differing: dict[str, int] = {}  # calls whose values differ from the first call's
        max_diff = 0.0
        for i in range(args.repeats + 1):  # the first round warms up and is dropped
            for name, rates in runs.items():
                if name == "native":
                    arr, first_s, total = native(stub)
                else:
                    arr, first_s, total = _web_forward(
                        svc.http_port,
                        framed,
                        name == "grpcweb_text",
                        ipb.ForwardResponse,
                        StreamAssembler,
                    )
                if reference is None:
                    reference = arr
                assert arr.shape == reference.shape, f"{name} returned shape {arr.shape}"
                if not np.array_equal(arr, reference):  # CPU float noise, or a transport bug
                    differing[name] = differing.get(name, 0) + 1
                    max_diff = max(max_diff, float(np.abs(arr - reference).max()))
                if i:
                    rates.append((arr.nbytes / total / 1e6, arr.nbytes / (total - first_s) / 1e6))
    assert reference is not None

    def med(name: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[name])

    def paired(name: str, k: int) -> float:
        """Median over rounds of this round's ratio to native (the rounds alternate the paths,
        so a slow spell of the machine hits both sides of a pair)."""
        return statistics.median(w[k] / n[k] for w, n in zip(runs[name], runs["native"]))

    emit(
        {
            "benchmark": "grpcweb",
            "server": "in-process" if args.in_process else "child process",
            "mib": round(reference.nbytes / 2**20, 1),
            "repeats": args.repeats,
            "native_mb_s": round(med("native", 0), 1),
            "grpcweb_mb_s": round(med("grpcweb", 0), 1),
            "grpcweb_text_mb_s": round(med("grpcweb_text", 0), 1),
            "ratio": round(paired("grpcweb", 0), 2),
            "ratio_text": round(paired("grpcweb_text", 0), 2),
            "transfer_only_native_mb_s": round(med("native", 1), 1),
            "transfer_only_grpcweb_mb_s": round(med("grpcweb", 1), 1),
            "transfer_only_ratio": round(paired("grpcweb", 1), 2),
            "calls_differing_from_first": differing,
            "max_abs_diff": max_diff,
            "target_ratio": 0.5,
        }
    )
    return 0
