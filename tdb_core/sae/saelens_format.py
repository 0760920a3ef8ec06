"""Read and write SAEs in SAELens's on-disk format (our own format too).

A directory with ``cfg.json`` and ``sae_weights.safetensors``. Tensors: ``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, plus ``b_enc [d_sae]`` (standard, topk, jumprelu),
``threshold [d_sae]`` (jumprelu; older files store ``log_threshold``, read as exp of it) and
``b_gate``, ``r_mag``, ``b_mag [d_sae]`` (gated, which has no ``b_enc``).

cfg fields that change the math and how they are handled:

    architecture            standard | topk | jumprelu | gated (others refused). Pre-6.0 files
                            may omit it (standard) or say activation_fn "topk" with
                            activation_fn_kwargs.k (read as topk).
    d_in, d_sae             must match every tensor's shape.
    dtype                   float32 | float16 | bfloat16 | float64 (with or without "torch.");
                            tensors are cast to it (or to the caller's dtype).
    apply_b_dec_to_input    subtract b_dec from the (normalized) input before encoding.
    normalize_activations   none | layer_norm | constant_norm_rescale; expected_average_only_in
                            is refused: its scale factor is not stored in the files.
    reshape_activations     none | hook_z (flatten [n_heads, d_head] into d_in).
    k, rescale_acts_by_decoder_norm
                            topk only.
    activation_fn(_str)     must be relu (or topk for topk SAEs).
    hook_head_index         must be null (per-head SAEs are refused).
    finetuning_scaling_factor / scaling_factor tensor
                            refused unless the factor is all ones (then dropped, as SAELens does).
    normalize_decoder       (a gated variant) refused when true.
    hook_name / hook_point, model_name
                            from ``metadata`` (v6), ``meta`` or the top level (pre-6.0).

Everything else (training settings, device, dataset, neuronpedia id) does not change the math and
is not read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.sae.model import (
    GatedArch,
    InputNorm,
    JumpReluArch,
    ReluArch,
    SaeConfig,
    SaeKind,
    SparseAutoencoder,
    TopKArch,
    build_sae,
    kind_of,
)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
WRITTEN_FORMAT_VERSION = "6.0.0"
"""The SAELens cfg schema we write (``metadata.sae_lens_version``), so SAELens reads it as v6."""

SAELENS_ARCHITECTURES: dict[str, SaeKind] = {
    "standard": SaeKind.RELU,
    "topk": SaeKind.TOPK,
    "jumprelu": SaeKind.JUMPRELU,
    "gated": SaeKind.GATED,
}
KIND_TO_SAELENS = {kind: name for name, kind in SAELENS_ARCHITECTURES.items()}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "double": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}

NORMALIZATIONS = {
    "none": InputNorm.NONE,
    "layer_norm": InputNorm.LAYER_NORM,
    "constant_norm_rescale": InputNorm.CONSTANT_NORM_RESCALE,
}

EXPECTED_DIR = f"a SAELens SAE directory holding {CFG_FILENAME} and {WEIGHTS_FILENAME}"


def parse_dtype(name: object, where: str) -> torch.dtype:
    """A SAELens ``dtype`` string ("float32", "torch.bfloat16", ...) as a torch dtype."""
    if isinstance(name, str):
        key = name.removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    raise InvalidArgumentError(
        f"{where}: unsupported dtype {name!r}; allowed: {sorted(set(DTYPE_NAMES.values()))} "
        "(optionally prefixed with 'torch.')"
    )


def _get(cfg: Mapping[str, Any], meta: Mapping[str, Any], *names: str) -> Any:
    """First non-None value of ``names`` in the metadata block, then the top level."""
    for source in (meta, cfg):
        for name in names:
            if source.get(name) is not None:
                return source[name]
    return None


def _int_field(cfg: Mapping[str, Any], name: str, where: str) -> int:
    value = cfg.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{where}: {name} must be a positive integer, got {value!r}")
    return value


def _bool_field(cfg: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = cfg.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def parse_saelens_cfg(
    cfg: Mapping[str, Any], where: str, site: str | None = None
) -> tuple[SaeConfig, torch.dtype]:
    """Turn a SAELens ``cfg.json`` dict into our ``SaeConfig`` and the dtype it declares.

    ``site`` overrides the cfg's hook name. Refuses settings that change the math and that we
    do not implement, with a message naming ``where``.
    """
    meta_block = cfg.get("metadata", cfg.get("meta"))
    meta: Mapping[str, Any] = meta_block if isinstance(meta_block, Mapping) else {}

    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    fn_kwargs = cfg.get("activation_fn_kwargs") or {}
    architecture = cfg.get("architecture")
    if architecture is None:
        architecture = "standard"
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"  # pre-6.0 SAELens: a standard SAE with a topk activation_fn
    if architecture not in SAELENS_ARCHITECTURES:
        raise InvalidArgumentError(
            f"{where}: unsupported architecture {architecture!r}; supported: "
            f"{list(SAELENS_ARCHITECTURES)}"
        )
    allowed_fns = (None, "relu", "topk") if architecture == "topk" else (None, "relu")
    if activation_fn not in allowed_fns:
        raise InvalidArgumentError(
            f"{where}: activation_fn {activation_fn!r} is not supported for a {architecture} "
            f"SAE; allowed: {[f for f in allowed_fns if f is not None]}"
        )

    d_in = _int_field(cfg, "d_in", where)
    d_sae = _int_field(cfg, "d_sae", where)
    dtype = parse_dtype(cfg.get("dtype", "float32"), where)
    apply_b_dec = _bool_field(cfg, "apply_b_dec_to_input", True, where)

    norm_name = cfg.get("normalize_activations")
    if norm_name is None or norm_name is False:
        norm_name = "none"
    if norm_name is True or norm_name == "expected_average_only_in":
        raise InvalidArgumentError(
            f"{where}: normalize_activations='expected_average_only_in' needs a dataset-"
            "dependent scale factor that SAE files do not store; fold it into the weights "
            "(W_enc *= s, W_dec /= s, b_dec /= s) and set normalize_activations to 'none'. "
            f"Supported: {list(NORMALIZATIONS)}"
        )
    if norm_name not in NORMALIZATIONS:
        raise InvalidArgumentError(
            f"{where}: unsupported normalize_activations {norm_name!r}; supported: "
            f"{list(NORMALIZATIONS)}"
        )

    reshape = cfg.get("reshape_activations") or "none"
    if reshape not in ("none", "hook_z"):
        raise InvalidArgumentError(
            f"{where}: unsupported reshape_activations {reshape!r}; supported: ['none', 'hook_z']"
        )
    head_index = _get(cfg, meta, "hook_head_index", "hook_point_head_index")
    if head_index is not None:
        raise InvalidArgumentError(
            f"{where}: hook_head_index={head_index!r} (an SAE on one attention head) is not "
            "supported; only SAEs that read a whole site (hook_head_index null) are"
        )
    if cfg.get("finetuning_scaling_factor") is True:
        raise InvalidArgumentError(
            f"{where}: finetuning_scaling_factor=true is not supported; fold the scaling factor "
            "into W_dec and set it to false"
        )
    if cfg.get("normalize_decoder") is True:
        raise InvalidArgumentError(
            f"{where}: normalize_decoder=true (a gated variant) is not supported; fold the "
            "decoder norms into the encoder and set it to false"
        )

    arch: ReluArch | TopKArch | JumpReluArch | GatedArch
    if architecture == "topk":
        k = cfg.get("k", fn_kwargs.get("k") if isinstance(fn_kwargs, Mapping) else None)
        if not isinstance(k, int) or isinstance(k, bool):
            raise InvalidArgumentError(
                f"{where}: a topk SAE needs an integer k (cfg 'k'), got {k!r}"
            )
        rescale = _bool_field(cfg, "rescale_acts_by_decoder_norm", False, where)
        arch = TopKArch(k=k, rescale_acts_by_decoder_norm=rescale)
    elif architecture == "jumprelu":
        arch = JumpReluArch()
    elif architecture == "gated":
        arch = GatedArch()
    else:
        arch = ReluArch()

    hook_name = _get(cfg, meta, "hook_name", "hook_point")
    model_name = _get(cfg, meta, "model_name")
    if hook_name is not None and not isinstance(hook_name, str):
        raise InvalidArgumentError(f"{where}: hook_name must be a string, got {hook_name!r}")
    if model_name is not None and not isinstance(model_name, str):
        raise InvalidArgumentError(f"{where}: model_name must be a string, got {model_name!r}")
    config = SaeConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture=arch,
        apply_b_dec_to_input=apply_b_dec,
        input_norm=NORMALIZATIONS[norm_name],
        flatten_heads=reshape == "hook_z",
        site=site if site is not None else hook_name,
        model_name=model_name,
    )
    return config, dtype


def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"{path}: cannot read the SAE config ({e})") from None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(
            f"{path}: not valid JSON ({e}); expected the SAELens config object"
        ) from None
    if not isinstance(cfg, dict):
        raise InvalidArgumentError(
            f"{path}: holds a JSON {type(cfg).__name__}; expected the SAELens config object"
        )
    return cfg


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                tensors[name] = f.get_tensor(name)
        return tensors
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InvalidArgumentError(
            f"{path}: not a readable safetensors file, it may be truncated or corrupt ({first}); "
            "expected the SAE's tensors (W_enc, W_dec, b_dec, ...) in safetensors format"
        ) from None


def load_saelens_sae(
    directory: str | Path,
    *,
    site: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> SparseAutoencoder:
    """Load a SAELens-format SAE directory (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        directory: the SAE's directory.
        site: the hook name the SAE reads; default: the cfg's ``hook_name``.
        dtype: cast tensors to this dtype (default: the cfg's ``dtype``).
        device: where to put the SAE.

    Raises:
        NotFoundError: the directory does not exist.
        InvalidArgumentError: a file is missing, unreadable, truncated or inconsistent (tensor
            names, shapes vs d_in/d_sae, dtypes) or the cfg asks for unsupported math.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFoundError(f"{directory}: no such directory; expected {EXPECTED_DIR}")
    cfg_path = directory / CFG_FILENAME
    weights_path = directory / WEIGHTS_FILENAME
    if not cfg_path.is_file():
        raise InvalidArgumentError(f"{cfg_path}: missing; expected {EXPECTED_DIR}")
    if not weights_path.is_file():
        raise InvalidArgumentError(f"{weights_path}: missing; expected {EXPECTED_DIR}")

    config, cfg_dtype = parse_saelens_cfg(_read_cfg(cfg_path), str(cfg_path), site)
    tensors = _read_weights(weights_path)
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise InvalidArgumentError(
                f"{weights_path}: {name} has dtype {tensor.dtype}; expected a floating-point "
                "tensor (float32, float16, bfloat16 or float64)"
            )

    scaling = tensors.pop("scaling_factor", None)
    if scaling is not None and not torch.all(scaling == 1):
        raise InvalidArgumentError(
            f"{weights_path}: holds a scaling_factor that is not all ones (a finetuning scale); "
            "this is not supported: fold it into W_dec and drop the tensor"
        )
    if isinstance(config.architecture, JumpReluArch) and "log_threshold" in tensors:
        if "threshold" in tensors:
            raise InvalidArgumentError(
                f"{weights_path}: holds both threshold and log_threshold; expected one of them"
            )
        tensors["threshold"] = tensors.pop("log_threshold").exp()

    target = dtype if dtype is not None else cfg_dtype
    tensors = {name: t.to(target) for name, t in tensors.items()}
    return build_sae(config, tensors, where=str(weights_path), copy=False).to(device)


def saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """The ``cfg.json`` dict (SAELens v6 schema) that describes ``sae``."""
    config = sae.config
    cfg: dict[str, Any] = {
        "architecture": KIND_TO_SAELENS[kind_of(config.architecture)],
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": DTYPE_NAMES[sae.dtype],
        "device": "cpu",
        "apply_b_dec_to_input": config.apply_b_dec_to_input,
        "normalize_activations": config.input_norm.value,
        "reshape_activations": "hook_z" if config.flatten_heads else "none",
    }
    if isinstance(config.architecture, TopKArch):
        cfg["k"] = config.architecture.k
        cfg["rescale_acts_by_decoder_norm"] = config.architecture.rescale_acts_by_decoder_norm
    cfg["metadata"] = {
        "model_name": config.model_name,
        "hook_name": config.site,
        "hook_head_index": None,
        "sae_lens_version": WRITTEN_FORMAT_VERSION,
    }
    return cfg


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_sae(sae: SparseAutoencoder, directory: str | Path) -> Path:
    """Write ``sae`` as a SAELens-format directory; returns the directory.

    Writes ``cfg.json`` (v6 schema) and ``sae_weights.safetensors`` (tensors in the SAE's
    dtype, moved to CPU). Files are replaced atomically; the directory is created if needed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().cpu() for name, t in sae.named_tensors().items()}
    cfg_text = json.dumps(saelens_cfg(sae), indent=2) + "\n"

    def write_weights(tmp: str) -> None:
        save_file(tensors, tmp, metadata={"format": "pt"})

    def write_cfg(tmp: str) -> None:
        Path(tmp).write_text(cfg_text, encoding="utf-8")

    _atomic_write(directory / WEIGHTS_FILENAME, write_weights)
    _atomic_write(directory / CFG_FILENAME, write_cfg)
    return directory
