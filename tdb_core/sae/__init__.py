"""Sparse autoencoders: kinds, loaders, saver, metrics and training.

``SparseAutoencoder`` (``model.py``) is the one API the rest of the system uses; ``load_sae``
reads OpenAI ``sparse_autoencoder`` files and SAELens directories; ``save_sae`` writes SAELens
format; ``train_sae`` trains ReLU or TopK SAEs on a stream of activations.
"""

from tdb_core.sae.loading import load_sae
from tdb_core.sae.metrics import (
    CeLossResult,
    DensityHistogram,
    ce_loss_recovered,
    ce_loss_result,
    density_histogram,
    explained_variance,
    l0,
    mean_max_cosine,
)
from tdb_core.sae.model import (
    Architecture,
    GatedArch,
    GatedSae,
    InputNorm,
    InputStats,
    JumpReluArch,
    JumpReluSae,
    ReluArch,
    ReluSae,
    SaeConfig,
    SaeKind,
    SparseAutoencoder,
    SparseCode,
    TopKArch,
    TopKSae,
    build_sae,
    expected_tensor_shapes,
)
from tdb_core.sae.openai_format import load_openai_sae
from tdb_core.sae.saelens_format import load_saelens_sae, saelens_cfg, save_sae
from tdb_core.sae.train import (
    BDecInit,
    CheckpointMetrics,
    TrainConfig,
    TrainResult,
    geometric_median,
    train_sae,
)

__all__ = [
    "Architecture",
    "BDecInit",
    "CeLossResult",
    "CheckpointMetrics",
    "DensityHistogram",
    "GatedArch",
    "GatedSae",
    "InputNorm",
    "InputStats",
    "JumpReluArch",
    "JumpReluSae",
    "ReluArch",
    "ReluSae",
    "SaeConfig",
    "SaeKind",
    "SparseAutoencoder",
    "SparseCode",
    "TopKArch",
    "TopKSae",
    "TrainConfig",
    "TrainResult",
    "build_sae",
    "ce_loss_recovered",
    "ce_loss_result",
    "density_histogram",
    "expected_tensor_shapes",
    "explained_variance",
    "geometric_median",
    "l0",
    "load_openai_sae",
    "load_sae",
    "load_saelens_sae",
    "mean_max_cosine",
    "saelens_cfg",
    "save_sae",
    "train_sae",
]
