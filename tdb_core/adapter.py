"""The adapter protocol: what the engine needs from an architecture, and the registry of adapters.

An adapter wraps one loaded Hugging Face model. It declares the model's schema (which sites exist
and their sizes), installs torch hooks that call the active :class:`~tdb_core.hooks.HookContext`
at each wanted site, and exposes the weights that attribution needs, in schema layout. Adapters
register by ``config.architectures[0]``; an unknown architecture is refused with the list of the
supported ones.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError
from tdb_core.hooks import HookContext
from tdb_core.schema import ModelDims, ModelSchema

# torch's fused RMS norm (returns the reciprocal scale too); absent from older torch releases
_FUSED_RMS_NORM: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = getattr(
    torch.ops.aten, "_fused_rms_norm", None
)


@dataclass(frozen=True)
class Norm:
    """A normalization layer's math, for the sites that are derived from it.

    The layer computes ``affine(normalize(x, scale(x)))``:

    - ``scale(x)``: the per-position divisor ``[..., 1]`` (``hook_scale``);
    - ``normalize(x, scale)``: ``(x - mean) / scale`` for LayerNorm, ``x / scale`` for RMSNorm,
      before the gain and bias (``hook_normalized``, as in TransformerLens);
    - ``affine(y)``: the elementwise gain (``1 + w`` for offset RMSNorm) and bias, giving the
      layer's output, what the next branch reads.

    ``apply(x, scale)`` is the whole layer with a given scale (used when the scale is edited or
    held constant for gradients). All compute in float32 and return the input dtype.
    """

    kind: str  # "layernorm" | "rmsnorm" | "rmsnorm_offset" (Gemma: weight applied as 1 + w)
    eps: float
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.kind == "layernorm":
            var = torch.var(xf, -1, correction=0, keepdim=True)
        else:
            var = xf.pow(2).mean(-1, keepdim=True)
        return torch.sqrt(var + self.eps).to(x.dtype)  # [..., 1]

    def read(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale(x), normalize(x, scale(x)))`` from one fused kernel (torch's layer or RMS
        norm without gain and bias, which also returns the reciprocal scale): what reading both
        sites costs when nothing edits or differentiates them."""
        fused = self._fused(x)
        if fused is None:
            scale = self.scale(x)
            return scale, self.normalize(x, scale)
        normalized, rstd = fused
        return rstd.float().reciprocal().to(x.dtype), normalized

    def _fused(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(normalized, rstd)`` from torch's fused kernel without gain, or None where torch has
        none for this norm (a release without the fused RMS norm), device or dtype."""
        d = [x.shape[-1]]
        try:
            if self.kind == "layernorm":
                normalized, _, rstd = torch.native_layer_norm(x, d, None, None, self.eps)
                return normalized, rstd
            if _FUSED_RMS_NORM is not None:
                return _FUSED_RMS_NORM(x, d, None, self.eps)
        except (NotImplementedError, RuntimeError):  # torch's answer for a missing kernel
            pass
        return None

    def _normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.kind == "layernorm":
            xf = xf - xf.mean(-1, keepdim=True)
        return xf / scale.float()

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            w = self.weight.float()
            y = y * (1.0 + w if self.kind == "rmsnorm_offset" else w)
        if self.bias is not None:
            y = y + self.bias.float()
        return y

    def normalize(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The normalized input before gain and bias ``[..., d]`` (TransformerLens's
        ``hook_normalized``)."""
        return self._normalize(x, scale).to(x.dtype)

    def affine(self, y: torch.Tensor) -> torch.Tensor:
        """Gain and bias applied to a normalized value: the layer's output."""
        return self._affine(y.float()).to(y.dtype)

    def apply(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self._affine(self._normalize(x, scale)).to(x.dtype)

    def gain(self) -> torch.Tensor | None:
        """The effective elementwise gain (``1 + w`` for offset RMSNorm)."""
        if self.weight is None:
            return None
        return 1.0 + self.weight if self.kind == "rmsnorm_offset" else self.weight


@dataclass(frozen=True)
class AttnWeights:
    """A layer's query, key and value projections per head: ``q = x @ W_Q[h] + b_Q[h]`` with
    ``x`` the attention pre-norm's output, before rotary embeddings. Keys and values have one
    entry per key/value head (fewer than query heads under grouped-query attention)."""

    W_Q: torch.Tensor  # [head, d_model, d_head]
    W_K: torch.Tensor  # [kv_head, d_model, d_head]
    W_V: torch.Tensor  # [kv_head, d_model, d_head]
    b_Q: torch.Tensor | None  # [head, d_head]
    b_K: torch.Tensor | None  # [kv_head, d_head]
    b_V: torch.Tensor | None  # [kv_head, d_head]


class Adapter(abc.ABC):
    """One loaded model seen through the node schema."""

    architectures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    # -- schema
    @property
    @abc.abstractmethod
    def dims(self) -> ModelDims: ...

    @property
    @abc.abstractmethod
    def schema(self) -> ModelSchema: ...

    @property
    def parallel_blocks(self) -> bool:
        """True when attention and MLP read the same residual (GPT-NeoX/GPT-J style)."""
        return False

    # -- hooks
    @abc.abstractmethod
    def install(self, ctx: HookContext) -> list[Any]:
        """Register torch hooks for the sites ``ctx`` wants; return handles with ``remove()``."""

    # -- weights, in schema layout
    @abc.abstractmethod
    def W_E(self) -> torch.Tensor:
        """Token embedding ``[vocab, d_model]``."""

    @abc.abstractmethod
    def W_U(self) -> torch.Tensor:
        """Unembedding ``[d_model, vocab]``."""

    def b_U(self) -> torch.Tensor | None:
        """Unembedding bias ``[vocab]``, if any."""
        return None

    @abc.abstractmethod
    def W_O(self, layer: int) -> torch.Tensor:
        """Per-head output projection ``[head, d_head, d_model]``."""

    @abc.abstractmethod
    def b_O(self, layer: int) -> torch.Tensor | None:
        """Attention output bias ``[d_model]``, if any."""

    @abc.abstractmethod
    def W_out(self, layer: int) -> torch.Tensor:
        """MLP output projection ``[d_mlp, d_model]``."""

    @abc.abstractmethod
    def b_out(self, layer: int) -> torch.Tensor | None:
        """MLP output bias ``[d_model]``, if any."""

    @abc.abstractmethod
    def W_in(self, layer: int) -> torch.Tensor:
        """MLP input projection producing ``mlp.hook_pre`` ``[d_model, d_mlp]`` (the gate for
        gated MLPs)."""

    @abc.abstractmethod
    def mlp_in_norm(self, layer: int) -> Norm:
        """The norm whose output the MLP reads (ln2, or ln1 when one norm feeds both branches)."""

    @abc.abstractmethod
    def final_norm(self) -> Norm:
        """The final normalization before the unembedding."""

    def post_attn_norm(self, layer: int) -> Norm | None:
        """A norm applied to the attention output before it joins the residual (Gemma 2)."""
        return None

    def post_mlp_norm(self, layer: int) -> Norm | None:
        """A norm applied to the MLP output before it joins the residual (Gemma 2)."""
        return None

    def logit_softcap(self) -> float | None:
        """Final logit soft-capping (Gemma 2), if any."""
        return None

    # -- the rest of the weights (GetWeights); every shipped adapter has them
    def _lacks(self, what: str) -> FailedPreconditionError:
        return FailedPreconditionError(f"the {type(self).__name__} adapter does not expose {what}")

    def W_pos(self) -> torch.Tensor | None:
        """Learned position embedding ``[n_ctx, d_model]`` (None with rotary embeddings)."""
        return None

    def attn_weights(self, layer: int) -> AttnWeights:
        """The layer's Q/K/V projections per head (see :class:`AttnWeights`)."""
        raise self._lacks("attention projections")

    def attn_in_norm(self, layer: int) -> Norm:
        """The norm whose output the attention reads (ln1)."""
        raise self._lacks("the attention pre-norm")

    def b_in(self, layer: int) -> torch.Tensor | None:
        """Bias of the projection producing ``mlp.hook_pre`` ``[d_mlp]``, if any."""
        return None

    def W_up(self, layer: int) -> torch.Tensor | None:
        """Gated MLPs: the up projection producing ``mlp.hook_pre_linear`` ``[d_model, d_mlp]``."""
        return None

    def b_up(self, layer: int) -> torch.Tensor | None:
        """Gated MLPs: the up projection's bias ``[d_mlp]``, if any."""
        return None


AdapterFactory = Callable[[torch.nn.Module], Adapter]
_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register an adapter under each of its ``architectures``."""
    for arch in cls.architectures:
        _REGISTRY[arch] = cls
    return cls


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(architecture: str | None) -> type[Adapter]:
    """The adapter class for ``config.architectures[0]``; refuses unknown ones loudly."""
    cls = _REGISTRY.get(architecture or "")
    if cls is None:
        raise InvalidArgumentError(
            f"architecture '{architecture}' is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )
    return cls
