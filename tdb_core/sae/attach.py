"""Attaching SAEs to a model: latents become sites and nodes, spliced in exactly.

An SAE attached as ``ID`` at site ``S`` adds four sites to the model's schema, listed right after
``S`` (SAELens names):

    sae.ID.hook_sae_input       [pos, d_in]    the SAE's input (the site's value, heads flattened)
    sae.ID.hook_sae_acts_pre    [pos, latent]  pre-activations (what a latent trace reads)
    sae.ID.hook_sae_acts_post   [pos, latent]  latents (capture, intervene, attribute)
    sae.ID.hook_sae_recons      [pos, d_in]    reconstruction from the (possibly edited) latents
    sae.ID.hook_sae_error       [pos, d_in]    input minus the reconstruction of the clean latents

Splicing: when a request edits or differentiates any of these sites, the site's value is
replaced by ``decode(latents') + error`` with ``error = x - decode(latents)`` kept in the graph, so
with no edit the output equals the input (within one rounding) and gradients upstream of the SAE
are the model's own. A request that only reads them does not splice at all, so its results are
bit-identical to the unspliced model.

Gradients treat the latents as their own node, the error held at its value:

    d/d hook_sae_acts_post = (the gradient at the site) . decoder directions (times the input's
                             scale for SAEs that normalize their input)
    d/d hook_sae_acts_pre  = act'(pre) * d/d hook_sae_acts_post (TopK: 1 on the kept latents)
    d/d hook_sae_recons = d/d hook_sae_error = d/d hook_sae_input = the gradient at the site

Edits follow the same chain: an edited input is what the SAE reads and what the site carries on,
edited pre-activations are activated again (a TopK SAE re-selects its k), edited latents are
decoded, and an edited reconstruction or error is added as edited.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch

from tdb_core import checks
from tdb_core.adapter import Adapter
from tdb_core.errors import InvalidArgumentError
from tdb_core.hooks import HookContext, Splice
from tdb_core.sae.model import SparseAutoencoder
from tdb_core.schema import ModelSchema, SiteInfo, SiteKind, sae_site_name

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class AttachedSae:
    """An SAE reading one site of one model."""

    id: str
    sae: SparseAutoencoder
    site: SiteInfo
    source: str

    def name(self, hook: str) -> str:
        return sae_site_name(self.id, hook)

    @property
    def input(self) -> str:
        return self.name("hook_sae_input")

    @property
    def acts_pre(self) -> str:
        return self.name("hook_sae_acts_pre")

    @property
    def acts(self) -> str:
        return self.name("hook_sae_acts_post")

    @property
    def recons(self) -> str:
        return self.name("hook_sae_recons")

    @property
    def error(self) -> str:
        return self.name("hook_sae_error")

    @cached_property
    def kinds(self) -> tuple[SiteKind, ...]:
        sizes = (("latent", self.sae.d_sae), ("d_in", self.sae.d_in))
        s = self.site.name
        return (
            SiteKind(
                self.input,
                False,
                ("pos", "d_in"),
                f"input of SAE '{self.id}' ({s})",
                "d_in",
                sizes=sizes,
                anchor=s,
            ),
            SiteKind(
                self.acts_pre,
                False,
                ("pos", "latent"),
                f"pre-activations of SAE '{self.id}' on {s}",
                "latent",
                sizes=sizes,
                anchor=s,
            ),
            SiteKind(
                self.acts,
                False,
                ("pos", "latent"),
                f"latents of SAE '{self.id}' on {s}",
                "latent",
                sizes=sizes,
                anchor=s,
            ),
            SiteKind(
                self.recons,
                False,
                ("pos", "d_in"),
                f"reconstruction of {s} by SAE '{self.id}'",
                "d_in",
                sizes=sizes,
                anchor=s,
            ),
            SiteKind(
                self.error,
                False,
                ("pos", "d_in"),
                f"{s} minus its reconstruction by SAE '{self.id}'",
                "d_in",
                sizes=sizes,
                anchor=s,
            ),
        )

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(k.key for k in self.kinds)

    # -- where latents write, for attribution
    def residual_directions(self, adapter: Adapter) -> torch.Tensor | None:
        """Each latent's decoder direction mapped into the residual stream ``[d_sae, d_model]``,
        or None when the SAE's site does not write the residual stream linearly."""
        D = self.sae.decoder_directions().float()  # [d_sae, d_in]
        key, layer = self.site.kind.key, self.site.layer
        if key in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
            return D
        if key in {"hook_attn_out", "hook_mlp_out"}:
            return D
        if key == "mlp.hook_post" and layer is not None and adapter.post_mlp_norm(layer) is None:
            return D @ adapter.W_out(layer).float()
        if key == "attn.hook_z" and layer is not None and adapter.post_attn_norm(layer) is None:
            w_o = adapter.W_O(layer).float()  # [H, d_head, d_model]
            return torch.einsum("shd,hdm->sm", D.view(D.shape[0], *w_o.shape[:2]), w_o)
        return None

    def splice(self) -> Splice:
        """The function the hook engine calls at the SAE's input site."""
        return _make_splice(self)


def _site_width(schema: ModelSchema, site: SiteInfo) -> tuple[int, ...]:
    return tuple(schema.dim_size(site, d, 1) for d in site.kind.dims if d != site.kind.pos_dim)


