"""Interventions as typed values, and the selector syntax that says where they act.

A selector is a node key or more (:mod:`tdb_client.nodes`): ``SITE`` optionally followed by
``[...]`` with comma-separated parts::

    blocks.1.mlp.hook_post[42]                  unit 42 (neuron) at every position
    blocks.1.mlp.hook_post[42,pos=5]            neuron 42 at token 5 (a node-table row's key)
    blocks.1.attn.hook_z[head=3,pos=-1]         head 3 at the last position
    blocks.0.attn.hook_pattern[3,pos=14,key=2]  head 3's attention from query 14 to key 2
    blocks.0.hook_resid_pre[pos=0:4]            positions 0..3, every channel
    blocks.1.mlp.hook_post[7|9,pos=2]           units 7 and 9 at position 2

Units are a bare number or ``unit=``, ``neuron=``, ``head=``, ``channel=``, ``latent=``,
``token=``; ``pos=`` (or ``position=``) selects positions (query positions on attention
scores/pattern), ``key=`` key positions there. Values are integers, ``a:b`` ranges (b excluded)
or ``|``-separated lists; negative positions count from the prompt's end.

Every builder returns a frozen :class:`Intervention` (``.to_pb()`` gives the ``tdb.v1``
message); client methods take these, or raw ``tdb.v1.common_pb2.Intervention`` messages::

    iv.zero(row.node.key)                       # remove exactly a node-table node's write
    iv.scale("blocks.0.attn.hook_z[head=0]", 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tdb.v1 import common_pb2 as cpb
from tdb_client.nodes import Node, NodeKeyError, Selector, parse_selector
from tdb_client.tensors import from_numpy

UNIT_KEYS = ("unit", "neuron", "head", "channel", "latent", "token")

__all__ = [
    "Add",
    "Intervention",
    "MeanOverPositions",
    "MeanOverReference",
    "NodeKeyError",
    "Patch",
    "Scale",
    "Selector",
    "SetTensor",
    "SetValue",
    "Where",
    "Zero",
    "add",
    "intervention_pb",
    "mean_over_positions",
    "mean_over_reference",
    "parse_selector",
    "patch",
    "scale",
    "set_tensor",
    "set_value",
    "zero",
]


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...


Where = str | Selector | Node | _Keyed  # a selector or node key, or anything with a ``.key``


# -- operations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zero:
    """Set the selection to 0 (zero-ablation)."""


@dataclass(frozen=True)
class SetValue:
    """Set the selection to a constant."""

    value: float


@dataclass(frozen=True, eq=False)
class SetTensor:
    """Set the selection to values broadcastable to ``[positions, units, rest...]``."""

    values: np.ndarray


@dataclass(frozen=True)
class Scale:
    """Multiply the selection by a factor."""

    factor: float


@dataclass(frozen=True, eq=False)
class Add:
    """Add ``coeff * vector`` to the selection (steering)."""

    vector: np.ndarray
    coeff: float = 1.0


@dataclass(frozen=True)
class MeanOverPositions:
    """Replace the selection by the site's mean over this prompt's positions."""


@dataclass(frozen=True)
class MeanOverReference:
    """Replace the selection by the site's mean over the request's reference prompts."""


@dataclass(frozen=True)
class Patch:
    """Replace the selection by the same site of source prompt ``source``."""

    source: int = 0


Op = Zero | SetValue | SetTensor | Scale | Add | MeanOverPositions | MeanOverReference | Patch


@dataclass(frozen=True)
class Intervention:
    """An operation on a selection, in the forward pass (or, ``backward``, on the gradient)."""

    selector: Selector
    op: Op = field(default_factory=Zero)
    backward: bool = False

    @property
    def site(self) -> str:
        return self.selector.site

    def to_pb(self) -> cpb.Intervention:
        """The ``tdb.v1.Intervention`` message."""
        sel = self.selector
        msg = cpb.Intervention(
            site=sel.site,
            positions=list(sel.positions or ()),
            units=list(sel.units or ()),
            key_positions=list(sel.key_positions or ()),
        )
        setattr(msg, "pass", cpb.PASS_BACKWARD if self.backward else cpb.PASS_FORWARD)
        op = self.op
        if isinstance(op, Zero):
            msg.zero.SetInParent()
        elif isinstance(op, SetValue):
            msg.set_value.value = op.value
        elif isinstance(op, SetTensor):
            msg.set_tensor.CopyFrom(from_numpy(np.asarray(op.values, dtype=np.float32)))
        elif isinstance(op, Scale):
            msg.scale.factor = op.factor
        elif isinstance(op, Add):
            msg.add.vector.CopyFrom(from_numpy(np.asarray(op.vector, dtype=np.float32)))
            msg.add.coeff = op.coeff
        elif isinstance(op, MeanOverPositions):
            msg.mean_over_positions.SetInParent()
        elif isinstance(op, MeanOverReference):
            msg.mean_over_reference.SetInParent()
        else:
            msg.patch.source = op.source
        return msg


def _selector(where: Where) -> Selector:
    if isinstance(where, Selector):
        return where
    if isinstance(where, Node):
        return where.selector()
    return parse_selector(where if isinstance(where, str) else where.key)


def intervention_pb(x: Intervention | cpb.Intervention) -> cpb.Intervention:
    """The message of a typed intervention (raw messages pass through)."""
    if isinstance(x, cpb.Intervention):
        return x
    if isinstance(x, Intervention):
        return x.to_pb()
    raise TypeError(
        f"expected an intervention from tdb_client.interventions (or a tdb.v1 Intervention "
        f"message), got {type(x).__name__}"
    )


# -- builders ----------------------------------------------------------------------------------


def zero(where: Where, backward: bool = False) -> Intervention:
    """Set the selection to 0 (zero-ablation); on a node's key, removes exactly its write."""
    return Intervention(_selector(where), Zero(), backward)


def set_value(where: Where, value: float, backward: bool = False) -> Intervention:
    """Set the selection to a constant."""
    return Intervention(_selector(where), SetValue(float(value)), backward)


def set_tensor(
    where: Where, values: np.ndarray | Sequence[float], backward: bool = False
) -> Intervention:
    """Set the selection to values broadcastable to ``[positions, units, rest...]``."""
    return Intervention(_selector(where), SetTensor(np.asarray(values, np.float32)), backward)


def scale(where: Where, factor: float, backward: bool = False) -> Intervention:
    """Multiply the selection by ``factor``."""
    return Intervention(_selector(where), Scale(float(factor)), backward)


def add(
    where: Where,
    vector: np.ndarray | Sequence[float],
    coeff: float = 1.0,
    backward: bool = False,
) -> Intervention:
    """Add ``coeff * vector`` (steering)."""
    return Intervention(
        _selector(where), Add(np.asarray(vector, np.float32), float(coeff)), backward
    )


def mean_over_positions(where: Where) -> Intervention:
    """Replace the selection by the site's mean over this prompt's positions."""
    return Intervention(_selector(where), MeanOverPositions())


def mean_over_reference(where: Where) -> Intervention:
    """Replace the selection by the site's mean over the request's reference prompts."""
    return Intervention(_selector(where), MeanOverReference())


def patch(where: Where, source: int = 0) -> Intervention:
    """Replace the selection by the same site of source prompt ``source`` (activation patching)."""
    return Intervention(_selector(where), Patch(int(source)))
