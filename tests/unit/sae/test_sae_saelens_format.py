"""SAELens directories: every architecture, cfg fields that change the math, saver, bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.sae import (
    InputNorm,
    SaeKind,
    TopKArch,
    load_sae,
    load_saelens_sae,
    saelens_cfg,
    save_sae,
)

ARCHITECTURES = ["standard", "topk", "jumprelu", "gated"]
KINDS = {
    "standard": SaeKind.RELU,
    "topk": SaeKind.TOPK,
    "jumprelu": SaeKind.JUMPRELU,
    "gated": SaeKind.GATED,
}


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 agreement to 1e-6."""
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def saelens_reference(
    architecture: str, cfg: dict[str, Any], t: dict[str, torch.Tensor], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature_acts, sae_out) as SAELens's encode/decode compute them."""
    sae_in = x - t["b_dec"] * cfg["apply_b_dec_to_input"]
    if architecture == "gated":
        active = ((sae_in @ t["W_enc"] + t["b_gate"]) > 0).float()
        mags = torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
        acts = active * mags
    else:
        hidden_pre = sae_in @ t["W_enc"] + t["b_enc"]
        if architecture == "standard":
            acts = torch.relu(hidden_pre)
        elif architecture == "jumprelu":
            acts = torch.relu(hidden_pre) * (hidden_pre > t["threshold"].relu()).float()
        else:
            values, indices = torch.topk(hidden_pre, k=cfg["k"], dim=-1, sorted=False)
            acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())
    return acts, acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_each_architecture(
    architecture: str,
    apply_b_dec: bool,
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
    inputs: torch.Tensor,
) -> None:
    """Each architecture's directory loads with its kind, site, model name and exact math."""
    tensors = saelens_tensors(architecture)
    cfg = saelens_cfg(architecture, apply_b_dec_to_input=apply_b_dec)
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, tensors))
    assert sae.kind is KINDS[architecture]
    assert sae.site == "blocks.1.hook_resid_pre"
    assert sae.config.model_name == "tiny-gpt2"
    acts, out = saelens_reference(architecture, cfg, tensors, inputs)
    close(sae.encode(inputs), acts)
    close(sae(inputs)[1], out)


def test_site_override_and_file_paths(
    tmp_path: Path, saelens_tensors: Any, saelens_cfg: Any, write_saelens: Any
) -> None:
    """An explicit site wins over hook_name; cfg.json or the weights file path also load."""
    directory = write_saelens(
        tmp_path / "sae", saelens_cfg("standard"), saelens_tensors("standard")
    )
    assert load_sae(directory, site="blocks.0.hook_mlp_out").site == "blocks.0.hook_mlp_out"
    assert load_sae(directory / "cfg.json").site == "blocks.1.hook_resid_pre"
    assert load_sae(directory / "sae_weights.safetensors").kind is SaeKind.RELU


def test_pre_6_config(
    tmp_path: Path, saelens_tensors: Any, write_saelens: Any, inputs: torch.Tensor
) -> None:
    """Pre-6.0 cfgs: hook_point at top level, no architecture, activation_fn topk + kwargs."""
    tensors = saelens_tensors("topk")
    cfg = {
        "d_in": 12,
        "d_sae": 40,
        "dtype": "torch.float32",
        "hook_point": "blocks.2.hook_resid_post",
        "hook_point_head_index": None,
        "model_name": "gpt2-small",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 7},
        "apply_b_dec_to_input": False,
        "normalize_activations": False,
        "sae_lens_version": "3.12.0",
        "lr": 0.0004,
    }
    sae = load_sae(write_saelens(tmp_path / "old", cfg, tensors))
    assert sae.kind is SaeKind.TOPK
    assert sae.config.architecture == TopKArch(k=7)
    assert sae.site == "blocks.2.hook_resid_post"
    assert sae.config.model_name == "gpt2-small"
    acts, out = saelens_reference("topk", {**cfg, "k": 7}, tensors, inputs)
    close(sae.encode(inputs), acts)
    close(sae(inputs)[1], out)


def test_layer_norm_and_rescale_fields(
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
    inputs: torch.Tensor,
) -> None:
    """normalize_activations=layer_norm and rescale_acts_by_decoder_norm change the math."""
    tensors = saelens_tensors("topk")
    cfg = saelens_cfg("topk", normalize_activations="layer_norm", rescale_acts_by_decoder_norm=True)
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, tensors))
    assert sae.input_norm is InputNorm.LAYER_NORM
    mu = inputs.mean(-1, keepdim=True)
    std = (inputs - mu).std(-1, keepdim=True)
    x = (inputs - mu) / (std + 1e-5)
    norms = tensors["W_dec"].norm(dim=-1)
    hidden_pre = ((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]) * norms
    values, indices = torch.topk(hidden_pre, k=5, dim=-1)
    acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())
    out = ((acts / norms) @ tensors["W_dec"] + tensors["b_dec"]) * std + mu
    close(sae.encode(inputs), acts)
    close(sae(inputs)[1], out)


