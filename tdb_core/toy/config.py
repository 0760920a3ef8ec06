"""The configuration of a toy-model training run (kept free of torch so the CLI parser is light)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tdb_core.toy import corpus

DEFAULT_VOCAB_SIZE = 2048


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so the weights it produces)."""

    # Model (GPT-2 defaults otherwise: gelu_new, LayerNorm with bias, tied unembedding).
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = DEFAULT_VOCAB_SIZE  # upper bound; BPE stops when no pair occurs twice
    # How the learned position embeddings start: "sinusoidal" (the original Transformer's table,
    # scaled to GPT-2's init std) or "random" (GPT-2's normal init). Either way they are trained.
    position_init: Literal["sinusoidal", "random"] = "sinusoidal"
    # Optimisation.
    steps: int = 3600
    batch_size: int = 64  # single documents per step (most of the run)
    long_batch_size: int = 16  # packed n_positions-token windows per step (the final part)
    offset_fraction: float = 0.1  # share of single documents placed at a random position offset
    long_context_fraction: float = 0.0  # share of the steps, at the end, on packed windows
    lr: float = 8e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1  # on matrices only, not on LayerNorm parameters or biases
    grad_clip: float = 1.0
    seed: int = 1
    threads: int = 1  # torch CPU threads (1: the same numbers on any machine, and fast enough)
    device: str = "cpu"  # the shipped model is trained on CPU; "cuda" works too (other numerics)
    # Data.
    tokenizer_docs: int = 20_000  # documents of the training split the tokenizer is trained on
    mix: corpus.Mix = field(default_factory=corpus.Mix)
    # Monitoring.
    eval_every: int = 300  # steps between held-out evaluations during training (0: never)
    eval_n: int = 100  # examples per task in those evaluations
    final_eval_n: int = 500  # examples per task in the final evaluation
    max_minutes: float | None = None  # stop early (and say so) when the loop runs this long
