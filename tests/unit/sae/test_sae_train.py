"""SAE training: dictionary recovery on synthetic data, checkpoints, folding, dead latents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from tdb_core.errors import InvalidArgumentError
from tdb_core.sae import (
    CeLossResult,
    SaeKind,
    SparseAutoencoder,
    TrainConfig,
    ce_loss_result,
    geometric_median,
    load_sae,
    mean_max_cosine,
    train_sae,
)


def sparse_dictionary_data(
    n_rows: int,
    n_dirs: int = 512,
    d: int = 128,
    active: int = 4,
    batch: int = 256,
    seed: int = 2024,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows = sum of ``active`` of ``n_dirs`` random unit directions, magnitudes in [0.5, 1.5]."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, d, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)  # [n_dirs, d]
    which = torch.rand(n_rows, n_dirs, generator=g).topk(active, dim=-1).indices  # [n, active]
    mags = torch.rand(n_rows, active, generator=g) + 0.5  # [n, active]
    coeffs = torch.zeros(n_rows, n_dirs).scatter(-1, which, mags)  # [n, n_dirs]
    return dirs, list((coeffs @ dirs).split(batch))


def gaussian_batches(
    n_batches: int, rows: int = 64, d: int = 16, scale: float = 3.0, seed: int = 7
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return [torch.randn(rows, d, generator=g) @ mix * scale + 1.0 for _ in range(n_batches)]


SMALL = TrainConfig(
    kind=SaeKind.TOPK,
    d_sae=32,
    steps=12,
    batch_size=64,
    lr=1e-2,
    k=4,
    init_rows=256,
    eval_rows=128,
    dead_tokens_threshold=10_000,
    seed=3,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "extra"),
    [(SaeKind.TOPK, {"k": 4}), (SaeKind.RELU, {"l1_coeff": 0.1})],
)
def test_recovers_known_dictionary(kind: SaeKind, extra: dict[str, Any]) -> None:
    """On data made of 512 sparse directions in 128 dims, the decoder finds them (MMCS >= 0.9)."""
    steps, batch = 600, 256
    dirs, batches = sparse_dictionary_data(2048 + steps * batch)
    config = TrainConfig(
        kind=kind,
        d_sae=512,
        steps=steps,
        batch_size=batch,
        lr=1e-2,
        init_rows=4096,
        eval_rows=2048,
        dead_tokens_threshold=20_000,
        seed=0,
        **extra,
    )
    result = train_sae(config, batches, progress=False)
    mmcs = mean_max_cosine(dirs, result.sae.decoder_directions())
    # control: a random dictionary of the same size scores far lower
    random_rows = torch.randn(512, 128, generator=torch.Generator().manual_seed(0))
    assert mean_max_cosine(dirs, random_rows) < 0.5
    final = result.checkpoints[-1]
    print(f"{kind.value}: MMCS={mmcs:.4f} EV={final.explained_variance:.4f} L0={final.l0:.2f}")
    assert mmcs >= 0.9
    assert final.explained_variance > 0.8


def test_checkpoints_are_saelens_dirs_with_metrics(tmp_path: Path) -> None:
    """Each checkpoint writes cfg.json, weights and metrics.json; the files match the result."""
    calls: list[SparseAutoencoder] = []

    def ce_eval(sae: SparseAutoencoder) -> CeLossResult:
        calls.append(sae)
        return ce_loss_result(clean_ce=3.0, spliced_ce=3.2, zero_ablated_ce=7.0)

    config = replace(
        SMALL,
        checkpoint_every=5,
        out_dir=str(tmp_path),
        site="blocks.0.hook_resid_post",
        model_name="tiny",
    )
    result = train_sae(config, gaussian_batches(20), ce_eval=ce_eval, progress=False)
    assert [c.step for c in result.checkpoints] == [5, 10, 12]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000005",
        "step_00000010",
        "step_00000012",
    ]
    assert len(calls) == 3
    for metrics in result.checkpoints:
        directory = Path(metrics.path or "")
        body = json.loads((directory / "metrics.json").read_text())
        assert body["step"] == metrics.step and body["l0"] == metrics.l0
        assert body["ce"]["recovered"] == pytest.approx(0.95)
        assert body["train_config"]["kind"] == "topk"
        assert sum(body["density"]["counts"]) + body["density"]["never_fired"] == 32
        assert metrics.l0 == pytest.approx(4.0)
    final = load_sae(tmp_path / "step_00000012")
    assert final.site == "blocks.0.hook_resid_post" and final.config.model_name == "tiny"
    for name, tensor in result.sae.named_tensors().items():
        assert torch.equal(final.named_tensors()[name], tensor), name
    assert result.steps == 12 and result.tokens == 12 * 64


def test_saved_sae_reads_raw_activations() -> None:
    """Training on 100·x gives the SAE trained on x with biases times 100 (scale is folded)."""
    base = gaussian_batches(20, scale=1.0)
    a = train_sae(SMALL, base, progress=False)
    b = train_sae(SMALL, [100 * x for x in base], progress=False)
    ta, tb = a.sae.named_tensors(), b.sae.named_tensors()
    torch.testing.assert_close(tb["W_dec"], ta["W_dec"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tb["W_enc"], ta["W_enc"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(tb["b_dec"], 100 * ta["b_dec"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(tb["b_enc"], 100 * ta["b_enc"], atol=1e-3, rtol=1e-4)
    assert a.input_scale == pytest.approx(100 * b.input_scale)
    assert a.checkpoints[-1].explained_variance == pytest.approx(
        b.checkpoints[-1].explained_variance, abs=1e-4
    )
    ev_check = b.sae(torch.cat(base[:2]) * 100)[1]
    assert ev_check.shape == (128, 16)


def test_deterministic_given_seed() -> None:
    """The same config and data give bit-identical SAEs."""
    a = train_sae(SMALL, gaussian_batches(20), progress=False).sae.named_tensors()
    b = train_sae(SMALL, gaussian_batches(20), progress=False).sae.named_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", [SaeKind.TOPK, SaeKind.RELU])
def test_decoder_rows_stay_unit_norm(kind: SaeKind) -> None:
    """After training, every decoder row has norm 1 (the unit-norm constraint holds)."""
    result = train_sae(replace(SMALL, kind=kind), gaussian_batches(20), progress=False)
    norms = result.sae.decoder_directions().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_auxk_engages_only_with_dead_latents() -> None:
    """The AuxK term is non-zero once latents are dead, and zero while none are."""
    many = replace(SMALL, d_sae=128, k=2, steps=30, dead_tokens_threshold=64, checkpoint_every=10)
    dead = train_sae(many, gaussian_batches(40), progress=False)
    assert dead.checkpoints[-1].dead_fraction > 0
    assert dead.checkpoints[-1].train_aux_loss > 0
    alive = train_sae(
        replace(many, dead_tokens_threshold=10**9), gaussian_batches(40), progress=False
    )
    assert all(c.train_aux_loss == 0 and c.dead_fraction == 0 for c in alive.checkpoints)


def test_relu_resamples_dead_latents() -> None:
    """With a strong L1, ReLU latents die and get resampled; rows stay unit norm."""
    config = replace(
        SMALL,
        kind=SaeKind.RELU,
        d_sae=128,
        l1_coeff=5.0,
        steps=30,
        dead_tokens_threshold=128,
        resample_every=10,
        checkpoint_every=10,
    )
    result = train_sae(config, gaussian_batches(40), progress=False)
    assert sum(c.resampled for c in result.checkpoints) > 0
    assert result.checkpoints[-1].train_aux_loss > 0  # the L1 term
    norms = result.sae.decoder_directions().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)


def test_rebatching_and_early_end() -> None:
    """Odd-sized input batches are re-cut; a short stream ends training early, checkpointed."""
    odd = [torch.cat(gaussian_batches(6))[i : i + 37] for i in range(0, 384, 37)]  # 384 rows
    result = train_sae(replace(SMALL, steps=100), odd, progress=False)
    # 384 rows - 128 eval = 256 = 4 steps of 64
    assert result.steps == 4 and result.tokens == 256
    assert [c.step for c in result.checkpoints] == [4]


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True draws a tqdm bar on stderr; progress=False prints nothing."""
    train_sae(SMALL, gaussian_batches(20), progress=True)
    assert "train sae" in capsys.readouterr().err
    train_sae(SMALL, gaussian_batches(20), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": SaeKind.GATED}, "kind must be relu or topk"),
        ({"k": 33}, r"k must be in \[1, d_sae\]"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"eval_rows": 1}, "eval_rows must be >= 2"),
        ({"checkpoint_every": 0}, "checkpoint_every must be None or >= 1"),
    ],
)
def test_bad_config(change: dict[str, Any], message: str) -> None:
    """Invalid settings are InvalidArgumentError before any data is read."""

    def never() -> Iterator[torch.Tensor]:
        raise AssertionError("data must not be read")
        yield torch.zeros(1)

    with pytest.raises(InvalidArgumentError, match=message):
        train_sae(replace(SMALL, **change), never(), progress=False)


