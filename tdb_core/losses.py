"""The losses a request can differentiate: what Attribute ranks nodes for, and what Forward and
Ablate take gradients of (data only; ``tdb_core.ops.attribute`` documents their meanings)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitDiffLoss:
    """Mean logit of the targets minus mean logit of the distractors at a position."""

    target_ids: tuple[int, ...]
    distractor_ids: tuple[int, ...]
    position: int = -1


@dataclass(frozen=True)
class LogProbLoss:
    """Log of the total probability of the target tokens at a position."""

    target_ids: tuple[int, ...]
    position: int = -1


@dataclass(frozen=True)
class NeuronTrace:
    """Trace upstream from an MLP neuron's pre-activation (``mlp.hook_pre``) at a position."""

    layer: int
    neuron: int
    position: int = -1


class Through(enum.Enum):
    Q = "q"  # the query side of one attention score
    K = "k"  # the key side of one attention score
    QK = "qk"  # both sides of one attention score
    V = "v"  # the value path of the head's write at the query position


@dataclass(frozen=True)
class HeadTrace:
    """Trace upstream from an attention head.

    Q/K/QK: the pre-softmax score ``attn_scores[head, q, k]`` through the query, the key or both.
    V: the head's write at the query position along its own (fixed) direction, through the values
    only (the pattern is held constant); ``key_position`` restricts it to one key.
    """

    layer: int
    head: int
    query_position: int = -1
    key_position: int | None = None
    through: Through = Through.QK


@dataclass(frozen=True)
class LatentTrace:
    """Trace upstream from an SAE latent's pre-activation at a position."""

    sae: str
    latent: int
    position: int = -1


@dataclass(frozen=True)
class DirectionLoss:
    """The residual stream at a site and position, projected on a direction ``[d_model]``."""

    site: str
    vector: torch.Tensor
    position: int = -1


Loss = LogitDiffLoss | LogProbLoss | NeuronTrace | HeadTrace | LatentTrace | DirectionLoss
