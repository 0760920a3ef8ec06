"""Losses for ``TdbClient.attribute``: what to attribute, as AttributeRequest oneof fields."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import common_pb2 as cpb
from tdb_client.tensors import from_numpy

TokensLike = str | int | Sequence[str | int]


def _tokens(t: TokensLike) -> cpb.Tokens:
    items = [t] if isinstance(t, (str, int)) else list(t)
    return cpb.Tokens(
        strings=[x for x in items if isinstance(x, str)],
        ids=[int(x) for x in items if not isinstance(x, str)],
    )


def logit_diff(
    target: TokensLike, distractor: TokensLike, position: int = -1
) -> tuple[str, apb.LogitDiffLoss]:
    """Mean target logit minus mean distractor logit (log p(target) / p(distractor))."""
    return "logit_diff", apb.LogitDiffLoss(
        target=_tokens(target), distractor=_tokens(distractor), position=position
    )


def log_prob(target: TokensLike, position: int = -1) -> tuple[str, apb.LogProbLoss]:
    """Log of the total probability of the targets."""
    return "log_prob", apb.LogProbLoss(target=_tokens(target), position=position)


def neuron(layer: int, index: int, position: int = -1) -> tuple[str, apb.NeuronTrace]:
    """Trace upstream from an MLP neuron's pre-activation."""
    return "neuron", apb.NeuronTrace(layer=layer, neuron=index, position=position)


def head(
    layer: int,
    index: int,
    query_position: int = -1,
    key_position: int | None = None,
    through: str = "qk",
) -> tuple[str, apb.HeadTrace]:
    """Trace upstream from an attention head through "q", "k", "qk" (a score) or "v" (its write)."""
    sides = {"q": apb.THROUGH_Q, "k": apb.THROUGH_K, "qk": apb.THROUGH_QK, "v": apb.THROUGH_V}
    msg = apb.HeadTrace(
        layer=layer, head=index, query_position=query_position, through=sides[through]
    )
    if key_position is not None:
        msg.key_position = key_position
    return "head", msg


def latent(sae: str, index: int, position: int = -1) -> tuple[str, apb.LatentTrace]:
    """Trace upstream from an SAE latent's pre-activation."""
    return "latent", apb.LatentTrace(sae=sae, latent=index, position=position)


def direction(
    site: str, vector: np.ndarray | Sequence[float], position: int = -1
) -> tuple[str, apb.DirectionLoss]:
    """The residual stream at ``site`` projected on ``vector``."""
    return "direction", apb.DirectionLoss(
        site=site, vector=from_numpy(np.asarray(vector, np.float32)), position=position
    )
