"""Resolve user specs against a model's schema and a batch: validation happens here, before work.

Every check a request can fail — unknown site, unit or position out of range, operand of the wrong
shape, patch source of another length, result too large — is made here, so a bad request costs no
forward pass and gets an error that says what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tdb_core import checks, specs
from tdb_core.errors import InvalidArgumentError, ResourceExhaustedError
from tdb_core.hooks import BlockIndex, HookPlan, ResolvedCapture, ResolvedEdit
from tdb_core.schema import ModelSchema, SiteInfo

ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KEY_DIM = "k_pos"  # the axis an intervention's key_positions select


@dataclass(frozen=True)
class Batch:
    """Token rows of one forward pass: the prompts first, then patch sources, then references."""

    rows: tuple[tuple[int, ...], ...]
    n_prompts: int
    n_sources: int
    n_references: int

    @classmethod
    def plain(cls, rows: Sequence[Sequence[int]]) -> Batch:
        """A batch of prompts only (no sources or references), from token rows."""
        return cls(tuple(tuple(int(t) for t in r) for r in rows), len(rows), 0, 0)

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def source_row(self, i: int) -> int:
        return self.n_prompts + i

    def reference_rows(self) -> list[int]:
        start = self.n_prompts + self.n_sources
        return list(range(start, start + self.n_references))


def resolve_positions(
    positions: Sequence[int], lengths: Sequence[int], what: str = "position"
) -> list[list[int]]:
    """Absolute positions per row; negative ones count from each row's end."""
    return [[checks.position(p, n, what, row) for p in positions] for row, n in enumerate(lengths)]


def _axes(site: SiteInfo) -> tuple[int, int | None]:
    dims = site.kind.dims
    pos_axis = 1 + dims.index(site.kind.pos_dim)
    unit_axis = None if site.kind.unit_dim is None else 1 + dims.index(site.kind.unit_dim)
    return pos_axis, unit_axis


def check_position_count(schema: ModelSchema, positions: Sequence[int] | None, what: str) -> None:
    """A list of positions names each position of the context at most once: no longer than it."""
    if positions is not None:
        checks.count(
            positions,
            schema.dims.n_ctx,
            what,
            f"the model's context has {schema.dims.n_ctx} positions; name each at most once",
        )


def _check_units(schema: ModelSchema, site: SiteInfo, units: Sequence[int] | None) -> None:
    if units is None:
        return
    count = schema.unit_count(site)
    if count is None:
        raise InvalidArgumentError(
            f"site '{site.name}' has no unit axis; leave units empty (its dims are {site.dims})"
        )
    checks.count(
        units,
        count,
        f"units for site '{site.name}'",
        f"the site has {count} units; name each at most once",
    )
    checks.non_empty(units, f"units for site '{site.name}' (omit the list to select all)")
    for u in units:
        checks.index(u, count, checks.unit_noun(site.kind.unit_dim), f" of site '{site.name}'")


def _block_shape(
    schema: ModelSchema,
    site: SiteInfo,
    n_pos: int,
    n_units: int | None,
    max_len: int,
    n_keys: int | None = None,
) -> tuple[int, ...]:
    """Per-row shape of an edit's block: ``[P, (U,) rest...]``, rest in the site's dim order
    (the k_pos axis of attention scores/pattern cut to ``n_keys`` key positions if given)."""
    k = site.kind
    rest = [
        n_keys if d == KEY_DIM and n_keys is not None else schema.dim_size(site, d, max_len)
        for d in k.dims
        if d not in (k.pos_dim, k.unit_dim)
    ]
    if k.unit_dim is None:
        return (n_pos, *rest)
    units = n_units if n_units is not None else schema.dim_size(site, k.unit_dim, max_len)
    return (n_pos, units, *rest)


