"""GPU figures: Forward with captures vs plain HF, the node table vs a forward, peak memory.

    python -m benchmarks gpu [--batch 32] [--seq 128] [--dtypes float32,float16,bfloat16]

On a CUDA machine, for each dtype, on the GPT-2-small shape (random init):

    plain_tokens_per_s             plain HF forward (no_grad) at batch x seq
    capture_tokens_per_s           Forward capturing every site but attn.hook_result, over the
                                   same batch (target: >= 50% of plain)
    capture_all_tokens_per_s       Forward capturing every site
    table_ratio_seq{64,128}        the full node table (Attribute, one prompt) / a plain forward
                                   of that prompt (target: <= 2.5)
    peak_*_mib                     peak allocated device memory of each

Times are medians of interleaved repeats, with ``torch.cuda.synchronize`` around each. Without
CUDA it prints ``{"benchmark": "gpu", "skipped": true, ...}`` and exits 0 (nothing to measure);
``--device cpu`` runs the same code on the CPU (to check the script; the figures mean little).
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import ByteTokenizer, emit, gpt2_config, random_model

DTYPES = ("float32", "float16", "bfloat16")


def _timer(device: Any) -> Callable[[Callable[[], Any]], float]:
    import torch

    def timed(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def _peak_mib(device: Any, fn: Callable[[], Any]) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _medians(fns: dict[str, Callable[[], Any]], repeats: int, timed: Any) -> dict[str, float]:
    import statistics

    for fn in fns.values():  # warm-up (kernels, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(args: argparse.Namespace, dtype_name: str, device: Any) -> dict[str, Any]:
    import torch

    import adapters
    from benchmarks.service import BIG_LIMITS
    from tdb_core import specs
    from tdb_core.ops.attribute import AttributeSpec, LogitDiffLoss, attribute
    from tdb_core.ops.forward import forward
    from tdb_core.runner import Limits, ModelRunner

    dtype = getattr(torch, dtype_name)
    config = gpt2_config(args.size)
    plain = random_model(config).to(device=device, dtype=dtype)
    runner = ModelRunner(
        adapters.wrap_model("gpt2", copy.deepcopy(plain), ByteTokenizer(), device=device),
        Limits(**BIG_LIMITS),
    )
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (args.batch, args.seq), generator=gen)
    prompts = tuple(specs.Prompt(token_ids=tuple(r)) for r in ids.tolist())
    ids_dev = ids.to(device)
    but_result = tuple(
        specs.Capture(s.name) for s in runner.schema.sites if s.kind.key != "attn.hook_result"
    )
    timed = _timer(device)

    def run_plain() -> None:
        with torch.no_grad():
            plain(input_ids=ids_dev)

    def run_capture() -> None:
        forward(runner, specs.ForwardSpec(prompts=prompts, captures=but_result, top_k=0))

    def run_capture_all() -> None:
        forward(runner, specs.ForwardSpec(prompts=prompts, captures=(specs.Capture("*"),), top_k=0))

    t = _medians(
        {"plain": run_plain, "capture": run_capture, "all": run_capture_all}, args.repeats, timed
    )
    tokens = args.batch * args.seq
    out: dict[str, Any] = {
        "plain_tokens_per_s": round(tokens / t["plain"]),
        "capture_tokens_per_s": round(tokens / t["capture"]),
        "capture_all_tokens_per_s": round(tokens / t["all"]),
        "capture_vs_plain": round(t["plain"] / t["capture"], 3),
        "capture_all_vs_plain": round(t["plain"] / t["all"], 3),
        "peak_plain_mib": _peak_mib(device, run_plain),
        "peak_capture_mib": _peak_mib(device, run_capture),
        "peak_capture_all_mib": _peak_mib(device, run_capture_all),
    }
    for seq in args.table_seq:
        one = ids[:1, :seq]
        one_dev = one.to(device)
        spec = AttributeSpec(
            prompt=specs.Prompt(token_ids=tuple(one[0].tolist())),
            loss=LogitDiffLoss((11,), (12,)),
            top_k=10,
        )

        def run_one(x: Any = one_dev) -> None:
            with torch.no_grad():
                plain(input_ids=x)

        def run_table(s: AttributeSpec = spec) -> None:
            attribute(runner, s)

        tt = _medians({"plain": run_one, "table": run_table}, args.repeats, timed)
        out[f"table_ratio_seq{seq}"] = round(tt["table"] / tt["plain"], 3)
        out[f"table_ms_seq{seq}"] = round(tt["table"] * 1e3, 2)
        out[f"peak_table_mib_seq{seq}"] = _peak_mib(device, run_table)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--table-seq", type=lambda s: [int(x) for x in s.split(",")], default=[64, 128])
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to check")
    p.add_argument("--size", default="small", choices=("small", "tiny"), help="model shape")
    args = p.parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        emit(
            {
                "benchmark": "gpu",
                "skipped": True,
                "reason": "no CUDA device on this machine (torch.cuda.is_available() is False)",
                "torch": torch.__version__,
                "torch_cuda": torch.version.cuda,
            }
        )
        return 0
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = set(dtypes) - set(DTYPES)
    if unknown:
        p.error(f"unknown dtypes {sorted(unknown)}; use {','.join(DTYPES)}")
    results = {}
    for d in dtypes:
        results[d] = measure(args, d, device)
        if device.type == "cuda":  # the previous dtype's model and buffers are gone
            torch.cuda.empty_cache()
    emit(
        {
            "benchmark": "gpu",
            "skipped": False,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "model": f"gpt2-{args.size} shape (random init)",
            "batch": args.batch,
            "seq": args.seq,
            "results": results,
            "target_capture_vs_plain": 0.5,
            "target_table_ratio": 2.5,
        }
    )
    return 0