def test_jumprelu_log_threshold_and_unit_scaling_factor(
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
    inputs: torch.Tensor,
) -> None:
    """Older files: log_threshold means exp(log_threshold); an all-ones scaling_factor drops."""
    tensors = saelens_tensors("jumprelu")
    stored = {k: v for k, v in tensors.items() if k != "threshold"}
    stored["log_threshold"] = tensors["threshold"].log()
    stored["scaling_factor"] = torch.ones(40)
    sae = load_sae(write_saelens(tmp_path / "sae", saelens_cfg("jumprelu"), stored))
    torch.testing.assert_close(sae.threshold.detach(), tensors["threshold"])
    assert "scaling_factor" not in sae.named_tensors()
    expected = {**tensors, "threshold": stored["log_threshold"].exp()}
    close(
        sae.encode(inputs),
        saelens_reference("jumprelu", saelens_cfg("jumprelu"), expected, inputs)[0],
    )


def test_cfg_dtype_is_applied(
    tmp_path: Path, saelens_tensors: Any, saelens_cfg: Any, write_saelens: Any
) -> None:
    """fp32 tensors under a bfloat16 cfg load as bfloat16; an explicit dtype wins over the cfg."""
    directory = write_saelens(
        tmp_path / "sae", saelens_cfg("standard", dtype="bfloat16"), saelens_tensors("standard")
    )
    assert load_sae(directory).dtype == torch.bfloat16
    assert load_sae(directory, dtype=torch.float16).dtype == torch.float16


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_exact(
    architecture: str,
    dtype: torch.dtype,
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
) -> None:
    """save -> load gives bit-identical tensors and config; saving again gives identical files."""
    extra = {"normalize_activations": "layer_norm"} if architecture == "topk" else {}
    cfg = saelens_cfg(
        architecture, **extra, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    )
    original = load_sae(write_saelens(tmp_path / "src", cfg, saelens_tensors(architecture)))
    first = save_sae(original, tmp_path / "first")
    loaded = load_sae(first)
    assert loaded.config == original.config
    assert loaded.dtype == dtype
    a, b = original.named_tensors(), loaded.named_tensors()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    second = save_sae(loaded, tmp_path / "second")
    assert (first / "cfg.json").read_bytes() == (second / "cfg.json").read_bytes()
    w1, w2 = (
        load_file(first / "sae_weights.safetensors"),
        load_file(second / "sae_weights.safetensors"),
    )
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_saved_cfg_is_saelens_v6(tmp_path: Path, openai_state: Any) -> None:
    """An OpenAI v5 SAE saves as a SAELens v6 topk + layer_norm cfg with its site."""
    path = tmp_path / "v5.pt"
    torch.save(openai_state("TopK", k=6), path)
    sae = load_sae(path, site="blocks.4.hook_resid_post")
    directory = save_sae(sae, tmp_path / "out")
    cfg = json.loads((directory / "cfg.json").read_text())
    assert cfg == saelens_cfg(sae)
    assert cfg["architecture"] == "topk" and cfg["k"] == 6
    assert cfg["normalize_activations"] == "layer_norm"
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "blocks.4.hook_resid_post"
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0"
    weights = load_file(directory / "sae_weights.safetensors")
    assert sorted(weights) == ["W_dec", "W_enc", "b_dec", "b_enc"]
    assert weights["W_enc"].shape == (12, 40) and weights["W_dec"].shape == (40, 12)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "batchtopk"}, r"unsupported architecture 'batchtopk'; supported: \["),
        ({"d_in": 13}, r"W_enc has shape \[12, 40\] but d_in=13, d_sae=40 require \[13, 40\]"),
        ({"d_sae": 41}, r"has shape .* but d_in=12, d_sae=41 require"),
        ({"d_in": "12"}, r"d_in must be a positive integer"),
        ({"dtype": "int8"}, r"unsupported dtype 'int8'; allowed:"),
        (
            {"normalize_activations": "expected_average_only_in"},
            r"scale factor that SAE files do not store",
        ),
        ({"normalize_activations": "whiten"}, r"unsupported normalize_activations 'whiten'"),
        ({"reshape_activations": "hook_q"}, r"unsupported reshape_activations"),
        ({"apply_b_dec_to_input": "yes"}, r"apply_b_dec_to_input must be true or false"),
        ({"activation_fn": "tanh-relu"}, r"activation_fn 'tanh-relu' is not supported"),
        ({"finetuning_scaling_factor": True}, r"finetuning_scaling_factor=true is not supported"),
        (
            {"metadata": {"hook_name": "blocks.0.attn.hook_z", "hook_head_index": 3}},
            r"hook_head_index=3",
        ),
    ],
)
def test_bad_cfg(
    change: dict[str, Any],
    message: str,
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
) -> None:
    """Inconsistent or unsupported cfg fields are InvalidArgumentError naming the file."""
    cfg = {**saelens_cfg("standard"), **change}
    directory = write_saelens(tmp_path / "sae", cfg, saelens_tensors("standard"))
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load_sae(directory)
    assert str(directory) in str(info.value)


