"""Building interventions, and the selector syntax used by the CLI and node ids.

Selector syntax: ``SITE`` optionally followed by ``[...]`` with comma-separated entries:

    blocks.1.mlp.hook_post[42]            unit 42 (neuron)
    blocks.1.attn.hook_z[head=3]          head 3 at every position
    blocks.1.attn.hook_z[head=3,pos=-1]   head 3 at the last position
    blocks.0.hook_resid_pre[pos=0:4]      positions 0..3, every channel
    blocks.1.mlp.hook_post[7|9,pos=2]     units 7 and 9 at position 2

Unit keys (``unit``, ``neuron``, ``head``, ``channel``, ``latent``, ``token``) all select on the
site's unit axis; ``pos`` selects positions. Values are integers, ``a:b`` ranges (b exclusive) or
``|``-separated lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tdb.v1 import common_pb2 as cpb
from tdb_client.tensors import from_numpy

UNIT_KEYS = ("unit", "neuron", "head", "channel", "latent", "token")
_SELECTOR = re.compile(r"^\s*([^\[\]\s]+)\s*(?:\[(.*)\])?\s*$")


@dataclass(frozen=True)
class Selector:
    site: str
    units: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None


def _ints(text: str) -> list[int]:
    out: list[int] = []
    for raw in text.split("|"):
        part = raw.strip()
        if ":" in part:
            a, b = part.split(":", 1)
            out.extend(range(int(a), int(b)))
        else:
            out.append(int(part))
    return out


def parse_selector(text: str) -> Selector:
    """Parse ``SITE[entries]``; raises ValueError with the accepted syntax."""
    m = _SELECTOR.match(text)
    if not m:
        raise ValueError(f"cannot parse selector {text!r}; expected SITE or SITE[head=3,pos=-1]")
    site, body = m.group(1), m.group(2)
    units: list[int] | None = None
    positions: list[int] | None = None
    if body:
        try:
            for raw in body.split(","):
                entry = raw.strip()
                if not entry:
                    continue
                key, _, value = entry.rpartition("=")
                key = key.strip() or "unit"
                if key in UNIT_KEYS:
                    units = (units or []) + _ints(value)
                elif key in ("pos", "position", "positions"):
                    positions = (positions or []) + _ints(value)
                else:
                    raise ValueError(f"unknown key {key!r}")
        except ValueError as e:
            raise ValueError(
                f"cannot parse selector {text!r} ({e}); keys: pos, "
                f"{', '.join(UNIT_KEYS)}; values: 3, 0:4 or 1|3"
            ) from None
    return Selector(
        site,
        tuple(units) if units is not None else None,
        tuple(positions) if positions is not None else None,
    )


def _base(selector: str | Selector, backward: bool) -> cpb.Intervention:
    sel = parse_selector(selector) if isinstance(selector, str) else selector
    msg = cpb.Intervention(
        site=sel.site, positions=list(sel.positions or ()), units=list(sel.units or ())
    )
    setattr(msg, "pass", cpb.PASS_BACKWARD if backward else cpb.PASS_FORWARD)
    return msg


def zero(selector: str | Selector, backward: bool = False) -> cpb.Intervention:
    """Set the selection to 0 (zero-ablation)."""
    msg = _base(selector, backward)
    msg.zero.SetInParent()
    return msg


def set_value(selector: str | Selector, value: float, backward: bool = False) -> cpb.Intervention:
    """Set the selection to a constant."""
    msg = _base(selector, backward)
    msg.set_value.value = value
    return msg


def set_tensor(
    selector: str | Selector, values: np.ndarray | Sequence[float], backward: bool = False
) -> cpb.Intervention:
    """Set the selection to values broadcastable to ``[positions, units, rest...]``."""
    msg = _base(selector, backward)
    msg.set_tensor.CopyFrom(from_numpy(np.asarray(values, dtype=np.float32)))
    return msg


def scale(selector: str | Selector, factor: float, backward: bool = False) -> cpb.Intervention:
    """Multiply the selection by ``factor``."""
    msg = _base(selector, backward)
    msg.scale.factor = factor
    return msg


def add(
    selector: str | Selector,
    vector: np.ndarray | Sequence[float],
    coeff: float = 1.0,
    backward: bool = False,
) -> cpb.Intervention:
    """Add ``coeff * vector`` (steering)."""
    msg = _base(selector, backward)
    msg.add.vector.CopyFrom(from_numpy(np.asarray(vector, dtype=np.float32)))
    msg.add.coeff = coeff
    return msg


def mean_over_positions(selector: str | Selector) -> cpb.Intervention:
    """Replace the selection by the site's mean over this prompt's positions."""
    msg = _base(selector, False)
    msg.mean_over_positions.SetInParent()
    return msg


def mean_over_reference(selector: str | Selector) -> cpb.Intervention:
    """Replace the selection by the site's mean over the request's reference prompts."""
    msg = _base(selector, False)
    msg.mean_over_reference.SetInParent()
    return msg


def patch(selector: str | Selector, source: int = 0) -> cpb.Intervention:
    """Replace the selection by the same site of source prompt ``source`` (activation patching)."""
    msg = _base(selector, False)
    msg.patch.source = source
    return msg
