"""Which parts of the toy model do IOI? Two independent answers, through the service's own RPCs:

* **ablation** (Ablate): zero each head's output (``hook_z[head]`` at every position) and each
  MLP neuron (``hook_post[neuron]`` at every position); the mean change of the IO − S logit
  difference over held-out IOI prompts;
* **attribution** (Attribute): each head's estimated total effect (activation × gradient of the
  logit difference), summed over query positions, averaged over the same prompts.

    .venv/bin/tdb serve &                      # the embedded toy model
    .venv/bin/python scripts/toy_ioi_report.py [--target localhost:50051] [--n 40]

Prints two ranked tables and one JSON object (the numbers quoted in the README).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tdb_client import TdbClient  # noqa: E402
from tdb_client import interventions as iv  # noqa: E402
from tdb_core.toy import corpus  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--n", type=int, default=40, help="held-out IOI prompts")
    parser.add_argument("--top", type=int, default=8, help="rows to print per table")
    parser.add_argument(
        "--neuron-chunk",
        type=int,
        default=63,
        help="neuron ablations per call (the server allows 64 rows with the baseline)",
    )
    args = parser.parse_args()

    examples = [
        e
        for e in corpus.generate_task("ioi", args.n, seed=123, split="heldout")
        if isinstance(e, corpus.IOIExample)
    ]
    with TdbClient(args.target, timeout=600) as client:
        info = client.model_info()
        n_layers, n_heads, d_mlp = info.n_layers, info.n_heads, info.d_mlp
        head_sets = {
            f"L{layer}H{h}": [iv.zero(f"blocks.{layer}.attn.hook_z[head={h}]")]
            for layer in range(n_layers)
            for h in range(n_heads)
        }
        neuron_names = [f"L{layer}N{n}" for layer in range(n_layers) for n in range(d_mlp)]
        ablation: dict[str, float] = defaultdict(float)
        attribution: dict[str, float] = defaultdict(float)
        baseline = 0.0
        for ex in examples:
            io, s = f" {ex.io_name}", f" {ex.s_name}"
            result = client.ablate(ex.prompt, head_sets, target=io, distractor=s, top_k=1)
            baseline += result.rows[0].logit_diff / len(examples)
            for row in result.rows[1:]:
                ablation[row.name] += row.logit_diff_change / len(examples)
            for start in range(0, len(neuron_names), args.neuron_chunk):
                chunk = neuron_names[start : start + args.neuron_chunk]
                sets = {name: [iv.zero(_neuron_selector(name))] for name in chunk}
                result = client.ablate(ex.prompt, sets, target=io, distractor=s, top_k=1)
                for row in result.rows[1:]:
                    ablation[row.name] += row.logit_diff_change / len(examples)
            table = client.attribute(
                ex.prompt, target=io, distractor=s, top_k=1000, families=["attn_head"]
            )
            for row in table.rows:
                key = f"L{row.node.layer}H{row.node.unit}"
                attribution[key] += row.values[0].total_effect / len(examples)

    heads = sorted((k for k in ablation if "H" in k), key=lambda k: ablation[k])
    neurons = sorted((k for k in ablation if "N" in k), key=lambda k: ablation[k])
    by_attr = sorted(attribution, key=lambda k: -abs(attribution[k]))
    print(f"{len(examples)} held-out IOI prompts; mean IO - S logit difference {baseline:.3f}\n")
    print("heads by ablation (zero hook_z), mean change of the logit difference")
    for k in heads[: args.top]:
        print(f"  {k:>6} {ablation[k]:+8.3f}")
    print("\nneurons by ablation (zero hook_post), mean change of the logit difference")
    for k in neurons[: args.top]:
        print(f"  {k:>8} {ablation[k]:+8.3f}")
    print("\nheads by estimated total effect (activation x gradient, summed over positions)")
    for k in by_attr[: args.top]:
        print(f"  {k:>6} {attribution[k]:+8.3f}   (ablation {ablation[k]:+.3f})")
    print(
        json.dumps(
            {
                "n_prompts": len(examples),
                "baseline_logit_diff": round(baseline, 4),
                "heads_by_ablation": [[k, round(ablation[k], 4)] for k in heads[: args.top]],
                "neurons_by_ablation": [[k, round(ablation[k], 4)] for k in neurons[: args.top]],
                "heads_by_total_effect": [
                    [k, round(attribution[k], 4)] for k in by_attr[: args.top]
                ],
            }
        )
    )


def _neuron_selector(name: str) -> str:
    layer, neuron = name[1:].split("N")
    return f"blocks.{layer}.mlp.hook_post[neuron={neuron}]"


if __name__ == "__main__":
    main()
