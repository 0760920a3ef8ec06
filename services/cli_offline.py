"""The offline commands of ``tdb``: work on a model in this process, without a server.

    tdb sae train --site S --dataset FILE --out DIR [--kind topk|relu] [--steps N] ...
    tdb explain --node 'blocks.1.mlp.hook_post[42]' [--node ...|'SITE[a:b]'] [--model PATH]
                [--dataset FILE] [--explainer baseline|hf:PATH|openai:MODEL] [--db FILE]
    tdb toy train --out DIR | tdb toy eval [DIR] | tdb toy corpus --out FILE --n N

Torch and the model are imported when a command runs, not when ``tdb`` builds its parser.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any


def local_runner(name: str, source: str, device: str = "cpu") -> Any:
    """A runner for a local model with limits sized for offline work (whole context, big batches)."""
    import adapters
    from tdb_core.checks import Limits
    from tdb_core.runner import ModelRunner

    loaded = adapters.load_model(name, source, device)
    return ModelRunner(
        loaded,
        Limits(
            max_tokens_per_prompt=loaded.adapter.dims.n_ctx,
            max_prompts=4096,
            max_response_bytes=2**40,
        ),
    )


# -- sae train ---------------------------------------------------------------------------------


def cmd_sae_train(args: argparse.Namespace) -> int:
    from tdb_core.ops.sae_data import StreamConfig, activation_stream, ce_evaluator, token_windows
    from tdb_core.sae import SaeKind, TrainConfig, train_sae

    source = args.model
    if source is None:
        from tdb_core.toy import TOY_MODEL_DIR

        source = str(TOY_MODEL_DIR)
    runner = local_runner("train", source, args.device)
    site = runner.schema.get(args.site)
    windows = token_windows(runner, args.dataset, args.ctx_len)
    n_eval = min(args.eval_windows, max(1, len(windows) // 10))
    eval_w, train_w = windows[:n_eval], windows[n_eval:]
    print(
        f"{len(train_w)} training windows, {n_eval} evaluation windows of <= {args.ctx_len} "
        f"tokens; site {site.name}",
        file=sys.stderr,
    )
    d_in = 1
    for d in site.dims:
        if d != site.kind.pos_dim:
            d_in *= runner.schema.dim_size(site, d, 1)
    stream = activation_stream(
        runner,
        site.name,
        train_w,
        StreamConfig(ctx_len=args.ctx_len, batch_size=args.batch_size, seed=args.seed),
    )
    config = TrainConfig(
        kind=SaeKind(args.kind),
        d_sae=args.d_sae or 8 * d_in,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        k=args.k,
        l1_coeff=args.l1,
        checkpoint_every=args.checkpoint_every,
        out_dir=args.out,
        seed=args.seed,
        site=site.name,
        model_name=os.path.basename(source.rstrip("/")),
        init_rows=min(16384, args.batch_size * 16),
        eval_rows=min(4096, args.batch_size * 4),
    )
    result = train_sae(
        config, stream, ce_eval=ce_evaluator(runner, site.name, eval_w), progress=not args.quiet
    )
    rows = []
    for m in result.checkpoints:
        ce = m.ce
        rows.append(
            {
                "step": m.step,
                "l0": round(m.l0, 3),
                "dead_fraction": round(m.dead_fraction, 4),
                "explained_variance": round(m.explained_variance, 4),
                "ce_clean": round(ce.clean_ce, 4) if ce else None,
                "ce_spliced": round(ce.spliced_ce, 4) if ce else None,
                "ce_zero_ablated": round(ce.zero_ablated_ce, 4) if ce else None,
                "ce_loss_recovered": round(ce.recovered, 4)
                if ce and ce.recovered is not None
                else None,
                "path": str(m.path) if m.path else None,
            }
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
    return 0


# -- explain ---------------------------------------------------------------------------------------


def _expand_nodes(items: Sequence[str]) -> list[str]:
    """Node keys, with ``SITE[a:b]`` expanded to one key per unit (batch mode)."""
    import re

    out: list[str] = []
    for item in items:
        m = re.match(r"^(.*)\[(\d+):(\d+)\]$", item.strip())
        if m:
            out.extend(f"{m.group(1)}[{u}]" for u in range(int(m.group(2)), int(m.group(3))))
        else:
            out.append(item.strip())
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    """Mine, explain, simulate and score nodes locally (no server), storing in the catalog."""
    from tqdm import tqdm

    from services.server import build_explain_setup, default_model_sources, default_sae_sources
    from services.settings import Settings
    from tdb_core.explain import workflow
    from tdb_core.ops.mine import MiningOptions
    from tdb_core.sae import load_sae

    source = args.model or default_model_sources()[0].source
    name = args.model_name or (
        default_model_sources()[0].name if not args.model else os.path.basename(source.rstrip("/"))
    )
    runner = local_runner(name, source, args.device)
    if not args.model:
        for s in default_sae_sources():
            runner.saes.attach(s.id, load_sae(s.source), s.source)
    setup = build_explain_setup(
        Settings(
            explanations_db=args.db,
            explainers=(args.explainer,),
            openai_base_url=args.openai_base_url,
            openai_api_key_env=args.openai_api_key_env,
            device=args.device,
        )
    )
    nodes = _expand_nodes(args.node)
    recipe = workflow.Recipe(
        dataset=setup.datasets["toy"]() if args.dataset == "toy" else args.dataset,
        method=setup.method(args.explainer.partition(":")[0]),
        mining=MiningOptions(window_len=args.window_len, max_windows=args.max_windows),
        save=not args.no_save,
    )
    spec = workflow.ExplainSpec(tuple(nodes), recipe)
    mining = tqdm(total=0, desc="mining", unit="window", disable=args.quiet, file=sys.stderr)
    explaining: list[Any] = []  # the second bar, once mining is done

    def show(e: workflow.Event) -> None:
        if isinstance(e, workflow.Progress):
            if e.phase == "mining":
                mining.total, mining.n = e.total, e.done
                mining.refresh()
            return
        if not explaining:  # a node explained or skipped
            mining.close()
            quiet = args.quiet or len(nodes) < 2
            explaining.append(
                tqdm(
                    total=len(nodes), desc="explaining", unit="node", disable=quiet, file=sys.stderr
                )
            )
        explaining[0].update(1)

    result = workflow.explain(runner, spec, setup.catalog, show)
    mining.close()
    for bar in explaining:
        bar.close()
    if args.json:
        print(json.dumps([asdict(e) for e in result.explanations]))
        return 0
    for sk in result.skipped:
        print(f"{sk.node:36s} {'skipped':>9s}  {sk.reason}")
    for e in result.explanations:
        score = "unscored" if e.score is None else f"{e.score:+.3f}"
        print(f"{e.node_key:36s} {score:>9s}  {e.explanation}")
        if e.score is None and e.score_reason:
            print(f"{'':36s} {'':>9s}  ({e.score_reason})")
    if recipe.save and setup.catalog.store is not None:
        print(
            f"saved {len(result.explanations)} explanation(s) to {setup.catalog.store.path}",
            file=sys.stderr,
        )
    return 0


# -- registration ---------------------------------------------------------------------------------


def _parser_sae_train(sae_sub: Any) -> None:
    p = sae_sub.add_parser("train", help="train an SAE on a model's activations (local, no server)")
    p.add_argument("--model", default=None, help="HF directory or hub id (default: the toy model)")
    p.add_argument("--site", required=True, help="e.g. blocks.1.hook_resid_pre")
    p.add_argument("--dataset", required=True, help='JSONL of {"text": ...} or plain text')
    p.add_argument("--out", required=True, help="output directory (SAELens format checkpoints)")
    p.add_argument("--kind", choices=("topk", "relu"), default="topk")
    p.add_argument("--d-sae", type=int, default=0, help="latents (default 8 x d_in)")
    p.add_argument("--k", type=int, default=32, help="TopK k")
    p.add_argument("--l1", type=float, default=0.1, help="ReLU L1 coefficient")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ctx-len", type=int, default=64)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sae_train)


def _parser_explain(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="explain nodes: mine records, explain, simulate, score "
        "(local; stores in the explanation catalog)",
    )
    p.add_argument(
        "--node",
        action="append",
        required=True,
        help="node key, e.g. 'blocks.1.mlp.hook_post[42]'; repeat it, or use a range "
        "'blocks.1.mlp.hook_post[0:64]' for batch mode",
    )
    p.add_argument("--model", default=None, help="HF directory or hub id (default: the toy model)")
    p.add_argument("--model-name", default=None, help="name to store explanations under")
    p.add_argument("--dataset", default="toy", help="JSONL/plain-text file, or 'toy'")
    p.add_argument(
        "--explainer", default="baseline", help="baseline | hf:PATH_OR_HUB_ID | openai:MODEL"
    )
    p.add_argument("--openai-base-url", default=os.environ.get("OPENAI_BASE_URL"))
    p.add_argument("--openai-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--db", default=None, help="explanation catalog (SQLite)")
    p.add_argument("--window-len", type=int, default=64)
    p.add_argument("--max-windows", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)


def register(sub: Any, sae_sub: Any) -> None:
    """Add the offline commands to ``tdb``'s subparsers (``sae_sub``: those of ``tdb sae``)."""
    from tdb_core.toy.commands import register as register_toy

    _parser_sae_train(sae_sub)
    _parser_explain(sub)
    register_toy(sub)
