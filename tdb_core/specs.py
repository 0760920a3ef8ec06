"""Request and result specifications of the domain.

This file holds data only: frozen dataclasses with no logic, mirrored one-to-one by messages in
``protos/tdb/v1/`` (``services/convert.py`` converts between the two). Variants are tagged unions
(``Op``, ``LossSpec``), which become ``oneof`` on the wire.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from tdb_core.losses import Loss

# --------------------------------------------------------------------------------------------------
# Prompts and reductions


@dataclass(frozen=True)
class Prompt:
    """One prompt: text to tokenize, or token ids to use verbatim. Exactly one is set."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


class TopKMode(enum.Enum):
    LARGEST = "largest"
    SMALLEST = "smallest"
    ABS = "abs"  # largest by absolute value, signed values returned


@dataclass(frozen=True)
class TopK:
    """Keep the k extreme entries of the site's last dimension, with their indices."""

    k: int
    mode: TopKMode = TopKMode.LARGEST


@dataclass(frozen=True)
class Capture:
    """What to read at a site (or every site a glob matches) and how to reduce it server-side.

    positions: token positions to keep (negative counts from each prompt's end); None keeps all.
      For attention scores/pattern they select query positions.
    units: indices on the site's unit axis (neurons, heads, channels, vocab); None keeps all.
    top_k: after the selections, keep the top k of the last axis (values and indices).
    dtype: the dtype the values travel in (None: the model's dtype).
    """

    site: str
    positions: tuple[int, ...] | None = None
    units: tuple[int, ...] | None = None
    top_k: TopK | None = None
    dtype: torch.dtype | None = None


# --------------------------------------------------------------------------------------------------
# Interventions


class Pass(enum.Enum):
    FORWARD = "forward"  # edit the activation
    BACKWARD = "backward"  # edit the gradient flowing back through the activation (as TDB can)


@dataclass(frozen=True)
class Zero:
    """Set the selection to 0."""


@dataclass(frozen=True)
class SetValue:
    """Set the selection to a constant."""

    value: float


@dataclass(frozen=True)
class SetTensor:
    """Set the selection to a tensor broadcastable to the selected block (see ``Intervention``)."""

    tensor: torch.Tensor


@dataclass(frozen=True)
class Scale:
    """Multiply the selection by a factor."""

    factor: float


@dataclass(frozen=True)
class AddVector:
    """Add ``coeff * vector`` to the selection (steering); the vector broadcasts over the block."""

    vector: torch.Tensor
    coeff: float = 1.0


@dataclass(frozen=True)
class MeanOverPositions:
    """Replace the selection by the mean of the site over this prompt's own positions."""


@dataclass(frozen=True)
class MeanOverReference:
    """Replace the selection by the site's mean over every position of the reference prompts."""


@dataclass(frozen=True)
class PatchFrom:
    """Replace the selection by the same site and selection of a source prompt (patching).

    ``source`` indexes the request's source prompts; they must have the target's length.
    """

    source: int


Op = (
    Zero
    | SetValue
    | SetTensor
    | Scale
    | AddVector
    | MeanOverPositions
    | MeanOverReference
    | PatchFrom
)


@dataclass(frozen=True)
class Intervention:
    """Edit a site during the forward (or backward) pass.

    The selected block of a prompt is ``site[positions][..., units, ...]``: positions on the
    site's position axis (query positions for attention scores/pattern; None means all), units on
    its unit axis (None means all), and for attention scores/pattern ``key_positions`` on the
    k_pos axis (None means all; negative ones count from the prompt's end). Tensor operands
    broadcast against that block, laid out as ``[n_positions, *site dims without position, with
    the unit axis cut to n_units and the k_pos axis to n_key_positions]``.

    A node's selector (:meth:`tdb_core.nodes.Node.selector`) gives ``site``, ``units``,
    ``positions`` and ``key_positions``; zeroing it removes exactly the node's write. A head is
    ablated at a query position by zeroing ``blocks.L.attn.hook_pattern`` (or ``hook_z``) at
    that position and head; zeroing the pattern at a key position too removes that key's share.
    """

    site: str
    op: Op
    positions: tuple[int, ...] | None = None
    units: tuple[int, ...] | None = None
    pass_: Pass = Pass.FORWARD
    key_positions: tuple[int, ...] | None = None


# --------------------------------------------------------------------------------------------------
# Forward


@dataclass(frozen=True)
class ForwardSpec:
    """Run prompts, reading captures, optionally under interventions.

    ``interventions`` apply to every prompt; ``sources`` are prompts that ``PatchFrom`` reads and
    ``references`` the prompts that ``MeanOverReference`` averages (neither is returned).
    ``logit_positions`` pick where next-token top-k logits are reported (default: last).
    """

    prompts: tuple[Prompt, ...]
    captures: tuple[Capture, ...] = ()
    interventions: tuple[Intervention, ...] = ()
    sources: tuple[Prompt, ...] = ()
    references: tuple[Prompt, ...] = ()
    logit_positions: tuple[int, ...] = (-1,)
    top_k: int = 10
    prepend_bos: bool | None = None
    # Gradients (tdb_core.gradients): a loss per prompt, and sites whose d(loss)/d(site) is
    # returned with the reductions of captures; the norm in front of the loss's node held constant.
    loss: Loss | None = None
    grad_captures: tuple[Capture, ...] = ()
    freeze_norm_scale: bool = True


@dataclass(frozen=True)
class TopLogits:
    """Next-token top-k at one position of one prompt."""

    position: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logits: tuple[float, ...]
    probs: tuple[float, ...]


@dataclass(frozen=True)
class CaptureResult:
    """A captured site: values ``[batch, *reduced shape]`` and, with top-k, their indices.

    ``positions`` is ``[batch, n_positions]``: the absolute position of each kept position (the
    negative indices resolved per prompt); entries past a prompt's end are 0-filled in ``values``.
    """

    site: str
    dims: tuple[str, ...]
    values: torch.Tensor
    indices: torch.Tensor | None
    positions: torch.Tensor
    units: tuple[int, ...] | None


@dataclass(frozen=True)
class PromptTokens:
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class ForwardResult:
    prompts: tuple[PromptTokens, ...]
    captures: tuple[CaptureResult, ...]
    top_logits: tuple[tuple[TopLogits, ...], ...]  # [prompt][position]
    logits_at: torch.Tensor = field(repr=False)  # [batch, n_logit_positions, vocab] (float32)
    grad_captures: tuple[CaptureResult, ...] = ()  # d(loss)/d(site), reduced as captures
    loss_values: tuple[float, ...] = ()  # per prompt, when the request has a loss