def test_bad_streams() -> None:
    """Too few rows, mixed widths and non-tensor batches are InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match=r"eval_rows \(128\) \+ init_rows \(256\)"):
        train_sae(SMALL, gaussian_batches(3), progress=False)
    with pytest.raises(InvalidArgumentError, match="width 8 but earlier batches had 16"):
        train_sae(SMALL, gaussian_batches(3) + gaussian_batches(5, d=8), progress=False)
    with pytest.raises(InvalidArgumentError, match=r"floating-point tensors \[n, d_in\]"):
        train_sae(SMALL, [torch.zeros(64, 16, dtype=torch.long)], progress=False)
    with pytest.raises(InvalidArgumentError, match="zero variance"):
        train_sae(SMALL, [torch.ones(64, 16)] * 10, progress=False)


def test_geometric_median() -> None:
    """Weiszfeld finds the middle of collinear points and beats the mean on skewed data."""
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(geometric_median(line), torch.tensor([1.0, 0.0]), atol=1e-4, rtol=0)
    g = torch.Generator().manual_seed(1)
    pts = torch.cat([torch.randn(90, 5, generator=g), torch.randn(10, 5, generator=g) * 50])
    med = geometric_median(pts)

    def cost(y: torch.Tensor) -> float:
        return (pts - y).norm(dim=-1).sum().item()

    assert cost(med) < cost(pts.mean(0))
    for _ in range(10):
        assert cost(med) <= cost(med + 0.01 * torch.randn(5, generator=g)) + 1e-6