class Planner:
    """Builds a :class:`HookPlan` for one batch on one model."""

    def __init__(
        self, schema: ModelSchema, batch: Batch, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.schema = schema
        self.batch = batch
        self.device = device
        self.dtype = dtype
        self.plan = HookPlan()
        self.lengths = torch.tensor(batch.lengths, device=device)
        self._shared: dict[str, torch.Tensor] = {}  # per-batch tensors every capture reuses

    def _shared_tensor(self, key: str) -> torch.Tensor:
        """Tensors that depend only on the batch (prompt rows, real-position masks), made once."""
        t = self._shared.get(key)
        if t is None:
            n = self.batch.n_prompts
            if key == "rows":
                t = torch.arange(n, device=self.device)
            else:  # "valid": [n, T] positions inside each prompt
                positions = torch.arange(self.batch.max_len, device=self.device)
                t = positions[None, :] < self.lengths[:n, None]
            self._shared[key] = t
        return t

    # -- captures
    def add_capture(self, cap: specs.Capture) -> list[ResolvedCapture]:
        """Resolve a capture (a name or a glob) for the prompt rows."""
        if cap.dtype is not None and cap.dtype not in ALLOWED_DTYPES:
            raise InvalidArgumentError(
                f"capture dtype {cap.dtype} is not allowed; use float32, float16 or bfloat16"
            )
        if cap.top_k is not None:
            checks.top_k(cap.top_k.k, lo=1, what="capture top_k")
        check_position_count(self.schema, cap.positions, "capture positions")
        n = self.batch.n_prompts
        lengths = self.batch.lengths[:n]
        out = []
        for site in self.schema.resolve(cap.site):
            _check_units(self.schema, site, cap.units)
            pos_axis, unit_axis = _axes(site)
            pos = valid = key_valid = None
            if cap.positions is not None:
                checks.non_empty(cap.positions, "positions (omit the list to keep every one)")
                pos = torch.tensor(resolve_positions(cap.positions, lengths), device=self.device)
            elif len(set(lengths)) > 1 or len(lengths) < len(self.batch.rows):
                valid = self._shared_tensor("valid")  # [n, T]
            if site.kind.pos_dim == "q_pos" and (len(set(self.batch.lengths)) > 1):
                key_valid = self._shared_tensor("valid")
            units = None if cap.units is None else torch.tensor(cap.units, device=self.device)
            resolved = ResolvedCapture(
                site=site,
                index=BlockIndex(
                    rows=self._shared_tensor("rows"),
                    pos=pos,
                    units=units,
                    pos_axis=pos_axis,
                    unit_axis=unit_axis,
                ),
                valid=valid,
                top_k=cap.top_k,
                dtype=cap.dtype,
                out_device=torch.device("cpu"),
                key_valid=key_valid,
                n_rows=n,
                units_list=None if cap.units is None else tuple(cap.units),
            )
            self.plan.captures.setdefault(site.name, []).append(resolved)
            out.append(resolved)
        return out

    def capture_bytes(self) -> int:
        """Bytes the captured values (and top-k indices) will take on the wire."""
        total = 0
        for caps in self.plan.captures.values():
            for c in caps:
                total += self._capture_bytes(c)
        return total

    def _capture_bytes(self, c: ResolvedCapture) -> int:
        n = self.batch.n_prompts
        T = self.batch.max_len
        shape = []
        for d in c.site.kind.dims:
            size = self.schema.dim_size(c.site, d, T)
            if d == c.site.kind.pos_dim and c.index.pos is not None:
                size = c.index.pos.shape[1]
            if d == c.site.kind.unit_dim and c.index.units is not None:
                size = c.index.units.shape[0]
            shape.append(size)
        itemsize = torch.empty((), dtype=c.dtype or self.dtype).element_size()
        if c.top_k is not None:
            shape[-1] = min(shape[-1], c.top_k.k)
            return n * math.prod(shape) * (itemsize + 8)
        return n * math.prod(shape) * itemsize

    # -- interventions
    def add_intervention(self, iv: specs.Intervention, rows: Sequence[int]) -> None:
        """Resolve an intervention applying to the given prompt rows."""
        check_position_count(self.schema, iv.positions, "intervention positions")
        check_position_count(self.schema, iv.key_positions, "intervention key positions")
        for site in self.schema.resolve(iv.site):
            self._add_edit(site, iv, list(rows))

    def _key_positions(
        self, site: SiteInfo, iv: specs.Intervention, lengths: list[int]
    ) -> tuple[torch.Tensor | None, int | None]:
        """An edit's key positions resolved per row ``[R, K]``, and the site's k_pos axis."""
        if iv.key_positions is None:
            return None, None
        if KEY_DIM not in site.kind.dims or site.kind.unit_dim is None:
            raise InvalidArgumentError(
                "key positions select the k_pos axis of attention scores and pattern sites "
                f"(blocks.L.attn.hook_attn_scores, blocks.L.attn.hook_pattern); site "
                f"'{site.name}' has dims {list(site.dims)}"
            )
        if len(iv.key_positions) == 0:
            raise InvalidArgumentError("empty key position list; omit it to select every key")
        keys = resolve_positions(iv.key_positions, lengths, "key position")
        return torch.tensor(keys, device=self.device), 1 + site.kind.dims.index(KEY_DIM)

    def _add_edit(self, site: SiteInfo, iv: specs.Intervention, rows: list[int]) -> None:
        op = iv.op
        if iv.pass_ is specs.Pass.BACKWARD and isinstance(
            op, (specs.MeanOverPositions, specs.MeanOverReference, specs.PatchFrom)
        ):
            raise InvalidArgumentError(
                f"{type(op).__name__} cannot act on the backward pass; backward interventions "
                "are zero, set, scale and add"
            )
        _check_units(self.schema, site, iv.units)
        pos_axis, unit_axis = _axes(site)
        lengths = [self.batch.lengths[r] for r in rows]
        pos = None
        if iv.positions is not None:
            checks.non_empty(iv.positions, "positions (omit the list to select every one)")
            pos = torch.tensor(resolve_positions(iv.positions, lengths), device=self.device)
        keys, key_axis = self._key_positions(site, iv, lengths)
        n_pos = pos.shape[1] if pos is not None else self.batch.max_len
        n_units = None if iv.units is None else len(iv.units)
        n_keys = None if keys is None else keys.shape[1]
        block = _block_shape(self.schema, site, n_pos, n_units, self.batch.max_len, n_keys)
        tensor = None
        if isinstance(op, (specs.SetTensor, specs.AddVector)):
            tensor = op.tensor if isinstance(op, specs.SetTensor) else op.vector
            try:
                torch.broadcast_shapes(tuple(tensor.shape), block)  # type: ignore[no-untyped-call]
            except RuntimeError:
                raise InvalidArgumentError(
                    f"operand of shape {list(tensor.shape)} does not broadcast to the selected "
                    f"block of '{site.name}', shaped {list(block)} "
                    f"([positions, {', '.join(d for d in site.kind.dims if d != site.kind.pos_dim)}]"
                    " with the unit axis cut to the selected units)"
                ) from None
            if (
                iv.positions is None
                and len(tensor.shape) == len(block)
                and tensor.shape[0] != 1
                and len(set(self.batch.lengths)) > 1
            ):
                raise InvalidArgumentError(
                    "an operand with a position axis needs prompts of equal length or explicit "
                    "positions"
                )
            tensor = tensor.to(device=self.device, dtype=self.dtype)
        source_rows = reference_rows = None
        if isinstance(op, specs.PatchFrom):
            checks.index(
                op.source,
                self.batch.n_sources,
                "patch source",
                f" (the request has {self.batch.n_sources} source prompts)",
            )
            src = self.batch.source_row(op.source)
            for r in rows:
                if self.batch.lengths[src] != self.batch.lengths[r]:
                    raise InvalidArgumentError(
                        f"patch source {op.source} has {self.batch.lengths[src]} tokens but the "
                        f"prompt it patches has {self.batch.lengths[r]}; patching needs equal lengths"
                    )
            source_rows = torch.full((len(rows),), src, device=self.device)
        if isinstance(op, specs.MeanOverReference):
            if self.batch.n_references == 0:
                raise InvalidArgumentError("mean over reference prompts needs reference prompts")
            reference_rows = torch.tensor(self.batch.reference_rows(), device=self.device)
        units = None if iv.units is None else torch.tensor(iv.units, device=self.device)
        edit = ResolvedEdit(
            site=site,
            index=BlockIndex(
                rows=torch.tensor(rows, device=self.device),
                pos=pos,
                units=units,
                pos_axis=pos_axis,
                unit_axis=unit_axis,
                keys=keys,
                key_axis=key_axis,
            ),
            op=op,
            pass_=iv.pass_,
            tensor=tensor,
            source_rows=source_rows,
            reference_rows=reference_rows,
        )
        self.plan.edits.setdefault(site.name, []).append(edit)


def check_response_bytes(n_bytes: int, limit: int) -> None:
    if n_bytes > limit:
        raise ResourceExhaustedError(
            f"the response would be {n_bytes / 2**20:.1f} MiB, over the server's limit of "
            f"{limit / 2**20:.1f} MiB; select positions or units, use top_k or float16, or "
            "capture fewer sites"
        )
