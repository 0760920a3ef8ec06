"""The embedded toy model: a small GPT-2 trained here on text whose mechanisms are known.

``TOY_MODEL_DIR`` is an ordinary Hugging Face ``save_pretrained`` directory (config.json,
model.safetensors, tokenizer files) shipped inside the package; ``tdb serve`` with no model flag
serves it as ``TOY_MODEL_NAME``. The corpus, tokenizer, training and evaluation code that produced
it live in the submodules; importing this package loads none of them (no torch import).
"""

from __future__ import annotations

from pathlib import Path

TOY_MODEL_NAME = "toy-gpt2"
TOY_MODEL_DIR: Path = Path(__file__).resolve().parent / "toy_gpt2"
TOY_SAE_ID = "toy-res"
TOY_SAE_DIR: Path = Path(__file__).resolve().parent / "toy_sae"
TOY_EXPLANATIONS: Path = Path(__file__).resolve().parent / "explanations.jsonl"


def toy_model_dir() -> Path:
    """The directory of the shipped toy model (load it with ``from_pretrained``)."""
    return TOY_MODEL_DIR


__all__ = [
    "TOY_EXPLANATIONS",
    "TOY_MODEL_DIR",
    "TOY_MODEL_NAME",
    "TOY_SAE_DIR",
    "TOY_SAE_ID",
    "toy_model_dir",
]
