"""Interactive latency: the clicks of a debugging session on the embedded toy model, end to end.

    python -m benchmarks latency [--clicks 30] [--cache-mb 64] [--cache-seq 64] [--cache-repeats 7]

A ``tdb serve`` child process (the toy model, its SAE and shipped explanations; a fresh explanation
store; ``--cache-mb``) is driven over native gRPC with the click path of the web app, each click
timed from request to decoded response:

    node table   Attribute: the IOI prompt's full node table (every family, node tokens,
                 explanations looked up for each row)
    ablation     Ablate: zero the node of one of the table's rows (a different row each click)
    node page    Forward capturing that node's site on the prompt, plus ListExplanations of it

Targets: node table p50 < 50 ms and p95 < 100 ms. The machine's load average is reported with
the figures (this machine is shared; absolute times move with it).

The prompt cache: a Forward capture of sites already recorded vs the same Forward uncached, in
process on the GPT-2-small shape (1 x ``--cache-seq`` tokens, two sites), medians of interleaved
repeats (target: >= 10x; ``--cache-repeats 0`` leaves it out). Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model

PROMPT = "When Mary and John went to the store, John gave a drink to"


def start_server(cache_mb: float, data_dir: str) -> tuple[subprocess.Popen[str], str]:
    """``tdb serve`` (the toy model) on a free port; returns the process and its address."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TDB_LOG_FORMAT": "json",
        "TDB_LOG_LEVEL": "info",
        "XDG_DATA_HOME": data_dir,
    }
    cache = ["--cache-mb", str(cache_mb)] if cache_mb > 0 else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", "0", *cache],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "serving":
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc, str(event["address"])
    proc.kill()
    raise RuntimeError("server did not start")


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, round(q * (len(s) - 1)))], 1)


def click_path(address: str, clicks: int) -> dict[str, list[float]]:
    from tdb_client import TdbClient
    from tdb_client import interventions as iv

    times: dict[str, list[float]] = {"node_table": [], "ablation": [], "node_page": []}
    with TdbClient(address, timeout=120) as c:
        for i in range(clicks + 2):  # two warm-up clicks
            t0 = time.perf_counter()
            table = c.attribute(PROMPT, target=" Mary", distractor=" John", top_k=10)
            t1 = time.perf_counter()
            row = table.rows[i % len(table.rows)]
            c.ablate(PROMPT, {"row": [iv.zero(row.node.key)]}, target=" Mary", distractor=" John")
            t2 = time.perf_counter()
            c.forward(PROMPT, capture=[row.node.site], top_k=0)
            if row.node.unit is not None:
                c.list_explanations(node=row.node.node().unit_node().key)
            t3 = time.perf_counter()
            if i >= 2:
                times["node_table"].append((t1 - t0) * 1e3)
                times["ablation"].append((t2 - t1) * 1e3)
                times["node_page"].append((t3 - t2) * 1e3)
    return times


def cache_ratio(seq: int, repeats: int) -> dict[str, float]:
    """A Forward capture answered from the prompt cache vs uncached, in process (GPT-2-small
    shape), interleaved."""
    import torch

    import adapters
    from benchmarks.service import BIG_LIMITS
    from tdb_core import specs
    from tdb_core.cache import PromptCache
    from tdb_core.ops.forward import forward
    from tdb_core.runner import Limits, ModelRunner

    config = gpt2_config("small")
    model = random_model(config)
    runner = ModelRunner(
        adapters.wrap_model("gpt2-small", copy.deepcopy(model), ByteTokenizer()),
        Limits(**BIG_LIMITS),
    )
    ids = torch.randint(1, config.vocab_size, (seq,), generator=torch.Generator().manual_seed(0))
    spec = specs.ForwardSpec(
        (specs.Prompt(token_ids=tuple(ids.tolist())),),
        (specs.Capture("blocks.5.hook_resid_post"), specs.Capture("blocks.5.mlp.hook_post")),
    )
    cache = PromptCache(256 * 2**20)

    def uncached() -> None:
        runner.cache = None
        forward(runner, spec)

    def cached() -> None:
        runner.cache = cache
        forward(runner, spec)

    t = interleaved_medians({"uncached": uncached, "cached": cached}, repeats, warmup=1)
    st = cache.stats()
    return {
        "forward_uncached_ms": round(t["uncached"] * 1e3, 2),
        "forward_cached_ms": round(t["cached"] * 1e3, 3),
        "cache_speedup": round(t["uncached"] / t["cached"], 1),
        "cache_hits": st.hits,
        "cache_misses": st.misses,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks latency")
    p.add_argument("--clicks", type=int, default=30)
    p.add_argument("--cache-mb", type=float, default=64.0)
    p.add_argument("--cache-seq", type=int, default=64)
    p.add_argument("--cache-repeats", type=int, default=7)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address = start_server(args.cache_mb, data_dir)
        try:
            times = click_path(address, args.clicks)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    load_after = os.getloadavg()
    out: dict[str, object] = {"benchmark": "latency", "model": "toy", "clicks": args.clicks}
    for name, xs in times.items():
        out[f"{name}_p50_ms"] = round(statistics.median(xs), 1)
        out[f"{name}_p95_ms"] = _pct(xs, 0.95)
    if args.cache_repeats > 0:
        out.update(cache_ratio(args.cache_seq, args.cache_repeats))
    out.update(
        {
            "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            "target_node_table_p50_ms": 50,
            "target_node_table_p95_ms": 100,
            "target_cache_speedup": 10,
        }
    )
    emit(out)
    return 0
