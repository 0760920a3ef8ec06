"""Sparse autoencoders: one module API over the kinds OpenAI and SAELens publish.

Every kind reads an activation ``x [..., d_in]`` at its ``site`` and computes

    x_n   = normalize(x)                      input_norm: none | layer_norm | constant_norm_rescale
    x_c   = x_n - b_dec                       only if apply_b_dec_to_input, else x_c = x_n
    pre   = encode_pre(x)                     [..., d_sae], kind-specific (below)
    z     = encode(x)                         [..., d_sae], kind-specific activation of pre
    x̂_n   = z @ D + b_dec                     D = decoder_directions() [d_sae, d_in]
    x̂     = unnormalize(x̂_n)                  uses the statistics normalize() measured on x

The kinds (``SaeKind``), with ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``:

    relu      pre = x_c @ W_enc + b_enc              z = ReLU(pre)
              (OpenAI v1/v4 "ReLU"; SAELens "standard")
    topk      pre = x_c @ W_enc + b_enc              z = ReLU(pre) on the k largest pre, 0 elsewhere
              (OpenAI v5 "TopK" with postact ReLU; SAELens "topk"). With
              rescale_acts_by_decoder_norm, pre is multiplied by ‖W_dec[i]‖ before the top-k and
              D = W_dec / ‖W_dec[i]‖ (SAELens), so decode stays linear in z.
    jumprelu  pre = x_c @ W_enc + b_enc              z = ReLU(pre) · 1[pre > threshold]
    gated     gate = x_c @ W_enc + b_gate
              pre  = x_c @ (W_enc ⊙ exp(r_mag)) + b_mag
                                                     z = 1[gate > 0] · ReLU(pre)
              (the magnitude path is the "pre-activation", as SAELens's hook_sae_acts_pre)

Input normalizations (``InputNorm``), each row on its own:

    layer_norm             shift = mean(x), scale = std(x) (unbiased, torch.std)
                           x_n = (x - shift) / (scale + 1e-5);  x̂ = x̂_n · scale + shift
                           (OpenAI v5 ``normalize``; SAELens ``layer_norm``: the same formula)
    constant_norm_rescale  shift = 0, scale = ‖x‖ / sqrt(d_in)
                           x_n = x / scale;  x̂ = x̂_n · scale

The write vector of a latent. Without input normalization, decode is affine in z:
``decode(z) = b_dec + z @ D``, so latent i writes ``z_i · D[i]`` into the site. With input
normalization the reconstruction is ``shift + scale · (b_dec + z @ D)`` where ``shift`` and
``scale`` are measured on the *input* row (``input_stats(x)``), not on z: for a fixed input row
decode is still affine in z, and latent i writes ``z_i · scale · D[i]`` — its direction is ``D[i]``
and its magnitude is scaled by that row's input scale. ``decoder_directions()`` returns ``D``
(unit-free); multiply by ``InputStats.scale`` of the row to get the write vector in site units.

Each affine map runs as one fused ``addmm``. ``encode_sparse`` gives what Encode reports — the k
largest latents per row, L0 and the reconstruction — without a dense ``[..., d_sae]`` latent
tensor where the kind allows (TopK: top-k on the pre-activations, decode from the k active
latents with one ``embedding_bag`` rather than a ``[..., k, d_in]`` gather of ``W_dec`` rows).

All arithmetic runs in the SAE's parameter dtype (inputs are cast to it), and outputs come back in
that dtype. Inputs may have any leading shape. SAEs whose site is an attention ``hook_z`` with
``flatten_heads=True`` (SAELens ``reshape_activations="hook_z"``) also accept
``[..., n_heads, d_head]`` inputs and flatten the last two dimensions into ``d_in``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from tdb_core.errors import InvalidArgumentError

LAYER_NORM_EPS = 1e-5
"""The epsilon added to the row std by the layer_norm input normalization (OpenAI and SAELens)."""


class SaeKind(StrEnum):
    """The activation function family of an SAE (see the module docstring for each formula)."""

    RELU = "relu"
    TOPK = "topk"
    JUMPRELU = "jumprelu"
    GATED = "gated"


class InputNorm(StrEnum):
    """How an SAE normalizes each input row before encoding (and un-normalizes its output)."""

    NONE = "none"
    LAYER_NORM = "layer_norm"
    CONSTANT_NORM_RESCALE = "constant_norm_rescale"


@dataclass(frozen=True)
class ReluArch:
    """``z = ReLU(pre)``: OpenAI v1/v4 and SAELens ``standard``."""


@dataclass(frozen=True)
class TopKArch:
    """``z = ReLU(pre)`` on the ``k`` largest pre-activations of each row, 0 elsewhere."""

    k: int
    rescale_acts_by_decoder_norm: bool = False


@dataclass(frozen=True)
class JumpReluArch:
    """``z = ReLU(pre) · 1[pre > threshold]`` with a learned per-latent threshold."""


@dataclass(frozen=True)
class GatedArch:
    """``z = 1[x_c W_enc + b_gate > 0] · ReLU(x_c (W_enc ⊙ exp r_mag) + b_mag)``."""


Architecture = ReluArch | TopKArch | JumpReluArch | GatedArch
"""Tagged union of the supported kinds and their hyperparameters."""


@dataclass(frozen=True)
class SaeConfig:
    """Everything about an SAE except its tensors."""

    d_in: int
    d_sae: int
    architecture: Architecture
    apply_b_dec_to_input: bool = True
    input_norm: InputNorm = InputNorm.NONE
    flatten_heads: bool = False
    site: str | None = None
    model_name: str | None = None


@dataclass(frozen=True)
class InputStats:
    """Per-row statistics an input normalization measured; decode needs them to map back.

    ``shift`` and ``scale`` have the input's leading shape plus a trailing 1: ``[..., 1]``.
    """

    shift: torch.Tensor
    scale: torch.Tensor


@dataclass(frozen=True)
class SparseCode:
    """What Encode reports for each row, from :meth:`SparseAutoencoder.encode_sparse`.

    ``values``/``indices`` ``[..., k]``: the k largest latents, largest first (0-valued entries
    where fewer than k latents are active: their indices are latents whose activation is 0);
    ``l0`` ``[...]``: active latents per row; ``reconstruction`` ``[..., d_in]``: ``decode(z,
    stats)`` of the row's latents z."""

    values: torch.Tensor
    indices: torch.Tensor
    l0: torch.Tensor
    reconstruction: torch.Tensor


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x @ w + b`` for ``x [..., n]`` as one fused ``addmm`` (bias added in the product). In
    half precision the product is rounded before the bias is added, as SAELens computes it, so
    low-precision top-k picks the latents theirs does (near-ties are common in bf16)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x @ w + b
    if x.dim() == 2:
        return torch.addmm(b, x, w)
    out = torch.addmm(b, x.reshape(-1, x.shape[-1]), w)
    return out.reshape(*x.shape[:-1], w.shape[-1])


