"""Fixtures for the SAE tests: random SAE tensors per kind and writers for on-disk formats."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

D_IN = 12
D_SAE = 40


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: these tensors are tiny, and on a shared 2-core machine
    two threads made the same tests 2-10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_saelens_tensors(
    architecture: str, seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE
) -> dict[str, torch.Tensor]:
    """SAELens-named fp32 tensors with every bias non-zero, so a forgotten term shows."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.5,
    }
    if architecture == "gated":
        tensors["b_gate"] = torch.randn(d_sae, generator=g) * 0.3
        tensors["r_mag"] = torch.randn(d_sae, generator=g) * 0.3
        tensors["b_mag"] = torch.randn(d_sae, generator=g) * 0.3
    else:
        tensors["b_enc"] = torch.randn(d_sae, generator=g) * 0.3
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=g) * 0.6
    return tensors


def saelens_cfg_dict(architecture: str, **overrides: Any) -> dict[str, Any]:
    """A v6 SAELens cfg.json body for the test widths."""
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "tiny-gpt2",
            "hook_name": "blocks.1.hook_resid_pre",
            "hook_head_index": None,
            "sae_lens_version": "6.5.0",
        },
    }
    if architecture == "topk":
        cfg["k"] = 5
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg.update(overrides)
    return cfg


def write_saelens_dir(
    directory: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> Path:
    """Write cfg.json + sae_weights.safetensors as SAELens does."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(directory / "sae_weights.safetensors")
    )
    return directory


def openai_state_dict(
    activation: str | None, seed: int = 0, k: int = 5, d_in: int = D_IN, d_sae: int = D_SAE
) -> dict[str, Any]:
    """A state dict shaped like OpenAI's ``Autoencoder.state_dict()`` (biases non-zero)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {
        "pre_bias": torch.randn(d_in, generator=g) * 0.5,
        "latent_bias": torch.randn(d_sae, generator=g) * 0.3,
        "stats_last_nonzero": torch.randint(0, 100, (d_sae,), generator=g),
        "latents_activation_frequency": torch.rand(d_sae, generator=g),
        "latents_mean_square": torch.rand(d_sae, generator=g),
        "encoder.weight": torch.randn(d_sae, d_in, generator=g) / d_in**0.5,
        "decoder.weight": torch.randn(d_in, d_sae, generator=g) / d_sae**0.5,
    }
    if activation == "ReLU":
        state["activation"] = "ReLU"
        state["activation_state_dict"] = OrderedDict()
    elif activation == "TopK":
        state["activation"] = "TopK"
        state["activation_state_dict"] = OrderedDict(k=k, postact_fn="ReLU")
    return state


@pytest.fixture
def inputs() -> torch.Tensor:
    """A batch of activations [3, 7, D_IN] with a non-zero mean and non-unit scale."""
    g = torch.Generator().manual_seed(123)
    return torch.randn(3, 7, D_IN, generator=g) * 1.7 + 0.4


@pytest.fixture
def saelens_tensors() -> Any:
    """Factory: ``(architecture, seed=0, d_in=D_IN, d_sae=D_SAE) -> dict`` of SAELens tensors."""
    return random_saelens_tensors


@pytest.fixture
def saelens_cfg() -> Any:
    """Factory: ``(architecture, **overrides) -> dict``, a v6 SAELens cfg.json body."""
    return saelens_cfg_dict


@pytest.fixture
def write_saelens() -> Any:
    """Writer: ``(directory, cfg, tensors) -> directory`` in SAELens layout."""
    return write_saelens_dir


@pytest.fixture
def openai_state() -> Any:
    """Factory: ``(activation, seed=0, k=5, ...) -> dict`` shaped like OpenAI's state dict."""
    return openai_state_dict
