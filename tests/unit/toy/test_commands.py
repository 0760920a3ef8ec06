"""The `tdb toy` command as the main CLI sees it: a parser built through `register`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tdb_core.toy import TOY_MODEL_DIR, commands, corpus
from tdb_core.toy.config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdb")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands.register(subparsers)
    return parser


def test_train_arguments() -> None:
    """`toy train` needs --out and takes --steps, --max-minutes (alias --minutes) and --seed."""
    args = _parser().parse_args(
        ["toy", "train", "--out", "d", "--steps", "12", "--minutes", "2.5", "--seed", "3"]
    )
    assert args.func is commands.run_train
    assert (args.out, args.steps, args.max_minutes, args.seed) == (Path("d"), 12, 2.5, 3)
    defaults = _parser().parse_args(["toy", "train", "--out", "d"])
    assert (
        defaults.max_minutes is None and defaults.seed == TrainConfig().seed and defaults.steps > 0
    )


def test_eval_defaults_to_the_shipped_model() -> None:
    """`toy eval` with no directory evaluates the shipped model on the held-out split."""
    args = _parser().parse_args(["toy", "eval"])
    assert args.func is commands.run_eval
    assert args.dir == TOY_MODEL_DIR and args.split == "heldout" and args.n == 500
    assert _parser().parse_args(["toy", "eval", "some/dir", "--n", "7"]).dir == Path("some/dir")


def test_corpus_arguments() -> None:
    """`toy corpus` needs --out and --n; --split chooses train (default) or heldout."""
    args = _parser().parse_args(["toy", "corpus", "--out", "c.jsonl", "--n", "5"])
    assert args.func is commands.run_corpus and args.split == "train"
    args = _parser().parse_args(
        ["toy", "corpus", "--out", "c.jsonl", "--n", "5", "--split", "heldout"]
    )
    assert args.split == "heldout"


@pytest.mark.parametrize(
    "argv",
    [
        ["toy"],
        ["toy", "train"],
        ["toy", "train", "--out", "d", "--steps", "0"],
        ["toy", "train", "--out", "d", "--minutes", "-1"],
        ["toy", "corpus", "--out", "c.jsonl"],
        ["toy", "corpus", "--out", "c.jsonl", "--n", "x"],
        ["toy", "corpus", "--out", "c.jsonl", "--n", "5", "--split", "test"],
    ],
)
def test_bad_command_lines_exit_with_usage(argv: list[str], capsys) -> None:
    """Missing or malformed arguments stop argparse with exit status 2 and a usage message."""
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_corpus_command_writes_jsonl(tmp_path, capsys) -> None:
    """`toy corpus` writes exactly the generator's texts, one {"text": ...} per line."""
    out = tmp_path / "heldout.jsonl"
    args = _parser().parse_args(
        ["toy", "corpus", "--out", str(out), "--n", "40", "--seed", "2", "--split", "heldout"]
    )
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == [
        e.text for e in corpus.generate(40, seed=2, split="heldout")
    ]
    assert "wrote 40 documents" in capsys.readouterr().err


def test_eval_command_prints_metrics_of_the_shipped_model(capsys) -> None:
    """`toy eval` loads the shipped model offline and prints every metric with its bar."""
    args = _parser().parse_args(["toy", "eval", "--n", "40"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    for label in ("IOI accuracy", "IOI mean logit diff", "induction accuracy", "a/an accuracy"):
        assert label in printed


def test_eval_command_rejects_a_non_model_directory(tmp_path) -> None:
    """A directory without config.json is a NotFoundError that says what to pass instead."""
    from tdb_core.errors import NotFoundError

    args = _parser().parse_args(["toy", "eval", str(tmp_path)])
    with pytest.raises(NotFoundError, match="not a model directory"):
        args.func(args)
