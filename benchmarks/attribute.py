"""The full node table vs a plain forward: GPT-2-small-shaped random model, 1 x 64 tokens.

    python -m benchmarks attribute [--seq 64] [--batch 1|2] [--repeats 5] [--families ...]

Target: <= 2.5x (forward + autograd.grad alone is ~2x here) at 1 x 64 and at the speed round's
larger shape. Attribute takes one prompt (or two of equal length: a second prompt, or the
prompt again under interventions), so the equivalent of the 8 x 128 batch elsewhere is one prompt
of 128 tokens (``--seq 128``); ``--batch 2`` gives the table two aligned rows (a second prompt),
the most one table holds, against a plain forward of both. ``stage_ms`` gives the median cost of
each stage of the table (forward, backward, columns, ranking, node tokens, rows; see
:func:`tdb_core.ops.attribute.attribute`), ``stage_vs_forward`` the same as multiples of the plain
forward.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model
from benchmarks.service import BIG_LIMITS
from tdb_core import specs
from tdb_core.ops.attribute import AttributeSpec, LogitDiffLoss, attribute
from tdb_core.runner import Limits, ModelRunner


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks attribute")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument(
        "--batch", type=int, default=1, choices=(1, 2), help="2: a second prompt (two rows)"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--families", default="", help="comma-separated node families (default all)")
    args = p.parse_args(argv)
    import adapters

    config = gpt2_config("small")
    plain = random_model(config)
    runner = ModelRunner(
        adapters.wrap_model("gpt2-small", copy.deepcopy(plain), ByteTokenizer()),
        Limits(**BIG_LIMITS),
    )
    ids = torch.randint(
        1, config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    spec = AttributeSpec(
        prompt=specs.Prompt(token_ids=tuple(ids[0].tolist())),
        second=specs.Prompt(token_ids=tuple(ids[1].tolist())) if args.batch == 2 else None,
        loss=LogitDiffLoss((11,), (12,)),
        top_k=10,
        families=tuple(f for f in args.families.split(",") if f),
    )
    probe = plain.transformer.wte.weight

    def run_plain() -> None:
        with torch.no_grad():
            plain(input_ids=ids)

    def run_fwd_grad() -> None:
        emb = plain.transformer.wte(ids).detach().requires_grad_(True)
        out = plain(inputs_embeds=emb).logits[:, -1]
        torch.autograd.grad((out[:, 11] - out[:, 12]).sum(), [emb])

    stage_runs: list[dict[str, float]] = []

    def run_table() -> None:
        stages: dict[str, float] = {}
        attribute(runner, spec, stages)
        stage_runs.append(stages)

    del probe
    t = interleaved_medians(
        {"plain": run_plain, "fwd_grad": run_fwd_grad, "table": run_table}, args.repeats, warmup=1
    )
    stage_runs = stage_runs[1:]  # drop the warmup
    stage_ms = {
        k: round(statistics.median(r[k] for r in stage_runs) * 1e3, 1) for k in stage_runs[0]
    }
    res = attribute(runner, spec)
    emit(
        {
            "benchmark": "attribute",
            "seq": args.seq,
            "batch": args.batch,
            "families": args.families or "all",
            "plain_ms": round(t["plain"] * 1e3, 1),
            "forward_plus_grad_ms": round(t["fwd_grad"] * 1e3, 1),
            "node_table_ms": round(t["table"] * 1e3, 1),
            "ratio_table_vs_forward": round(t["table"] / t["plain"], 3),
            "ratio_forward_grad_vs_forward": round(t["fwd_grad"] / t["plain"], 3),
            "stage_ms": stage_ms,
            "stage_vs_forward": {k: round(v / (t["plain"] * 1e3), 3) for k, v in stage_ms.items()},
            "nodes_ranked": int(res.stats["nodes_ranked"]),
            "rows": len(res.rows),
            "target_ratio": 2.5,
        }
    )
    return 0
