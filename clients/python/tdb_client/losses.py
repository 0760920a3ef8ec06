"""Losses for ``TdbClient.attribute``: what to attribute, as typed values.

Each builder returns a frozen dataclass; ``.to_pb()`` gives its ``tdb.v1`` message and ``.field``
the ``AttributeRequest`` oneof field it fills. ``TdbClient.attribute(loss=...)`` takes these, or a
raw message (``tdb.v1.attribution_pb2.NeuronTrace``, ...) for power users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from google.protobuf.message import Message

from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import common_pb2 as cpb
from tdb_client.tensors import from_numpy

TokensLike = str | int | Sequence[str | int]
Tokens = tuple[str | int, ...]


def _items(t: TokensLike) -> Tokens:
    return (t,) if isinstance(t, (str, int)) else tuple(t)


def _tokens(items: Tokens) -> cpb.Tokens:
    return cpb.Tokens(
        strings=[x for x in items if isinstance(x, str)],
        ids=[int(x) for x in items if not isinstance(x, str)],
    )


@dataclass(frozen=True)
class LogitDiff:
    """Mean target logit minus mean distractor logit (log p(target) / p(distractor))."""

    field: ClassVar[str] = "logit_diff"
    target: Tokens
    distractor: Tokens
    position: int = -1

    def to_pb(self) -> apb.LogitDiffLoss:
        return apb.LogitDiffLoss(
            target=_tokens(self.target), distractor=_tokens(self.distractor), position=self.position
        )


@dataclass(frozen=True)
class LogProb:
    """Log of the total probability of the targets."""

    field: ClassVar[str] = "log_prob"
    target: Tokens
    position: int = -1

    def to_pb(self) -> apb.LogProbLoss:
        return apb.LogProbLoss(target=_tokens(self.target), position=self.position)


@dataclass(frozen=True)
class NeuronTrace:
    """An MLP neuron's pre-activation at a position (trace upstream from it)."""

    field: ClassVar[str] = "neuron"
    layer: int
    neuron: int
    position: int = -1

    def to_pb(self) -> apb.NeuronTrace:
        return apb.NeuronTrace(layer=self.layer, neuron=self.neuron, position=self.position)


_THROUGH = {"q": apb.THROUGH_Q, "k": apb.THROUGH_K, "qk": apb.THROUGH_QK, "v": apb.THROUGH_V}


@dataclass(frozen=True)
class HeadTrace:
    """An attention head's score through "q", "k" or "qk", or its write through "v"."""

    field: ClassVar[str] = "head"
    layer: int
    head: int
    query_position: int = -1
    key_position: int | None = None
    through: str = "qk"

    def __post_init__(self) -> None:
        if self.through not in _THROUGH:
            raise ValueError(f"through must be one of {', '.join(_THROUGH)}, got {self.through!r}")

    def to_pb(self) -> apb.HeadTrace:
        msg = apb.HeadTrace(
            layer=self.layer,
            head=self.head,
            query_position=self.query_position,
            through=_THROUGH[self.through],
        )
        if self.key_position is not None:
            msg.key_position = self.key_position
        return msg


@dataclass(frozen=True)
class LatentTrace:
    """An SAE latent's pre-activation at a position."""

    field: ClassVar[str] = "latent"
    sae: str
    latent: int
    position: int = -1

    def to_pb(self) -> apb.LatentTrace:
        return apb.LatentTrace(sae=self.sae, latent=self.latent, position=self.position)


@dataclass(frozen=True, eq=False)
class Direction:
    """The residual stream at a site (hook_resid_pre/mid/post), projected on a vector."""

    field: ClassVar[str] = "direction"
    site: str
    vector: np.ndarray
    position: int = -1

    def to_pb(self) -> apb.DirectionLoss:
        return apb.DirectionLoss(
            site=self.site,
            vector=from_numpy(np.asarray(self.vector, np.float32)),
            position=self.position,
        )


Loss = LogitDiff | LogProb | NeuronTrace | HeadTrace | LatentTrace | Direction

_FIELD_OF_MESSAGE = {
    apb.LogitDiffLoss: "logit_diff",
    apb.LogProbLoss: "log_prob",
    apb.NeuronTrace: "neuron",
    apb.HeadTrace: "head",
    apb.LatentTrace: "latent",
    apb.DirectionLoss: "direction",
}


def loss_pb(loss: Loss | Message | tuple[str, Message]) -> tuple[str, Message]:
    """``(AttributeRequest oneof field, message)`` of a typed loss or a raw loss message (an
    earlier release's ``(field, message)`` pairs pass through)."""
    if isinstance(loss, tuple):
        return loss
    if isinstance(loss, Message):
        field = _FIELD_OF_MESSAGE.get(type(loss))
        if field is None:
            raise TypeError(f"{type(loss).__name__} is not a loss message")
        return field, loss
    return loss.field, loss.to_pb()


def logit_diff(target: TokensLike, distractor: TokensLike, position: int = -1) -> LogitDiff:
    """Mean target logit minus mean distractor logit (log p(target) / p(distractor))."""
    return LogitDiff(_items(target), _items(distractor), position)


def log_prob(target: TokensLike, position: int = -1) -> LogProb:
    """Log of the total probability of the targets."""
    return LogProb(_items(target), position)


def neuron(layer: int, index: int, position: int = -1) -> NeuronTrace:
    """Trace upstream from an MLP neuron's pre-activation."""
    return NeuronTrace(layer, index, position)


def head(
    layer: int,
    index: int,
    query_position: int = -1,
    key_position: int | None = None,
    through: str = "qk",
) -> HeadTrace:
    """Trace upstream from an attention head through "q", "k", "qk" (a score) or "v" (its write)."""
    return HeadTrace(layer, index, query_position, key_position, through)


def latent(sae: str, index: int, position: int = -1) -> LatentTrace:
    """Trace upstream from an SAE latent's pre-activation."""
    return LatentTrace(sae, index, position)


def direction(site: str, vector: np.ndarray | Sequence[float], position: int = -1) -> Direction:
    """The residual stream at ``site`` projected on ``vector``."""
    return Direction(site, np.asarray(vector, np.float32), position)
