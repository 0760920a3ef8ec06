"""Load an SAE from a path in either supported format.

A directory (or its ``cfg.json`` / ``sae_weights.safetensors``) is read as SAELens format; any
other file as an OpenAI ``sparse_autoencoder`` state dict.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tdb_core.errors import NotFoundError
from tdb_core.sae.model import SparseAutoencoder
from tdb_core.sae.openai_format import load_openai_sae
from tdb_core.sae.saelens_format import CFG_FILENAME, WEIGHTS_FILENAME, load_saelens_sae


def load_sae(
    path: str | Path,
    *,
    site: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> SparseAutoencoder:
    """Load the SAE at ``path``, detecting its format.

    Args:
        path: a SAELens directory (or a file inside it), or an OpenAI ``.pt`` file.
        site: hook name the SAE reads; overrides the SAELens cfg's ``hook_name``; required
            in practice for OpenAI files, which do not record it.
        dtype: cast the SAE to this dtype (default: as stored / declared).
        device: where to put the SAE.

    Raises:
        NotFoundError: nothing exists at ``path``.
        InvalidArgumentError: the files are malformed, inconsistent or unsupported.
    """
    path = Path(path)
    if not path.exists():
        raise NotFoundError(
            f"{path}: no such file or directory; expected a SAELens SAE directory "
            f"({CFG_FILENAME} + {WEIGHTS_FILENAME}) or an OpenAI sparse_autoencoder .pt file"
        )
    if path.is_file() and path.name in (CFG_FILENAME, WEIGHTS_FILENAME):
        path = path.parent
    if path.is_dir():
        return load_saelens_sae(path, site=site, dtype=dtype, device=device)
    return load_openai_sae(path, site=site, dtype=dtype, device=device)