@pytest.mark.parametrize(
    ("architecture", "cfg_change", "message"),
    [
        ("topk", {"k": None}, r"a topk SAE needs an integer k"),
        ("topk", {"k": 41}, r"k=41 must satisfy 1 <= k <= d_sae=40"),
        ("gated", {"normalize_decoder": True}, r"normalize_decoder=true"),
    ],
)
def test_bad_architecture_fields(
    architecture: str,
    cfg_change: dict[str, Any],
    message: str,
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
) -> None:
    """Architecture-specific cfg fields are validated."""
    cfg = saelens_cfg(architecture, **cfg_change)
    directory = write_saelens(tmp_path / "sae", cfg, saelens_tensors(architecture))
    with pytest.raises(InvalidArgumentError, match=message):
        load_sae(directory)


def _mutate(tensors: dict[str, torch.Tensor], change: str) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    if change == "missing":
        del tensors["b_enc"]
    elif change == "extra":
        tensors["b_gate"] = torch.zeros(40)
    elif change == "w_enc_width":
        tensors["W_enc"] = torch.zeros(12, 39)
    elif change == "inconsistent":
        tensors["b_dec"] = torch.zeros(11)
    elif change == "int":
        tensors["W_dec"] = tensors["W_dec"].to(torch.int32)
    elif change == "scaling":
        tensors["scaling_factor"] = torch.full((40,), 2.0)
    return tensors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"missing tensor\(s\) \['b_enc'\] for a relu SAE; expected exactly"),
        ("extra", r"unexpected tensor\(s\) \['b_gate'\]"),
        ("w_enc_width", r"W_enc has shape \[12, 39\] but d_in=12, d_sae=40 require \[12, 40\]"),
        ("inconsistent", r"b_dec has shape \[11\] but d_in=12, d_sae=40 require \[12\]"),
        ("int", r"W_dec has dtype torch.int32; expected a floating-point tensor"),
        ("scaling", r"scaling_factor that is not all ones"),
    ],
)
def test_bad_weights(
    change: str,
    message: str,
    tmp_path: Path,
    saelens_tensors: Any,
    saelens_cfg: Any,
    write_saelens: Any,
) -> None:
    """Missing/extra tensors, widths inconsistent with the cfg and int dtypes are refused."""
    directory = write_saelens(
        tmp_path / "sae", saelens_cfg("standard"), _mutate(saelens_tensors("standard"), change)
    )
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load_sae(directory)
    assert "sae_weights.safetensors" in str(info.value)


def test_missing_and_broken_files(
    tmp_path: Path, saelens_tensors: Any, saelens_cfg: Any, write_saelens: Any
) -> None:
    """Missing cfg/weights, bad JSON, truncated safetensors: errors name file and expectation."""
    directory = write_saelens(
        tmp_path / "sae", saelens_cfg("standard"), saelens_tensors("standard")
    )
    weights = directory / "sae_weights.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(
        InvalidArgumentError,
        match=r"sae_weights.safetensors: not a readable safetensors file, it may be truncated",
    ):
        load_sae(directory)
    weights.write_bytes(data[:5])
    with pytest.raises(InvalidArgumentError, match="may be truncated"):
        load_sae(directory)

    weights.unlink()
    with pytest.raises(
        InvalidArgumentError,
        match=r"sae_weights.safetensors: missing; expected a SAELens SAE directory",
    ):
        load_sae(directory)

    weights.write_bytes(data)
    (directory / "cfg.json").write_text("{not json")
    with pytest.raises(InvalidArgumentError, match=r"cfg.json: not valid JSON"):
        load_sae(directory)
    (directory / "cfg.json").write_text("[1, 2]")
    with pytest.raises(InvalidArgumentError, match=r"cfg.json: holds a JSON list"):
        load_sae(directory)

    (directory / "cfg.json").unlink()
    with pytest.raises(
        InvalidArgumentError,
        match=r"cfg.json: missing; expected a SAELens SAE directory holding cfg.json and sae_weigh",
    ):
        load_sae(directory)

    with pytest.raises(NotFoundError, match="no such"):
        load_sae(tmp_path / "absent")
    with pytest.raises(NotFoundError, match="no such directory"):
        load_saelens_sae(tmp_path / "absent")
