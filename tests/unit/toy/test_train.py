"""The training loop: schedule, packing, batches, reproducibility and a saved, loadable model."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import corpus
from tdb_core.toy.config import TrainConfig
from tdb_core.toy.tokenizer import train_tokenizer
from tdb_core.toy.train import batches, lr_at, pack_windows, train

TINY = TrainConfig(
    n_layer=1, n_embd=32, n_head=2, n_positions=64, steps=4, batch_size=4, long_batch_size=2,
    long_context_fraction=0.5, warmup_steps=2, tokenizer_docs=300, eval_every=2, eval_n=4,
    final_eval_n=4, threads=1,
)  # fmt: skip


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    """Linear warmup reaches the peak at the last warmup step; cosine ends at lr * min_lr_ratio."""
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(10, config) == pytest.approx(1e-3)
    assert lr_at(55, config) == pytest.approx(1e-4 + 0.5 * 9e-4)  # halfway: mean of peak and floor
    assert lr_at(100, config) == pytest.approx(1e-4)
    values = [lr_at(s, config) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_pack_windows_keeps_documents_whole() -> None:
    """Windows are exactly n_positions long, hold whole documents in order, and pad the rest."""
    docs = [[0, 1, 2], [0, 3, 4, 5, 6], [0, 7], [0, 8, 9, 10, 11, 12, 13], [0, 14]]
    windows = list(pack_windows(iter(docs), n_positions=8, pad_id=99))
    assert [w for w, _ in windows] == [
        [0, 1, 2, 0, 3, 4, 5, 6],  # exactly full
        [0, 7, 99, 99, 99, 99, 99, 99],  # the next document (7 tokens) would not fit
        [0, 8, 9, 10, 11, 12, 13, 99],
    ]  # the last, unfinished window is not emitted (training streams never end)
    assert [n for _, n in windows] == [8, 2, 7]


def test_batches_hold_single_documents_then_packed_windows() -> None:
    """The run's data: first one document per row (padded to the longest, <|endoftext|> only at
    position 0), then, for the final long_context_fraction of the steps, packed n_positions
    windows. Labels equal input ids on real tokens and are -100 exactly where the mask is 0."""
    tokenizer = train_tokenizer(corpus.iter_texts(corpus.generate(500, seed=0)))
    eos = tokenizer.eos_token_id
    config = dataclasses.replace(
        TINY, steps=4, batch_size=8, long_batch_size=3, long_context_fraction=0.5
    )
    run = list(itertools.islice(batches(tokenizer, config), 4))
    for batch in run:
        assert torch.equal(batch.labels == -100, batch.attention_mask == 0)
        real = batch.attention_mask == 1
        assert torch.equal(batch.labels[real], batch.input_ids[real])
        assert (batch.input_ids[:, 0] == eos).all()
    for batch in run[:2]:  # single documents
        separators = (batch.input_ids == eos) & (batch.attention_mask == 1)  # [batch, pos]
        assert batch.input_ids.shape[0] == 8 and batch.input_ids.shape[1] <= 64
        assert separators[:, 1:].sum() == 0
        assert batch.attention_mask[:, -1].any()  # padded to the longest document, no further
    for batch in run[2:]:  # packed windows
        separators = (batch.input_ids == eos) & (batch.attention_mask == 1)  # [batch, pos]
        assert batch.input_ids.shape == (3, 64)
        assert separators.sum() > 3  # some window holds several documents
    again = list(itertools.islice(batches(tokenizer, config), 4))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(run, again, strict=True))


def test_tiny_training_run_saves_a_loadable_model(tmp_path) -> None:
    """A few steps on a tiny config write a save_pretrained directory that loads with the Auto
    classes offline, with safetensors weights, and a training_info.json that records the run."""
    result = train(TINY, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert result.steps_done == 4 and not result.stopped_early
    assert math.isfinite(result.final_loss) and result.steps_per_second > 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == "gelu_new"
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tokenizer)
    assert (out / "model.safetensors").is_file()
    info = json.loads((out / "training_info.json").read_text())
    assert info["config"]["steps"] == 4 and info["result"]["n_params"] == result.n_params
    assert 0.0 <= result.metrics.ioi_accuracy <= 1.0 and result.metrics.ioi_n == 4


def test_training_is_reproducible(tmp_path) -> None:
    """The same config and seed give bit-identical weights; another seed gives others."""
    train(TINY, tmp_path / "a", progress=False)
    train(TINY, tmp_path / "b", progress=False)
    train(dataclasses.replace(TINY, seed=TINY.seed + 1), tmp_path / "c", progress=False)
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].shape == c[k].shape)


def test_training_moves_layernorm_away_from_its_init(tmp_path) -> None:
    """LayerNorm gains and biases are trained (not left at 1 and 0)."""
    train(dataclasses.replace(TINY, eval_every=0), tmp_path / "m", progress=False)
    weights = load_file(tmp_path / "m" / "model.safetensors")
    assert not torch.equal(
        weights["transformer.h.0.ln_1.weight"],
        torch.ones_like(weights["transformer.h.0.ln_1.weight"]),
    )
    assert weights["transformer.ln_f.bias"].abs().max() > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_head": 3}, "divisible by n_head"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"n_positions": 32}, "n_positions must be >= 64"),
        ({"lr": 0.0}, "lr > 0"),
        ({"max_minutes": 0.0}, "max_minutes must be > 0"),
        ({"long_context_fraction": 1.5}, "long_context_fraction must be in"),
    ],
)
def test_bad_configs_are_rejected(tmp_path, change: dict, message: str) -> None:
    """Inconsistent configs raise InvalidArgumentError before any work, saying what is allowed."""
    with pytest.raises(InvalidArgumentError, match=message):
        train(dataclasses.replace(TINY, **change), tmp_path / "x", progress=False)


def test_out_must_not_be_a_file(tmp_path) -> None:
    """--out pointing at an existing file is an InvalidArgumentError."""
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        train(TINY, path, progress=False)
