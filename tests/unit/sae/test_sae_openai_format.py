"""Loading OpenAI sparse_autoencoder files: formulas, the v5 LayerNorm, refusing pickled code."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.functional import linear, relu

from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.sae import InputNorm, SaeKind, load_openai_sae, load_sae


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 agreement to 1e-6."""
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def openai_reference(
    state: dict[str, Any], x: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, latents, recons) as OpenAI's Autoencoder computes them, in its own orientation."""
    info = {}
    if normalize:
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
        info = {"mu": mu, "std": std}
    pre = linear(x - state["pre_bias"], state["encoder.weight"], state["latent_bias"])
    if state.get("activation") == "TopK":
        k = state["activation_state_dict"]["k"]
        top = torch.topk(pre, k=k, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, top.indices, relu(top.values))
    else:
        latents = relu(pre)
    recons = linear(latents, state["decoder.weight"]) + state["pre_bias"]
    if normalize:
        recons = recons * info["std"] + info["mu"]
    return pre, latents, recons


def save(tmp_path: Path, state: dict[str, Any], name: str = "0.pt") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize("activation", [None, "ReLU"])
def test_relu_v1_v4_file(
    activation: str | None, tmp_path: Path, openai_state: Any, inputs: torch.Tensor
) -> None:
    """A v1/v4 ReLU file (activation key absent or "ReLU") loads without LayerNorm, exact math."""
    state = openai_state(activation)
    sae = load_sae(save(tmp_path, state), site="blocks.3.hook_mlp_out")
    assert sae.kind is SaeKind.RELU
    assert sae.input_norm is InputNorm.NONE
    assert sae.site == "blocks.3.hook_mlp_out"
    pre, z, recon = openai_reference(state, inputs, normalize=False)
    close(sae.encode_pre(inputs), pre)
    close(sae.encode(inputs), z)
    close(sae(inputs)[1], recon)
    close(sae.decoder_directions(), state["decoder.weight"].T)


def test_topk_v5_file_uses_layer_norm(
    tmp_path: Path, openai_state: Any, inputs: torch.Tensor
) -> None:
    """A v5 TopK file loads with the input LayerNorm; reconstruction is un-normalized."""
    state = openai_state("TopK", k=6)
    sae = load_sae(save(tmp_path, state))
    assert sae.kind is SaeKind.TOPK
    assert sae.input_norm is InputNorm.LAYER_NORM
    assert sae.site is None
    pre, z, recon = openai_reference(state, inputs, normalize=True)
    close(sae.encode_pre(inputs), pre)
    close(sae.encode(inputs), z)
    latents, reconstruction = sae(inputs)
    close(latents, z)
    close(reconstruction, recon)
    close(sae.decode(z, sae.input_stats(inputs)), recon)


def test_normalize_override(tmp_path: Path, openai_state: Any, inputs: torch.Tensor) -> None:
    """normalize=False loads a TopK file without LayerNorm (as OpenAI's train.py SAEs need)."""
    state = openai_state("TopK")
    sae = load_openai_sae(save(tmp_path, state), normalize=False)
    assert sae.input_norm is InputNorm.NONE
    close(sae(inputs)[1], openai_reference(state, inputs, normalize=False)[2])


def test_dtype_and_device_arguments(tmp_path: Path, openai_state: Any) -> None:
    """dtype casts every tensor; the loaded parameters need no gradients."""
    sae = load_sae(save(tmp_path, openai_state("ReLU")), dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in sae.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in sae.parameters())


_MARKER_CALLS: list[str] = []


def _plant_marker(path: str) -> str:
    """What the malicious pickle calls when loaded unsafely: leaves a file behind."""
    Path(path).write_text("pwned")
    _MARKER_CALLS.append(path)
    return "ReLU"


class _Payload:
    """An object whose unpickling runs ``_plant_marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_plant_marker, (str(self.marker),))


def test_pickled_code_is_refused_without_running(tmp_path: Path, openai_state: Any) -> None:
    """A file holding a pickled callable is refused and the callable never runs."""
    marker = tmp_path / "marker.txt"
    state = openai_state("ReLU")
    state["activation"] = _Payload(marker)
    path = save(tmp_path, state, "evil.pt")

    with pytest.raises(InvalidArgumentError, match=r"evil\.pt: refused to load.*_plant_marker"):
        load_sae(path)
    assert not marker.exists()

    # control: an unsafe load really would have executed the payload
    torch.load(path, weights_only=False)
    assert marker.exists()


def _bad_state(openai_state: Any, change: str) -> Any:
    state = openai_state("TopK")
    if change == "missing":
        del state["latent_bias"]
    elif change == "unknown":
        state["decoder.bias"] = torch.zeros(3)
    elif change == "shape":
        state["decoder.weight"] = torch.zeros(12, 41)
    elif change == "bias_shape":
        state["pre_bias"] = torch.zeros(13)
    elif change == "dtype":
        state["encoder.weight"] = torch.zeros(40, 12, dtype=torch.int64)
    elif change == "activation":
        state["activation"] = "Identity"
    elif change == "k":
        state["activation_state_dict"] = OrderedDict(postact_fn="ReLU")
    elif change == "postact":
        state["activation_state_dict"] = OrderedDict(k=4, postact_fn="Identity")
    elif change == "not_dict":
        return torch.zeros(3)
    elif change == "not_tensor":
        state["pre_bias"] = [0.0] * 12
    return state


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", r"missing key\(s\) \['latent_bias'\].*expected an OpenAI"),
        ("unknown", r"unknown key\(s\) \['decoder.bias'\]"),
        ("shape", r"decoder.weight has shape \[12, 41\].*requires \[12, 40\]"),
        ("bias_shape", r"pre_bias has shape \[13\].*requires \[12\]"),
        ("dtype", r"encoder.weight has dtype torch.int64; expected a floating-point"),
        ("activation", r"unsupported activation 'Identity'; supported: \['ReLU', 'TopK'\]"),
        ("k", r"needs an integer 'k'"),
        ("postact", r"postact_fn 'Identity' is not supported"),
        ("not_dict", r"holds a Tensor, not a dict"),
        ("not_tensor", r"pre_bias must be a tensor, got list"),
    ],
)
def test_bad_state_dicts(change: str, message: str, tmp_path: Path, openai_state: Any) -> None:
    """Each malformed state dict gives InvalidArgumentError naming the file and the problem."""
    path = save(tmp_path, _bad_state(openai_state, change), "bad.pt")
    with pytest.raises(InvalidArgumentError, match=message) as info:
        load_sae(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_truncated_file(keep: float, tmp_path: Path, openai_state: Any) -> None:
    """A truncated or empty .pt file is an InvalidArgumentError that says it may be truncated."""
    path = save(tmp_path, openai_state("ReLU"))
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:cut])
    with pytest.raises(InvalidArgumentError, match=r"0\.pt: not a readable torch.save file"):
        load_sae(path)


def test_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is NotFoundError."""
    with pytest.raises(NotFoundError, match="no such file"):
        load_sae(tmp_path / "nope.pt")
    with pytest.raises(NotFoundError, match="no such file"):
        load_openai_sae(tmp_path / "nope.pt")