def attach(
    schema: ModelSchema, sae_id: str, sae: SparseAutoencoder, source: str, site: str | None = None
) -> AttachedSae:
    """Validate an SAE against a model's schema; the site comes from ``site`` or the SAE's config."""
    if not _ID.match(sae_id):
        raise InvalidArgumentError(
            f"SAE id {checks.quote(sae_id)} is not allowed; use 1-64 letters, digits, '_', '.', '-'"
        )
    name = site or sae.site
    if not name:
        raise InvalidArgumentError(
            f"SAE '{sae_id}' ({source}) does not name the site it reads; give one as ID=PATH@SITE"
        )
    info = schema.get(name)
    if info.layer is None and info.kind.key not in ("hook_embed", "ln_final.hook_normalized"):
        raise InvalidArgumentError(f"SAE '{sae_id}': site {checks.quote(name)} cannot carry an SAE")
    if info.kind.unit_dim is None or info.kind.pos_dim != "pos":
        raise InvalidArgumentError(
            f"SAE '{sae_id}': site '{name}' is not a per-token activation an SAE can read"
        )
    width = _site_width(schema, info)
    if math.prod(width) != sae.d_in or (len(width) > 1 and not sae.config.flatten_heads):
        raise InvalidArgumentError(
            f"SAE '{sae_id}' ({source}) reads d_in={sae.d_in} but site '{name}' has per-token "
            f"shape {list(width)} ({math.prod(width)} values); attach it to a site of width "
            f"{sae.d_in}"
        )
    return AttachedSae(sae_id, sae, info, source)


def _make_splice(att: AttachedSae) -> Splice:
    sae = att.sae
    sites = att.site_names

    def splice(ctx: HookContext, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        # the error term and the sum in the wider of the two dtypes: a bf16 SAE on a float32
        # model keeps the site within one float32 rounding and the input's gradient exact
        wide = torch.promote_types(dtype, sae.dtype)
        rows = x.reshape(*shape[:2], -1)  # [B, T, d_in]
        if not any(ctx.needs_graph(s) for s in sites):
            ctx.observe(att.input, rows)
            pre, z, stats = sae.encode_with_stats(rows)  # [B, T, d_sae]
            ctx.observe(att.acts_pre, pre)
            ctx.observe(att.acts, z)
            if ctx.wants(att.recons) or ctx.wants(att.error):
                recon = sae.decode(z, stats)
                ctx.observe(att.recons, recon)
                ctx.observe(att.error, rows.to(wide) - recon.to(wide))
            return x  # reading latents never changes the model
        # Any SAE site edited or differentiated: the site becomes recon + error, every SAE site a
        # tensor of that graph. The latents are their own node: the error term uses the clean
        # ``pre``/``z`` themselves, and the latents are a fresh activation of a copy of ``pre``,
        # so the gradient at pre-activations and latents is the decoder path's alone (total effect
        # = z * W_dec . grad) while the site's input still gets its exact gradient (the error
        # term's path and the decode path through the copy add up to the identity).
        rows = ctx.point(att.input, rows)
        pre, z, stats = sae.encode_with_stats(rows)  # [B, T, d_sae]
        error = ctx.point(att.error, rows.to(wide) - sae.decode(z, stats).to(wide))  # in the graph
        pre_new = ctx.point(att.acts_pre, pre.clone())
        z_new = ctx.point(att.acts, sae.activate(rows, pre_new, stats))
        recon = ctx.point(att.recons, sae.decode(z_new, stats))
        return (recon.to(wide) + error).to(dtype).reshape(shape)

    return splice


class SaeRegistry:
    """The SAEs attached to one model, by id, and the model's schema with their sites.

    Attaching replaces the registry's dict and schema as a whole (copy on write), so a request
    that read them sees one consistent state while another attaches.
    """

    def __init__(self, model: str, schema: ModelSchema, device: torch.device) -> None:
        self.model = model
        self.device = device
        self._base = schema
        self._schema = schema
        self._by_id: dict[str, AttachedSae] = {}

    @property
    def schema(self) -> ModelSchema:
        """The model's schema plus the sites of every attached SAE."""
        return self._schema

    def attach(
        self, sae_id: str, sae: SparseAutoencoder, source: str, site: str | None = None
    ) -> AttachedSae:
        """Attach an SAE (validated against the schema); its latents become sites and nodes."""
        if sae_id in self._by_id:
            raise InvalidArgumentError(
                f"an SAE with id '{sae_id}' is already attached to model '{self.model}'"
            )
        attached = attach(self._base, sae_id, sae.to(self.device), source, site)
        self._by_id = {**self._by_id, sae_id: attached}
        self._schema = self._schema.with_kinds(attached.kinds)
        return attached

    def get(self, sae_id: str) -> AttachedSae:
        """The attached SAE; NotFoundError names the attached ones."""
        return checks.lookup(self._by_id, sae_id, "SAE", f"attached to model '{self.model}'")

    def values(self) -> list[AttachedSae]:
        return list(self._by_id.values())

    def __contains__(self, sae_id: object) -> bool:
        return sae_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_id))

    def __len__(self) -> int:
        return len(self._by_id)
