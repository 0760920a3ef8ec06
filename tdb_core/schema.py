"""The node schema: every hook site, its shape and its meaning. The one home of these names.

Hook sites use TransformerLens names (SAELens ``hook_name``s and Neuronpedia ids use them). Every
value is that of the *unprocessed* Hugging Face model: no LayerNorm folding, no centring — the
numbers TransformerLens gives with every processing flag off.

Shapes are given without the batch dimension; on the wire and in captures every site carries a
leading ``batch`` axis. Dimension names:

    pos      token position                      q_pos / k_pos   query / key position
    head     attention (query) head
    kv_head  key/value head: as many as query heads, fewer under grouped-query attention, where
             query head h reads kv head h // (head / kv_head) (TransformerLens's grouped shapes)
    d_head   per-head width     d_model  residual width     d_mlp  MLP hidden width
    vocab    vocabulary         one      a singleton axis (LayerNorm scales, as TransformerLens)

A model's schema (:class:`ModelSchema`) lists only the sites its architecture has. A site it lacks
(``hook_pos_embed`` under rotary embeddings, ``hook_resid_mid`` in a parallel block) is absent, not
faked, and naming it is a :class:`~tdb_core.errors.NotFoundError`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from tdb_core import checks
from tdb_core.errors import InvalidArgumentError, NotFoundError


@dataclass(frozen=True)
class SiteKind:
    """A family of sites, e.g. ``attn.hook_pattern``, independent of the layer.

    ``key`` is the name without the ``blocks.{L}.`` prefix; ``unit_dim`` is the axis that unit
    indices select (neurons, heads, channels); ``pos_dim`` the axis that positions select.
    """

    key: str
    layered: bool
    dims: tuple[str, ...]
    meaning: str
    unit_dim: str | None
    pos_dim: str | None = "pos"
    sizes: tuple[tuple[str, int], ...] = ()  # sizes of dims the model does not define (SAEs)
    anchor: str | None = None  # list this (unlayered) site right after this site name

    def size_of(self, dim: str) -> int | None:
        for name, size in self.sizes:
            if name == dim:
                return size
        return None


def _k(
    key: str,
    layered: bool,
    dims: tuple[str, ...],
    meaning: str,
    unit_dim: str | None,
    pos_dim: str | None = "pos",
) -> SiteKind:
    return SiteKind(key, layered, dims, meaning, unit_dim, pos_dim)


# Every site kind of the schema, in forward-pass order. Adapters say which ones a model has.
SITE_KINDS: tuple[SiteKind, ...] = (
    _k(
        "hook_embed",
        False,
        ("pos", "d_model"),
        "token embedding W_E[token] written to the residual stream",
        "d_model",
    ),
    _k(
        "hook_pos_embed",
        False,
        ("pos", "d_model"),
        "learned positional embedding W_pos[pos] (absent with rotary embeddings)",
        "d_model",
    ),
    _k("hook_resid_pre", True, ("pos", "d_model"), "residual stream entering the block", "d_model"),
    _k(
        "ln1.hook_scale",
        True,
        ("pos", "one"),
        "scale of the attention pre-norm: sqrt(var(x) + eps) for LayerNorm, sqrt(mean(x^2) + eps) "
        "for RMSNorm",
        None,
    ),
    _k(
        "ln1.hook_normalized",
        True,
        ("pos", "d_model"),
        "attention pre-norm input normalized, before the gain and bias: (x - mean) / hook_scale "
        "for LayerNorm, x / hook_scale for RMSNorm (TransformerLens's hook_normalized); the "
        "attention reads hook_normalized * gain + bias",
        "d_model",
    ),
    _k(
        "attn.hook_q",
        True,
        ("pos", "head", "d_head"),
        "queries: the query projection with its bias, before any rotary embedding and the "
        "1/sqrt(d_head) scaling",
        "head",
    ),
    _k(
        "attn.hook_k",
        True,
        ("pos", "kv_head", "d_head"),
        "keys: the key projection with its bias, before any rotary embedding; one per kv head "
        "(grouped-query attention shares each among its query heads)",
        "kv_head",
    ),
    _k(
        "attn.hook_v",
        True,
        ("pos", "kv_head", "d_head"),
        "values: the value projection with its bias; one per kv head (grouped-query attention "
        "shares each among its query heads)",
        "kv_head",
    ),
    _k(
        "attn.hook_rot_q",
        True,
        ("pos", "head", "d_head"),
        "rotary models only: queries after the rotary embedding (hook_q rotated by position), "
        "what the scores read",
        "head",
    ),
    _k(
        "attn.hook_rot_k",
        True,
        ("pos", "kv_head", "d_head"),
        "rotary models only: keys after the rotary embedding (hook_k rotated by position), one "
        "per kv head, what the scores read",
        "kv_head",
    ),
    _k(
        "attn.hook_attn_scores",
        True,
        ("head", "q_pos", "k_pos"),
        "attention scores: scaled (and soft-capped where the model does), masked, pre-softmax; "
        "masked entries are -inf",
        "head",
        "q_pos",
    ),
    _k(
        "attn.hook_pattern",
        True,
        ("head", "q_pos", "k_pos"),
        "attention probabilities (softmax of the scores)",
        "head",
        "q_pos",
    ),
    _k(
        "attn.hook_z",
        True,
        ("pos", "head", "d_head"),
        "per-head attention output: pattern-weighted sum of values, before the output projection",
        "head",
    ),
    _k(
        "attn.hook_result",
        True,
        ("pos", "head", "d_model"),
        "per-head write to the residual: z[head] @ W_O[head], without the output bias "
        "(attention output = sum over heads + b_O)",
        "head",
    ),
    _k(
        "hook_attn_out",
        True,
        ("pos", "d_model"),
        "attention block output added to the residual stream (after any post-attention norm)",
        "d_model",
    ),
    _k(
        "hook_resid_mid",
        True,
        ("pos", "d_model"),
        "residual stream between attention and MLP (absent in parallel-attention blocks)",
        "d_model",
    ),
    _k(
        "ln2.hook_scale",
        True,
        ("pos", "one"),
        "scale of the MLP pre-norm (see ln1.hook_scale)",
        None,
    ),
    _k(
        "ln2.hook_normalized",
        True,
        ("pos", "d_model"),
        "MLP pre-norm input normalized, before the gain and bias (see ln1.hook_normalized); the "
        "MLP reads hook_normalized * gain + bias",
        "d_model",
    ),
    _k(
        "mlp.hook_pre",
        True,
        ("pos", "d_mlp"),
        "MLP pre-activation (for gated MLPs: the gate projection, before the activation)",
        "d_mlp",
    ),
    _k(
        "mlp.hook_pre_linear",
        True,
        ("pos", "d_mlp"),
        "gated MLPs only: the up (linear) projection that multiplies the activated gate",
        "d_mlp",
    ),
    _k(
        "mlp.hook_post",
        True,
        ("pos", "d_mlp"),
        "MLP neuron activations: the input of the down/output projection",
        "d_mlp",
    ),
    _k(
        "hook_mlp_out",
        True,
        ("pos", "d_model"),
        "MLP block output added to the residual stream (after any post-MLP norm)",
        "d_model",
    ),
    _k("hook_resid_post", True, ("pos", "d_model"), "residual stream leaving the block", "d_model"),
    _k(
        "ln_final.hook_scale",
        False,
        ("pos", "one"),
        "scale of the final norm (see ln1.hook_scale)",
        None,
    ),
    _k(
        "ln_final.hook_normalized",
        False,
        ("pos", "d_model"),
        "final norm input normalized, before the gain and bias (see ln1.hook_normalized); the "
        "unembedding reads hook_normalized * gain + bias",
        "d_model",
    ),
    _k("logits", False, ("pos", "vocab"), "next-token logits", "vocab"),
)

SITE_KIND_BY_KEY: dict[str, SiteKind] = {k.key: k for k in SITE_KINDS}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")

# The sites an attached SAE adds (SAELens names), as ``sae.{ID}.{hook}``, in their forward order.
SAE_HOOKS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
)


def site_name(key: str, layer: int | None = None) -> str:
    """The full site name of a kind at a layer, e.g. ``site_name("mlp.hook_post", 1)``."""
    kind = SITE_KIND_BY_KEY[key]
    if kind.layered:
        if layer is None:
            raise InvalidArgumentError(f"site '{key}' needs a layer")
        return f"blocks.{layer}.{key}"
    return key


def sae_site_name(sae_id: str, hook: str) -> str:
    """The site an SAE adds, e.g. ``sae_site_name("toy-res", "hook_sae_acts_post")``."""
    if hook not in SAE_HOOKS:
        raise InvalidArgumentError(
            f"unknown SAE hook '{hook}'; SAE hooks are {', '.join(SAE_HOOKS)}"
        )
    return f"sae.{sae_id}.{hook}"


def split_sae_site(name: str) -> tuple[str, str] | None:
    """``(sae_id, hook)`` of an SAE site name, None for any other name. SAE ids may contain dots,
    so the name is split from the right on the known hook suffixes."""
    for hook in SAE_HOOKS:
        suffix = "." + hook
        if name.startswith("sae.") and name.endswith(suffix) and len(name) > 4 + len(suffix):
            return name[4 : -len(suffix)], hook
    return None


def norm_name(norm: str, layer: int | None = None) -> str:
    """The name a norm goes by in hook plans (``freeze_norms``): ``norm_name("ln1", 2)`` is
    ``blocks.2.ln1``, ``norm_name("ln_final")`` is ``ln_final``; its sites are
    ``{name}.hook_scale`` and ``{name}.hook_normalized``."""
    return site_name(f"{norm}.hook_scale", layer).removesuffix(".hook_scale")


# --------------------------------------------------------------------------------------------------
# Forward order


@dataclass(frozen=True, order=True)
class Location:
    """Where a site sits in the forward pass; locations compare in forward order.

    ``section`` 0 is before the blocks (embeddings), 1 inside block ``layer``, 2 after the blocks
    (final norm, logits); ``step`` is the site kind's index in :data:`SITE_KINDS` (which is in
    forward order); ``after`` is 0 for a site itself and i > 0 for the i-th site anchored right
    after it (an attached SAE's sites follow the site the SAE reads).
    """

    section: int
    layer: int
    step: int
    after: int = 0


_STEP = {k.key: i for i, k in enumerate(SITE_KINDS)}
_FIRST_LAYERED = min(i for i, k in enumerate(SITE_KINDS) if k.layered)


def location(key: str, layer: int | None = None) -> Location:
    """The location of the site of kind ``key`` (at ``layer`` for layered kinds)."""
    kind = SITE_KIND_BY_KEY.get(key)
    if kind is None:
        raise NotFoundError(f"unknown site kind '{key}'")
    step = _STEP[key]
    if kind.layered:
        if layer is None:
            raise InvalidArgumentError(f"site '{key}' needs a layer")
        return Location(1, layer, step)
    return Location(0 if step < _FIRST_LAYERED else 2, 0, step)


def site_location(name: str) -> Location:
    """The location of a concrete (non-SAE) site name, e.g. ``blocks.1.hook_resid_mid``."""
    ref = parse_site(name)
    return location(ref.kind.key, ref.layer)


@dataclass(frozen=True)
class SiteRef:
    """A parsed concrete site name: its kind and layer (None for unlayered sites)."""

    name: str
    kind: SiteKind
    layer: int | None


def parse_site(name: str) -> SiteRef:
    """Parse a concrete site name; unknown kinds are a NotFoundError listing the valid ones."""
    m = _BLOCK_RE.match(name)
    if m:
        layer, key = int(m.group(1)), m.group(2)
        kind = SITE_KIND_BY_KEY.get(key)
        if kind is not None and kind.layered:
            return SiteRef(name, kind, layer)
    else:
        kind = SITE_KIND_BY_KEY.get(name)
        if kind is not None and not kind.layered:
            return SiteRef(name, kind, None)
    known = ", ".join(("blocks.{L}." if k.layered else "") + k.key for k in SITE_KINDS)
    raise NotFoundError(f"unknown hook site {checks.quote(name)}; sites are: {known}")


@dataclass(frozen=True)
class ModelDims:
    """Sizes of a loaded model, in TransformerLens names."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int

    def size(self, dim: str, n_pos: int) -> int:
        """Size of a named dimension for a sequence of ``n_pos`` tokens."""
        sizes = {
            "pos": n_pos,
            "q_pos": n_pos,
            "k_pos": n_pos,
            "head": self.n_heads,
            "kv_head": self.n_kv_heads,
            "d_head": self.d_head,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "vocab": self.d_vocab,
            "one": 1,
        }
        return sizes[dim]


@dataclass(frozen=True)
class SiteInfo:
    """A concrete site of a loaded model, as GetModelInfo reports it."""

    name: str
    kind: SiteKind
    layer: int | None

    @property
    def dims(self) -> tuple[str, ...]:
        return self.kind.dims


@dataclass(frozen=True)
class ModelSchema:
    """The sites one loaded model has, with its dimensions.

    Built by an adapter from the kinds its architecture supports. ``resolve`` turns a user's site
    name or glob into concrete sites, with errors that list what exists.
    """

    dims: ModelDims
    kinds: tuple[SiteKind, ...]
    sites: tuple[SiteInfo, ...] = field(init=False)
    _by_name: dict[str, SiteInfo] = field(init=False, repr=False, compare=False)
    _locations: dict[str, Location] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites: list[SiteInfo] = []
        for kind in self.kinds:
            if not kind.layered:
                sites.append(SiteInfo(kind.key, kind, None))
        for layer in range(self.dims.n_layers):
            for kind in self.kinds:
                if kind.layered:
                    sites.append(SiteInfo(site_name(kind.key, layer), kind, layer))
        after = {k.key: i + 1 for i, k in enumerate(self.kinds)}  # anchored: in attach order
        order = {s.name: self._location(s, after) for s in sites}
        sites.sort(key=lambda s: order[s.name])
        object.__setattr__(self, "sites", tuple(sites))
        object.__setattr__(self, "_by_name", {s.name: s for s in sites})
        object.__setattr__(self, "_locations", order)

    @staticmethod
    def _location(site: SiteInfo, after: dict[str, int]) -> Location:
        if site.kind.anchor is None:
            return location(site.kind.key, site.layer)
        anchor = site_location(site.kind.anchor)
        return Location(anchor.section, anchor.layer, anchor.step, after[site.kind.key])

    def location(self, name: str) -> Location:
        """Where a site of this model sits in the forward pass (see :class:`Location`)."""
        return self._locations[self.get(name).name]

    def has_kind(self, key: str) -> bool:
        return any(k.key == key for k in self.kinds)

    def get(self, name: str) -> SiteInfo:
        """A concrete site by name; NotFoundError / OutOfRangeError say what exists."""
        site = self._by_name.get(name)
        if site is not None:
            return site
        ref = parse_site(name)  # raises NotFoundError for names that are not sites at all
        if not self.has_kind(ref.kind.key):  # by key: adapters may restate a kind's meaning
            raise NotFoundError(
                f"site {checks.quote(name)} does not exist in this model's architecture "
                f"('{ref.kind.key}' is not part of its schema; GetModelInfo lists the sites)"
            )
        assert ref.layer is not None
        checks.index(ref.layer, self.dims.n_layers, "layer", f" of site {checks.quote(name)}")
        raise NotFoundError(f"site {checks.quote(name)} is not part of this model's schema")

    def resolve(self, pattern: str) -> list[SiteInfo]:
        """Concrete sites for a name or a glob (``blocks.*.mlp.hook_post``), in forward order."""
        if not pattern:
            raise InvalidArgumentError(
                "empty site name; give a site such as 'blocks.0.hook_resid_pre'"
            )
        if not any(c in pattern for c in "*?["):
            return [self.get(pattern)]
        checks.name_length(pattern, "site pattern")
        # fnmatch keeps every pattern it compiled (32768 of them); re's own cache holds 512
        match = re.compile(fnmatch.translate(pattern)).match
        found = [s for s in self.sites if match(s.name)]
        if not found:
            raise NotFoundError(
                f"site pattern {checks.quote(pattern)} matches no site of this model; "
                "GetModelInfo lists the sites"
            )
        return found

    def dim_size(self, site: SiteInfo, dim: str, n_pos: int) -> int:
        """Size of one of a site's dims for ``n_pos`` tokens."""
        fixed = site.kind.size_of(dim)
        return fixed if fixed is not None else self.dims.size(dim, n_pos)

    def shape(self, site: SiteInfo, n_pos: int) -> tuple[int, ...]:
        """Per-prompt shape of a site for ``n_pos`` tokens (no batch axis)."""
        return tuple(self.dim_size(site, d, n_pos) for d in site.kind.dims)

    def with_kinds(self, extra: tuple[SiteKind, ...]) -> ModelSchema:
        """This schema plus extra (e.g. SAE) site kinds."""
        return ModelSchema(self.dims, self.kinds + extra)

    def unit_count(self, site: SiteInfo) -> int | None:
        """How many units the site's unit axis has (None if it has no unit axis)."""
        if site.kind.unit_dim is None:
            return None
        return self.dim_size(site, site.kind.unit_dim, 0)
