"""Activation-record mining: many nodes in one pass over a dataset vs one node per pass.

    python -m benchmarks explain [--nodes 32] [--docs 400] [--model toy|gpt2-small]

Nodes are MLP neurons spread over the layers; the dataset is the toy corpus. Both ways produce
the same records (checked); the figure is nodes mined per second and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

from benchmarks.batching import _runner
from benchmarks.common import emit
from tdb_core.explain.engine import parse_target
from tdb_core.ops.mine import MineSpec, MiningOptions, mine
from tdb_core.toy import corpus


def _same(a, b) -> bool:
    """Identical records; summary moments may differ in the last bit (reduction order)."""
    moments = ("mean", "variance", "skewness", "kurtosis")
    ra, rb = a.record, b.record
    for m in moments:
        x, y = getattr(ra, m), getattr(rb, m)
        if (x is None) != (y is None) or (
            x is not None and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
        ):
            return False
    strip = dict.fromkeys(moments)
    return dataclasses.replace(a, record=dataclasses.replace(ra, **strip)) == dataclasses.replace(
        b, record=dataclasses.replace(rb, **strip)
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks explain")
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--model", default="toy", choices=("toy", "gpt2-small"))
    args = p.parse_args(argv)

    runner = _runner(args.model)
    d = runner.schema.dims
    keys = [
        f"blocks.{i % d.n_layers}.mlp.hook_post[{(i * 37) % d.d_mlp}]" for i in range(args.nodes)
    ]
    targets = [parse_target(runner, k) for k in keys]
    texts = list(corpus.iter_texts(corpus.generate(args.docs, seed=3, split="train")))
    options = MiningOptions(window_len=min(64, d.n_ctx), max_windows=None)

    start = time.perf_counter()
    together = mine(runner, MineSpec(tuple(targets), texts, options))
    one_pass = time.perf_counter() - start
    start = time.perf_counter()
    alone = [mine(runner, MineSpec((t,), texts, options))[0] for t in targets]
    separate = time.perf_counter() - start
    same = all(_same(a, b) for a, b in zip(together, alone, strict=True))
    emit(
        {
            "benchmark": "explain",
            "model": args.model,
            "nodes": len(keys),
            "docs": len(texts),
            "one_pass_s": round(one_pass, 3),
            "one_node_per_pass_s": round(separate, 3),
            "nodes_per_s_one_pass": round(len(keys) / one_pass, 1),
            "nodes_per_s_separate": round(len(keys) / separate, 2),
            "speedup": round(separate / one_pass, 2),
            "same_records": same,
        }
    )
    return 0 if same else 1