ARCHITECTURE_KINDS: dict[type, SaeKind] = {
    ReluArch: SaeKind.RELU,
    TopKArch: SaeKind.TOPK,
    JumpReluArch: SaeKind.JUMPRELU,
    GatedArch: SaeKind.GATED,
}


def kind_of(architecture: Architecture) -> SaeKind:
    """The ``SaeKind`` of an architecture variant."""
    return ARCHITECTURE_KINDS[type(architecture)]


def expected_tensor_shapes(config: SaeConfig) -> dict[str, tuple[int, ...]]:
    """The tensors (SAELens names) an SAE of this config holds, with their shapes."""
    d_in, d_sae = config.d_in, config.d_sae
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    arch = config.architecture
    if isinstance(arch, GatedArch):
        shapes.update({"b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,)})
    else:
        shapes["b_enc"] = (d_sae,)
    if isinstance(arch, JumpReluArch):
        shapes["threshold"] = (d_sae,)
    return shapes


def validate_config(config: SaeConfig, where: str) -> None:
    """Raise ``InvalidArgumentError`` (mentioning ``where``) if the config is inconsistent."""
    if config.d_in < 1 or config.d_sae < 1:
        raise InvalidArgumentError(
            f"{where}: d_in and d_sae must be positive integers, got d_in={config.d_in}, "
            f"d_sae={config.d_sae}"
        )
    if type(config.architecture) not in ARCHITECTURE_KINDS:
        raise InvalidArgumentError(
            f"{where}: unknown architecture {config.architecture!r}; allowed: "
            + ", ".join(k.value for k in SaeKind)
        )
    arch = config.architecture
    if isinstance(arch, TopKArch) and not 1 <= arch.k <= config.d_sae:
        raise InvalidArgumentError(
            f"{where}: topk k={arch.k} must satisfy 1 <= k <= d_sae={config.d_sae}"
        )
    if config.site is not None and not config.site:
        raise InvalidArgumentError(f"{where}: site must be a non-empty hook name or None")


def validate_tensors(config: SaeConfig, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Check names, shapes and dtypes of an SAE's tensors against its config.

    Raises ``InvalidArgumentError`` naming ``where`` (a file or "arguments"), the offending
    tensor and what was expected: missing or unexpected names, a shape inconsistent with
    d_in/d_sae, a non-floating dtype, or tensors of different dtypes.
    """
    expected = expected_tensor_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    kind = kind_of(config.architecture).value
    if missing:
        raise InvalidArgumentError(
            f"{where}: missing tensor(s) {missing} for a {kind} SAE; expected exactly "
            f"{sorted(expected)}"
        )
    if extra:
        raise InvalidArgumentError(
            f"{where}: unexpected tensor(s) {extra} for a {kind} SAE; expected exactly "
            f"{sorted(expected)}"
        )
    dtypes = set()
    for name, shape in expected.items():
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise InvalidArgumentError(
                f"{where}: {name} must be a tensor, got {type(tensor).__name__}"
            )
        if tuple(tensor.shape) != shape:
            raise InvalidArgumentError(
                f"{where}: {name} has shape {list(tensor.shape)} but d_in={config.d_in}, "
                f"d_sae={config.d_sae} require {list(shape)}"
            )
        if not tensor.is_floating_point():
            raise InvalidArgumentError(
                f"{where}: {name} has dtype {tensor.dtype}; SAE tensors must be floating point "
                "(float32, float16, bfloat16 or float64)"
            )
        dtypes.add(tensor.dtype)
    if len(dtypes) > 1:
        raise InvalidArgumentError(
            f"{where}: tensors have mixed dtypes {sorted(str(d) for d in dtypes)}; cast them "
            "to one dtype"
        )


class SparseAutoencoder(nn.Module, ABC):
    """An SAE of any supported kind; the API the rest of the system uses.

    Construct with ``build_sae`` (or a loader); subclasses hold the kind-specific math. Tensors
    are ``nn.Parameter``s named as in SAELens (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec`` and the
    kind's extras), created with ``requires_grad=False``; training turns gradients on.
    """

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    architecture_type: type
    """The ``Architecture`` variant a subclass implements."""

    def __init__(
        self,
        config: SaeConfig,
        tensors: Mapping[str, torch.Tensor],
        where: str = "arguments",
        copy: bool = True,
    ) -> None:
        super().__init__()
        validate_config(config, where)
        if not isinstance(config.architecture, self.architecture_type):
            raise InvalidArgumentError(
                f"{where}: {type(self).__name__} needs a {self.architecture_type.__name__} "
                f"config, got {type(config.architecture).__name__}"
            )
        validate_tensors(config, tensors, where)
        self.config = config
        for name in expected_tensor_shapes(config):
            tensor = tensors[name].detach()
            self.register_parameter(
                name, nn.Parameter(tensor.clone() if copy else tensor, requires_grad=False)
            )

    # -- properties ------------------------------------------------------------------------------

    @property
    def kind(self) -> SaeKind:
        """The SAE's kind (relu, topk, jumprelu, gated)."""
        return kind_of(self.config.architecture)

    @property
    def d_in(self) -> int:
        """Width of the activation the SAE reads."""
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.config.d_sae

    @property
    def site(self) -> str | None:
        """TransformerLens-style hook name the SAE reads (e.g. ``blocks.1.hook_resid_pre``)."""
        return self.config.site

    @property
    def input_norm(self) -> InputNorm:
        """The input normalization; when not ``none``, ``decode`` needs ``InputStats``."""
        return self.config.input_norm

    @property
    def dtype(self) -> torch.dtype:
        """The dtype all SAE arithmetic runs in."""
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        """The device the SAE's tensors live on."""
        return self.W_dec.device

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """The SAE's tensors by SAELens name (detached views, not copies)."""
        return {name: p.detach() for name, p in self.named_parameters()}

    # -- shared steps ----------------------------------------------------------------------------

    def _as_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an input and return it as ``[..., d_in]`` in the SAE dtype."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InvalidArgumentError(
                f"SAE input must be a floating-point tensor [..., {self.d_in}], got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.ndim >= 1 and x.shape[-1] == self.d_in:
            return x.to(self.dtype)
        if self.config.flatten_heads and x.ndim >= 2 and x.shape[-2] * x.shape[-1] == self.d_in:
            return x.flatten(-2).to(self.dtype)  # [..., n_heads * d_head]
        allowed = f"[..., {self.d_in}]"
        if self.config.flatten_heads:
            allowed += f" or [..., n_heads, d_head] with n_heads * d_head = {self.d_in}"
        raise InvalidArgumentError(
            f"SAE input has shape {list(x.shape)}; this SAE (site {self.site}) reads {allowed}"
        )

    def input_stats(self, x: torch.Tensor) -> InputStats | None:
        """The per-row statistics of the input normalization, or None if the SAE has none."""
        x = self._as_rows(x)  # [..., d_in]
        return self._stats(x)

    def _stats(self, x: torch.Tensor) -> InputStats | None:
        norm = self.config.input_norm
        if norm is InputNorm.NONE:
            return None
        if norm is InputNorm.LAYER_NORM:
            mu = x.mean(dim=-1, keepdim=True)  # [..., 1]
            std = (x - mu).std(dim=-1, keepdim=True)  # [..., 1] unbiased, as torch.std
            return InputStats(shift=mu, scale=std)
        scale = x.norm(dim=-1, keepdim=True) / math.sqrt(self.d_in)  # [..., 1]
        return InputStats(shift=torch.zeros_like(scale), scale=scale)

    def _normalize(self, x: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        if stats is None:
            return x
        if self.config.input_norm is InputNorm.LAYER_NORM:
            return (x - stats.shift) / (stats.scale + LAYER_NORM_EPS)  # [..., d_in]
        return x / stats.scale  # [..., d_in]

    def _center(self, x_n: torch.Tensor) -> torch.Tensor:
        """``x_c``: the normalized input, minus b_dec when apply_b_dec_to_input."""
        if self.config.apply_b_dec_to_input:
            return x_n - self.b_dec  # [..., d_in]
        return x_n

    def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
        return self._center(self._normalize(x, self._stats(x)))  # [..., d_in]

    def _decode(self, z: torch.Tensor, stats: InputStats | None) -> torch.Tensor:
        x_hat = z @ self._directions() + self.b_dec  # [..., d_in]
        if stats is not None:
            x_hat = x_hat * stats.scale + stats.shift  # [..., d_in]
        return x_hat

    # -- kind-specific ---------------------------------------------------------------------------

    @abstractmethod
    def _pre(self, x_c: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` from the centred input ``x_c [..., d_in]``."""

    @abstractmethod
    def _activate(self, x_c: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` from the centred input and the pre-activations."""

    def _directions(self) -> torch.Tensor:
        """``D``: the decoder matrix decode multiplies latents by (with gradients)."""
        return self.W_dec  # [d_sae, d_in]

    # -- public API ------------------------------------------------------------------------------

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., d_sae]`` of input ``x [..., d_in]`` (what attribution reads)."""
        return self._pre(self._sae_in(self._as_rows(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of input ``x [..., d_in]``."""
        x_c = self._sae_in(self._as_rows(x))  # [..., d_in]
        return self._activate(x_c, self._pre(x_c))  # [..., d_sae]

    def encode_with_stats(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, InputStats | None]:
        """``(pre-activations, latents, input stats)`` in one pass, for splicing.

        ``decode(latents, stats)`` reconstructs the input; the stats are None without input
        normalization.
        """
        rows = self._as_rows(x)  # [..., d_in]
        stats = self._stats(rows)
        x_c = self._center(self._normalize(rows, stats))  # [..., d_in]
        pre = self._pre(x_c)  # [..., d_sae]
        return pre, self._activate(x_c, pre), stats

    def activate(
        self, x: torch.Tensor, pre: torch.Tensor, stats: InputStats | None = None
    ) -> torch.Tensor:
        """Latents ``[..., d_sae]`` from pre-activations ``pre`` (possibly edited) of input
        ``x [..., d_in]``: the step ``encode`` takes after ``encode_pre`` (a gated SAE's gate
        reads ``x``). ``stats`` as ``encode_with_stats`` returned them for ``x``."""
        rows = self._as_rows(x)  # [..., d_in]
        return self._activate(self._center(self._normalize(rows, stats)), pre.to(self.dtype))

    def encode_sparse(self, x: torch.Tensor, k: int) -> SparseCode:
        """The k largest latents of each row of ``x [..., d_in]``, its L0 and reconstruction,
        equal to ``encode`` + top-k + ``decode`` (see :class:`SparseCode`) but without keeping
        a dense ``[..., d_sae]`` latent tensor (TopK SAEs never build one)."""
        if k < 0:
            raise InvalidArgumentError(f"k must be >= 0, got {k}")
        rows = self._as_rows(x)  # [..., d_in]
        stats = self._stats(rows)
        x_c = self._center(self._normalize(rows, stats))  # [..., d_in]
        return self._sparse_code(x_c, min(k, self.d_sae), stats)

    def _sparse_code(self, x_c: torch.Tensor, k: int, stats: InputStats | None) -> SparseCode:
        return self.sparse_code_of(self._activate(x_c, self._pre(x_c)), k, stats)

    def sparse_code_of(
        self, z: torch.Tensor, k: int, stats: InputStats | None = None
    ) -> SparseCode:
        """The :class:`SparseCode` of dense latents ``z [..., d_sae]`` (``stats`` as for
        ``decode``): decoded from the top-k alone when they hold every active latent."""
        k = min(k, self.d_sae)
        values, indices = z.topk(k, dim=-1)  # [..., k]
        l0 = torch.count_nonzero(z, dim=-1)  # [...]
        if k > 0 and (l0.numel() == 0 or int(l0.max()) <= k):
            x_hat = self.decode_sparse(values, indices, stats)
        else:
            x_hat = self._decode(z, stats)
        return SparseCode(values, indices, l0, x_hat)

    def decode_sparse(
        self, values: torch.Tensor, indices: torch.Tensor, stats: InputStats | None = None
    ) -> torch.Tensor:
        """``decode`` of latents given by their non-zero entries ``values``/``indices``
        ``[..., k]`` (other latents 0): ``b_dec + sum_j values_j D[indices_j]`` in one
        ``embedding_bag``, with no dense latents and no ``[..., k, d_in]`` gather."""
        D = self._directions()  # [d_sae, d_in]
        lead, k = values.shape[:-1], values.shape[-1]
        if k == 0:
            x_hat = self.b_dec.expand(*lead, D.shape[-1])
        else:
            x_hat = F.embedding_bag(
                indices.reshape(-1, k),
                D,
                per_sample_weights=values.reshape(-1, k).to(D.dtype),
                mode="sum",
            ).reshape(*lead, D.shape[-1])
            x_hat = x_hat + self.b_dec  # [..., d_in]
        if stats is not None:
            x_hat = x_hat * stats.scale + stats.shift
        return x_hat

    def decoder_directions(self) -> torch.Tensor:
        """``D [d_sae, d_in]``: row i is latent i's write direction, exactly what decode uses.

        ``decode(z) == b_dec + z @ D`` without input normalization, and
        ``decode(z, stats) == stats.shift + stats.scale * (b_dec + z @ D)`` with it.
        """
        return self._directions().detach()

    def decode(self, latents: torch.Tensor, stats: InputStats | None = None) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from latents ``[..., d_sae]``.

        ``stats`` is required exactly when the SAE normalizes its input: pass
        ``input_stats(x)`` of the input the latents came from.
        """
        if not isinstance(latents, torch.Tensor) or latents.ndim < 1:
            raise InvalidArgumentError(f"SAE latents must be a tensor [..., {self.d_sae}]")
        if latents.shape[-1] != self.d_sae:
            raise InvalidArgumentError(
                f"SAE latents have shape {list(latents.shape)}; this SAE has d_sae={self.d_sae}, "
                f"so latents must be [..., {self.d_sae}]"
            )
        if self.config.input_norm is not InputNorm.NONE and stats is None:
            raise InvalidArgumentError(
                f"this SAE normalizes its input ({self.config.input_norm.value}); decode needs "
                "the InputStats of the input the latents came from: sae.input_stats(x)"
            )
        if self.config.input_norm is InputNorm.NONE and stats is not None:
            raise InvalidArgumentError(
                "this SAE has no input normalization; call decode without stats"
            )
        return self._decode(latents.to(self.dtype), stats)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latents [..., d_sae], reconstruction)``; the reconstruction has ``x``'s shape."""
        rows = self._as_rows(x)  # [..., d_in]
        stats = self._stats(rows)
        x_c = self._center(self._normalize(rows, stats))  # [..., d_in]
        z = self._activate(x_c, self._pre(x_c))  # [..., d_sae]
        return z, self._decode(z, stats).reshape(x.shape)

    def extra_repr(self) -> str:
        """Summary shown by ``repr``."""
        return (
            f"kind={self.kind.value}, d_in={self.d_in}, d_sae={self.d_sae}, site={self.site}, "
            f"input_norm={self.config.input_norm.value}, dtype={self.dtype}"
        )


class ReluSae(SparseAutoencoder):
    """``z = ReLU(x_c @ W_enc + b_enc)`` (OpenAI v1/v4, SAELens standard)."""

    architecture_type = ReluArch
    b_enc: nn.Parameter

    def _pre(self, x_c: torch.Tensor) -> torch.Tensor:
        return _affine(x_c, self.W_enc, self.b_enc)  # [..., d_sae]

    def _activate(self, x_c: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)  # [..., d_sae]


class TopKSae(SparseAutoencoder):
    """``z = ReLU(pre)`` on the k largest pre-activations per row (OpenAI v5, SAELens topk)."""

    architecture_type = TopKArch
    b_enc: nn.Parameter

    @property
    def k(self) -> int:
        """Number of latents kept per row."""
        arch = self.config.architecture
        assert isinstance(arch, TopKArch)  # guaranteed by the constructor, not user input
        return arch.k

    @property
    def _rescale(self) -> bool:
        arch = self.config.architecture
        return isinstance(arch, TopKArch) and arch.rescale_acts_by_decoder_norm

    def _pre(self, x_c: torch.Tensor) -> torch.Tensor:
        pre = _affine(x_c, self.W_enc, self.b_enc)  # [..., d_sae]
        if self._rescale:
            pre = pre * self.W_dec.norm(dim=-1)  # [..., d_sae]
        return pre

    def _activate(self, x_c: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        top = torch.topk(pre, k=self.k, dim=-1)  # values, indices: [..., k]
        z = torch.zeros_like(pre)  # [..., d_sae]
        return z.scatter(-1, top.indices, torch.relu(top.values))

    def _sparse_code(self, x_c: torch.Tensor, k: int, stats: InputStats | None) -> SparseCode:
        """Top-k on the pre-activations: the SAE's own k latents are the only active ones, so
        the dense latents are never built and the reconstruction reads k rows of D."""
        pre = self._pre(x_c)  # [..., d_sae]
        top = torch.topk(pre, k=max(self.k, k), dim=-1)  # as _activate does when k <= self.k
        active = torch.relu(top.values[..., : self.k])  # [..., self.k], largest first
        values = active
        if k > self.k:  # latents past the SAE's k are 0, at distinct latents outside its top-k
            values = torch.cat([active, torch.zeros_like(top.values[..., self.k :])], dim=-1)
        return SparseCode(
            values[..., :k],
            top.indices[..., :k],
            torch.count_nonzero(active, dim=-1),
            self.decode_sparse(active, top.indices[..., : self.k], stats),
        )

    def _directions(self) -> torch.Tensor:
        w: torch.Tensor = self.W_dec
        if self._rescale:
            return torch.div(w, w.norm(dim=-1, keepdim=True))  # [d_sae, d_in]
        return w


class JumpReluSae(SparseAutoencoder):
    """``z = ReLU(pre) · 1[pre > threshold]`` (SAELens jumprelu, e.g. Gemma Scope)."""

    architecture_type = JumpReluArch
    b_enc: nn.Parameter
    threshold: nn.Parameter

    def _pre(self, x_c: torch.Tensor) -> torch.Tensor:
        return _affine(x_c, self.W_enc, self.b_enc)  # [..., d_sae]

    def _activate(self, x_c: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)  # [..., d_sae]


class GatedSae(SparseAutoencoder):
    """Gated SAE: a binary gate path and a magnitude path sharing ``W_enc`` (SAELens gated)."""

    architecture_type = GatedArch
    b_gate: nn.Parameter
    r_mag: nn.Parameter
    b_mag: nn.Parameter

    def _pre(self, x_c: torch.Tensor) -> torch.Tensor:
        return _affine(x_c, self.W_enc * self.r_mag.exp(), self.b_mag)  # [..., d_sae] magnitude

    def _activate(self, x_c: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        gate = _affine(x_c, self.W_enc, self.b_gate)  # [..., d_sae]
        return (gate > 0).to(pre.dtype) * torch.relu(pre)  # [..., d_sae]


SAE_CLASSES: dict[type, type[SparseAutoencoder]] = {
    ReluArch: ReluSae,
    TopKArch: TopKSae,
    JumpReluArch: JumpReluSae,
    GatedArch: GatedSae,
}


def build_sae(
    config: SaeConfig,
    tensors: Mapping[str, torch.Tensor],
    where: str = "arguments",
    copy: bool = True,
) -> SparseAutoencoder:
    """Build the SAE class of ``config.architecture`` from tensors named as in SAELens.

    ``where`` names the source (a file) in error messages. Tensors are copied unless
    ``copy=False`` (loaders that own fresh tensors skip the copy).
    """
    cls = SAE_CLASSES.get(type(config.architecture))
    if cls is None:
        raise InvalidArgumentError(
            f"{where}: unknown architecture {config.architecture!r}; allowed: "
            + ", ".join(k.value for k in SaeKind)
        )
    return cls(config, tensors, where, copy)
