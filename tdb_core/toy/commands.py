"""The ``tdb toy`` command: train, evaluate and sample the corpus of the embedded toy model.

The main ``tdb`` CLI calls :func:`register` with its subparsers. Each leaf parser sets ``func``
to a handler taking the parsed ``argparse.Namespace`` and returning a process exit code, so the
CLI runs ``sys.exit(args.func(args))``.

    tdb toy train --out DIR [--steps N] [--max-minutes M] [--seed S] [--no-progress]
    tdb toy eval [DIR] [--n N] [--seed S] [--split heldout|train]
    tdb toy corpus --out FILE --n N [--seed S] [--split train|heldout]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME, corpus
from tdb_core.toy.config import TrainConfig


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``toy`` command and its ``train``, ``eval`` and ``corpus`` subcommands."""
    toy = subparsers.add_parser(
        "toy",
        help=f"train, evaluate or sample the corpus of the embedded {TOY_MODEL_NAME} model",
        description=(
            f"The embedded {TOY_MODEL_NAME} model: a small GPT-2 trained from scratch on text "
            "with known mechanisms (IOI, induction, a/an agreement, filler)."
        ),
    )
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, metavar="{train,eval,corpus}")

    defaults = TrainConfig()
    train = toy_sub.add_parser(
        "train",
        help="train a toy model from scratch on CPU and save it",
        description="Train a toy GPT-2 from scratch (reproducible for a seed) and save it.",
    )
    train.add_argument("--out", required=True, type=Path, help="output directory")
    train.add_argument(
        "--steps",
        type=_positive_int,
        default=defaults.steps,
        help=f"optimisation steps (default {defaults.steps})",
    )
    train.add_argument(
        "--max-minutes",
        "--minutes",
        dest="max_minutes",
        type=_positive_float,
        default=None,
        help="stop the loop early after this many minutes (the result then depends on speed)",
    )
    train.add_argument(
        "--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=run_train)

    evaluate = toy_sub.add_parser(
        "eval",
        help="print the task metrics of a toy model",
        description="Print IOI, induction and a/an metrics on held-out combinations.",
    )
    evaluate.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=TOY_MODEL_DIR,
        help="model directory (default: the shipped toy-gpt2)",
    )
    evaluate.add_argument(
        "--n", type=_positive_int, default=500, help="examples per task (default 500)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    evaluate.add_argument(
        "--split", choices=corpus.SPLITS, default="heldout", help="split (default heldout)"
    )
    evaluate.set_defaults(func=run_eval)

    corpus_parser = toy_sub.add_parser(
        "corpus",
        help="write a corpus file (JSONL of {'text': ...})",
        description='Write N toy-corpus documents, one JSON object {"text": ...} per line.',
    )
    corpus_parser.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    corpus_parser.add_argument("--n", required=True, type=_positive_int, help="documents")
    corpus_parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    corpus_parser.add_argument(
        "--split", choices=corpus.SPLITS, default="train", help="split (default train)"
    )
    corpus_parser.set_defaults(func=run_corpus)


def run_train(args: argparse.Namespace) -> int:
    """``tdb toy train``: train, save, print the final metrics and the timing."""
    from tdb_core.toy.evaluate import failed_thresholds, format_metrics
    from tdb_core.toy.train import train

    config = dataclasses.replace(
        TrainConfig(), steps=args.steps, seed=args.seed, max_minutes=args.max_minutes
    )
    result = train(config, args.out, progress=not args.no_progress)
    print(format_metrics(result.metrics))
    print(
        f"trained {result.steps_done} steps in {result.train_seconds:.1f} s "
        f"({result.steps_per_second:.2f} steps/s; {result.total_seconds:.1f} s in all), "
        f"{result.n_params:,} parameters, final loss {result.final_loss:.3f}"
        + (" (stopped early by --max-minutes)" if result.stopped_early else "")
    )
    print(f"saved to {result.out_dir}")
    failures = failed_thresholds(result.metrics)
    if failures:
        print("below the bars: " + "; ".join(failures))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``tdb toy eval``: load a model directory offline and print its metrics."""
    model_dir = Path(args.dir)
    if not (model_dir / "config.json").is_file():
        raise NotFoundError(
            f"{str(model_dir)!r} is not a model directory (no config.json); pass a directory "
            "written by `tdb toy train --out DIR`, or nothing for the shipped model"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tdb_core.toy.evaluate import (
        SHOWCASE,
        evaluate,
        failed_thresholds,
        format_metrics,
        top_predictions,
    )

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    metrics = evaluate(model, tokenizer, n=args.n, seed=args.seed, split=args.split)
    print(f"model: {model_dir}")
    print(format_metrics(metrics))
    print("prompts to try (top 3 next tokens):")
    for task, prompt in SHOWCASE:
        top = ", ".join(
            f"{tok!r} {p:.2f}" for tok, p in top_predictions(model, tokenizer, prompt, 3)
        )
        print(f"  [{task}] {prompt!r} -> {top}")
    failures = failed_thresholds(metrics)
    print("all bars met" if not failures else "below the bars: " + "; ".join(failures))
    return 0


def run_corpus(args: argparse.Namespace) -> int:
    """``tdb toy corpus``: write ``--n`` documents of ``--split`` as JSONL."""
    out = Path(args.out)
    if out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} is a directory; give a file path")
    count = corpus.write_jsonl(
        out, corpus.iter_texts(corpus.generate(args.n, args.seed, args.split))
    )
    print(
        f"wrote {count} documents ({args.split} split, seed {args.seed}) to {out}", file=sys.stderr
    )
    return 0
