"""Load SAEs saved by OpenAI's ``sparse_autoencoder`` package (the files TDB uses).

One file per SAE: a ``torch.save``d plain dict (``Autoencoder.state_dict()``) with

    pre_bias        [n_inputs]              -> b_dec
    encoder.weight  [n_latents, n_inputs]   -> W_enc = encoder.weight.T
    latent_bias     [n_latents]             -> b_enc
    decoder.weight  [n_inputs, n_latents]   -> W_dec = decoder.weight.T
    activation              "ReLU" (v1/v4; the default when absent) or "TopK" (v5)
    activation_state_dict   {} for ReLU; {"k": int, "postact_fn": "ReLU"} for TopK
    stats_last_nonzero, latents_activation_frequency, latents_mean_square
                            training statistics, ignored

OpenAI computes ``latents = activation(encoder(x - pre_bias) + latent_bias)`` and
``recons = decoder(latents) + pre_bias``; with ``normalize`` the input first goes through a
per-row LayerNorm (mean, unbiased std, eps 1e-5) and the reconstruction is mapped back with that
row's std and mean. The files store no ``normalize`` flag: OpenAI's ``from_state_dict`` turns it on
exactly when the activation is TopK (the v5 family), and so do we unless told otherwise.

Files are read with ``torch.load(weights_only=True)``: a file that holds any pickled object other
than tensors, strings, numbers and dicts is refused without running it.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.sae.model import (
    InputNorm,
    ReluArch,
    SaeConfig,
    SparseAutoencoder,
    TopKArch,
    build_sae,
)

REQUIRED_KEYS = ("pre_bias", "encoder.weight", "latent_bias", "decoder.weight")
"""Tensors every OpenAI autoencoder state dict holds."""

IGNORED_KEYS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")
"""Training statistics OpenAI saves alongside the weights; they do not change the math."""

ACTIVATION_KEYS = ("activation", "activation_state_dict")

SUPPORTED_ACTIVATIONS = ("ReLU", "TopK")

EXPECTED = (
    "an OpenAI sparse_autoencoder state dict (torch.save of a dict with pre_bias, encoder.weight, "
    "latent_bias, decoder.weight and optionally activation / activation_state_dict)"
)


#: How much larger than its file a torch.save archive may unpack (torch.save stores its entries
#: uncompressed; a compressed archive that expands far beyond its size is refused unread).
MAX_EXPANSION = 4
EXPANSION_SLACK = 2**20


def _check_expansion(path: Path) -> None:
    """Refuse, before reading any tensor, a zip archive whose entries unpack to more than
    :data:`MAX_EXPANSION` times its size (a 0.39 MB file expanding to +381 MB)."""
    try:
        if not zipfile.is_zipfile(path):
            return  # legacy torch.save files are not archives; torch.load reads them as stored
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile):
        return  # torch.load reports the unreadable file with its own words
    size = path.stat().st_size
    if unpacked > MAX_EXPANSION * size + EXPANSION_SLACK:
        raise InvalidArgumentError(
            f"{path}: refused to load: the archive unpacks to {unpacked / 2**20:.1f} MiB from "
            f"{size / 2**20:.2f} MiB (compressed entries); torch.save files store their tensors "
            "uncompressed"
        )


def _read_state_dict(path: Path) -> Mapping[str, object]:
    """``torch.load`` without executing pickled code, with errors that name the file."""
    _check_expansion(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        marker = "Unsupported global:"
        if marker in text:
            detail = text[text.index(marker) :].splitlines()[0]
            detail = detail.split(" was not an allowed global")[0]
            raise InvalidArgumentError(
                f"{path}: refused to load: the file contains a pickled object that is not a "
                f"tensor, string, number or dict ({detail}), and loading it would execute code. "
                f"Expected {EXPECTED}."
            ) from None
        raise InvalidArgumentError(
            f"{path}: not a readable torch.save file ({text.splitlines()[0][:200]}); "
            f"expected {EXPECTED}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InvalidArgumentError(
            f"{path}: not a readable torch.save file, it may be truncated or corrupt ({first}); "
            f"expected {EXPECTED}"
        ) from None
    if not isinstance(obj, Mapping):
        raise InvalidArgumentError(
            f"{path}: the file holds a {type(obj).__name__}, not a dict; expected {EXPECTED}"
        )
    return obj


def _activation(state: Mapping[str, object], path: Path) -> ReluArch | TopKArch:
    """The architecture named by ``activation`` / ``activation_state_dict``."""
    name = state.get("activation", "ReLU")
    act_state = state.get("activation_state_dict", {})
    if not isinstance(name, str) or name not in SUPPORTED_ACTIVATIONS:
        raise InvalidArgumentError(
            f"{path}: unsupported activation {name!r}; supported: {list(SUPPORTED_ACTIVATIONS)}"
        )
    if not isinstance(act_state, Mapping):
        raise InvalidArgumentError(
            f"{path}: activation_state_dict must be a dict, got {type(act_state).__name__}"
        )
    if name == "ReLU":
        if len(act_state) != 0:
            raise InvalidArgumentError(
                f"{path}: a ReLU activation has no state, but activation_state_dict holds "
                f"{sorted(act_state)}"
            )
        return ReluArch()
    k = act_state.get("k")
    postact = act_state.get("postact_fn")
    if not isinstance(k, int) or isinstance(k, bool):
        raise InvalidArgumentError(
            f"{path}: TopK activation_state_dict needs an integer 'k', got {k!r}"
        )
    if postact != "ReLU":
        raise InvalidArgumentError(
            f"{path}: TopK postact_fn {postact!r} is not supported; supported: 'ReLU'"
        )
    unknown = sorted(set(act_state) - {"k", "postact_fn"})
    if unknown:
        raise InvalidArgumentError(
            f"{path}: TopK activation_state_dict has unknown entries {unknown}; expected "
            "exactly 'k' and 'postact_fn'"
        )
    return TopKArch(k=k)


def _tensor(state: Mapping[str, object], key: str, ndim: int, path: Path) -> torch.Tensor:
    value = state[key]
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentError(f"{path}: {key} must be a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise InvalidArgumentError(
            f"{path}: {key} has dtype {value.dtype}; expected a floating-point tensor "
            "(float32, float16, bfloat16 or float64)"
        )
    if value.ndim != ndim:
        raise InvalidArgumentError(
            f"{path}: {key} has shape {list(value.shape)}; expected a {ndim}-d tensor"
        )
    return value


def load_openai_sae(
    path: str | Path,
    *,
    site: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    normalize: bool | None = None,
) -> SparseAutoencoder:
    """Load an OpenAI ``sparse_autoencoder`` file (v1/v4 ReLU or v5 TopK).

    Args:
        path: the ``.pt`` file.
        site: the hook name the SAE reads; the files do not record it.
        dtype: cast the tensors to this dtype (default: the file's dtype).
        device: where to put the SAE.
        normalize: force the input LayerNorm on or off; default follows OpenAI's rule
            (on exactly for TopK files).

    Raises:
        NotFoundError: the file does not exist.
        InvalidArgumentError: the file is unreadable, holds pickled code, misses keys, has
            unknown keys, inconsistent shapes, non-float tensors or an unsupported activation.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; expected {EXPECTED}")
    state = _read_state_dict(path)

    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InvalidArgumentError(f"{path}: missing key(s) {missing}; expected {EXPECTED}")
    unknown = sorted(
        str(k) for k in state if k not in REQUIRED_KEYS + IGNORED_KEYS + ACTIVATION_KEYS
    )
    if unknown:
        raise InvalidArgumentError(
            f"{path}: unknown key(s) {unknown}; expected only "
            f"{list(REQUIRED_KEYS + ACTIVATION_KEYS + IGNORED_KEYS)}"
        )

    encoder = _tensor(state, "encoder.weight", 2, path)  # [n_latents, n_inputs]
    decoder = _tensor(state, "decoder.weight", 2, path)  # [n_inputs, n_latents]
    pre_bias = _tensor(state, "pre_bias", 1, path)  # [n_inputs]
    latent_bias = _tensor(state, "latent_bias", 1, path)  # [n_latents]
    n_latents, n_inputs = encoder.shape
    expected_shapes = {
        "decoder.weight": (decoder, (n_inputs, n_latents)),
        "pre_bias": (pre_bias, (n_inputs,)),
        "latent_bias": (latent_bias, (n_latents,)),
    }
    for key, (tensor, shape) in expected_shapes.items():
        if tuple(tensor.shape) != shape:
            raise InvalidArgumentError(
                f"{path}: {key} has shape {list(tensor.shape)} but encoder.weight "
                f"[n_latents={n_latents}, n_inputs={n_inputs}] requires {list(shape)}"
            )

    arch = _activation(state, path)
    use_norm = isinstance(arch, TopKArch) if normalize is None else normalize
    config = SaeConfig(
        d_in=n_inputs,
        d_sae=n_latents,
        architecture=arch,
        apply_b_dec_to_input=True,
        input_norm=InputNorm.LAYER_NORM if use_norm else InputNorm.NONE,
        site=site,
    )
    target = dtype if dtype is not None else encoder.dtype
    tensors = {
        "W_enc": encoder.T.contiguous().to(target),  # [n_inputs, n_latents]
        "b_enc": latent_bias.to(target),  # [n_latents]
        "W_dec": decoder.T.contiguous().to(target),  # [n_latents, n_inputs]
        "b_dec": pre_bias.to(target),  # [n_inputs]
    }
    return build_sae(config, tensors, where=str(path), copy=False).to(device)
