"""Build what ships next to the toy model: its SAE and the baseline explanations of every neuron
and SAE latent. Reproducible (fixed seeds); run after `tdb toy train`:

    python scripts/build_toy_extras.py [--model-dir tdb_core/toy/toy_gpt2] [--steps 4000]

Writes tdb_core/toy/toy_sae/ (SAELens format + metrics.json) and tdb_core/toy/explanations.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import adapters  # noqa: E402
from tdb_core import nodes  # noqa: E402
from tdb_core.explain import engine  # noqa: E402
from tdb_core.explain.store import StoredExplanation  # noqa: E402
from tdb_core.runner import Limits, ModelRunner  # noqa: E402
from tdb_core.sae import SaeKind, TrainConfig, load_sae, train_sae  # noqa: E402
from tdb_core.sae.from_model import StreamConfig, activation_stream, ce_evaluator, token_windows  # noqa: E402
from tdb_core.toy import (  # noqa: E402
    TOY_EXPLANATIONS,
    TOY_MODEL_DIR,
    TOY_MODEL_NAME,
    TOY_SAE_DIR,
    TOY_SAE_ID,
    corpus,
)

SAE_SITE = "blocks.2.hook_resid_pre"


def runner_for(model_dir: Path) -> ModelRunner:
    loaded = adapters.load_model(TOY_MODEL_NAME, str(model_dir))
    return ModelRunner(
        loaded,
        Limits(
            max_tokens_per_prompt=loaded.adapter.dims.n_ctx,
            max_prompts=4096,
            max_response_bytes=2**40,
        ),
    )


def build_sae(runner: ModelRunner, steps: int, site: str, out: Path) -> dict:
    texts = list(corpus.iter_texts(corpus.generate(20000, seed=7, split="train")))
    windows = token_windows(runner, texts, 64)
    eval_w, train_w = windows[:64], windows[64:]
    d_in = runner.schema.dims.d_model
    ckpt = Path(tempfile.mkdtemp(prefix="toy-sae-"))
    config = TrainConfig(
        kind=SaeKind.TOPK,
        d_sae=8 * d_in,
        k=16,
        steps=steps,
        batch_size=1024,
        lr=4e-4,
        checkpoint_every=steps,
        out_dir=str(ckpt),
        seed=0,
        site=site,
        model_name=TOY_MODEL_NAME,
        init_rows=16384,
        eval_rows=4096,
    )
    stream = activation_stream(
        runner, site, train_w, StreamConfig(ctx_len=64, batch_size=1024, seed=0)
    )
    result = train_sae(config, stream, ce_eval=ce_evaluator(runner, site, eval_w))
    last = result.checkpoints[-1]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(last.path, out)
    shutil.rmtree(ckpt, ignore_errors=True)
    ce = last.ce
    metrics = {
        "site": site,
        "kind": "topk",
        "k": 16,
        "d_sae": config.d_sae,
        "steps": steps,
        "l0": last.l0,
        "dead_fraction": last.dead_fraction,
        "explained_variance": last.explained_variance,
        "ce_clean": ce.clean_ce if ce else None,
        "ce_spliced": ce.spliced_ce if ce else None,
        "ce_zero_ablated": ce.zero_ablated_ce if ce else None,
        "ce_loss_recovered": ce.recovered if ce else None,
    }
    (out / "summary.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_explanations(runner: ModelRunner, out: Path) -> int:
    texts = list(corpus.iter_texts(corpus.generate(3000, seed=11, split="heldout")))
    d = runner.schema.dims
    keys = [nodes.mlp_neuron(L, n).key for L in range(d.n_layers) for n in range(d.d_mlp)]
    keys += [
        nodes.sae_latent(TOY_SAE_ID, i).key for i in range(runner.get_sae(TOY_SAE_ID).sae.d_sae)
    ]
    targets = [engine.parse_target(runner, k) for k in keys]
    method = engine.baseline_method()
    records = engine.mine(
        runner, targets, texts, engine.MiningOptions(window_len=64, max_windows=4000)
    )
    now = time.time()
    rows = []
    for t, rec in zip(targets, records):
        try:
            explainer, fields, _ = engine.explain_target(t, rec, method)
        except Exception as e:  # noqa: BLE001 - dead nodes are skipped and counted
            print(f"skip {t.key}: {e}", file=sys.stderr)
            continue
        rows.append(
            StoredExplanation(
                model=TOY_MODEL_NAME,
                sae_id=t.sae_id,
                node_key=t.key,
                method="baseline",
                explainer=explainer,
                created_at=now,
                updated_at=now,
                **fields,
            )
        )
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(asdict(r), sort_keys=True) + "\n")
    return len(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=str(TOY_MODEL_DIR))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--skip-sae", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    runner = runner_for(Path(args.model_dir))
    if not args.skip_sae:
        print(json.dumps(build_sae(runner, args.steps, SAE_SITE, TOY_SAE_DIR)))
    runner.attach_sae(TOY_SAE_ID, load_sae(TOY_SAE_DIR), str(TOY_SAE_DIR))
    n = build_explanations(runner, TOY_EXPLANATIONS)
    print(f"{n} explanations written to {TOY_EXPLANATIONS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
