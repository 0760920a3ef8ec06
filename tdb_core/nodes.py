"""Nodes: the units a user points at, and the one key that names them everywhere.

A :class:`Node` is ``(site, unit, position, key_position)``:

    site          a concrete schema site name: ``blocks.1.mlp.hook_post``,
                  ``sae.toy-res.hook_sae_acts_post``
    unit          an index on the site's unit axis (neuron, head, latent, channel), or None
    position      a token position (the query position for attention scores/pattern), or None:
                  a unit-level node (the neuron itself, as explanations use); negative positions
                  count from the prompt's end, as everywhere in the API
    key_position  a key position (attention scores/pattern only), or None

Its key is ``SITE[PARTS]``, PARTS comma-separated in this order: the unit as a bare integer,
``pos=P``, ``key=K``; parts that are None are left out, and a node with none is just ``SITE``::

    blocks.1.mlp.hook_post[42]                  neuron 42 (unit-level: the explanation catalog's key)
    blocks.1.mlp.hook_post[42,pos=5]            neuron 42 at token 5 (a node-table row)
    blocks.0.attn.hook_pattern[3,pos=14]        head 3's write at query position 14
    blocks.0.attn.hook_pattern[3,pos=14,key=2]  head 3, query 14, key 2 (a head pair)
    sae.toy-res.hook_sae_acts_post[7,pos=5]     SAE latent 7 at token 5
    blocks.0.hook_resid_pre[pos=5]              the embedding at token 5 (token + position)

Its :class:`NodeKind` follows from the site (the kinds are Attribute's ``families`` strings).

A node key is a :class:`Selector` that picks one unit at one position at most. Selectors (the
``site``, ``units``, ``positions`` and ``key_positions`` of an intervention) are the superset:
lists ``7|9``, ranges ``0:4`` (end excluded), negative positions, unit aliases (``head=``,
``neuron=``, ``unit=``, ``latent=``, ``channel=``, ``token=``), ``pos=`` (or ``position=``) and
``key=``, and site globs. Printing is canonical: the bare unit, ``pos=``, ``key=``, runs of three
or more consecutive integers as ranges. Zeroing a node's selector removes exactly that node's
write (zeroing ``attn.hook_pattern[h, q]`` zeroes ``z[q, h]``; zeroing ``[h, q, k]`` removes key
``k``'s share of it).

The node-table names of earlier releases (``mlp_L1_N42@5``, ``attn_L0_H0@5``,
``attn_L0_H0@14<-2``, ``sae_ID_F7@5``, ``embed@5``) still parse, with a DeprecationWarning; they
remain the short display :attr:`Node.label`.

``clients/python/tdb_client/nodes.py`` and ``clients/node/nodes.js`` mirror this module; the case
table ``tests/data/node_keys.json`` holds all three to the same parsing and printing.
"""

from __future__ import annotations

import enum
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from tdb_core.errors import InvalidArgumentError
from tdb_core.schema import sae_site_name, site_name, split_sae_site


class NodeKind(enum.StrEnum):
    """What a node is; the values are Attribute's ``families`` strings."""

    EMBEDDING = "embedding"  # blocks.0.hook_resid_pre without a unit: token + position embedding
    MLP_NEURON = "mlp_neuron"  # mlp.hook_post with a unit
    ATTN_HEAD = "attn_head"  # attn.hook_pattern with a unit, no key position
    ATTN_HEAD_PAIR = "attn_head_pair"  # attn.hook_pattern with a unit and a key position
    SAE_LATENT = "sae_latent"  # sae.ID.hook_sae_acts_post with a unit
    UNIT = "unit"  # any other site, with a unit
    VECTOR = "vector"  # any other site, without a unit


GRAMMAR = (
    "a node key is SITE or SITE[UNIT,pos=P,key=K] (parts optional, in this order), e.g. "
    "'blocks.1.mlp.hook_post[42,pos=5]' or 'blocks.0.attn.hook_pattern[3,pos=14,key=2]'"
)
SELECTOR_GRAMMAR = (
    "a selector is SITE or SITE[UNITS,pos=POSITIONS,key=KEYS], each a number, a range a:b "
    "(b excluded) or a list 1|3, e.g. 'blocks.1.attn.hook_z[head=3,pos=-1]'; units may be "
    "written unit=, head=, neuron=, latent=, channel= or token=, positions pos= or position="
)
UNIT_NAMES = ("unit", "head", "neuron", "latent", "channel", "token")
POSITION_NAMES = ("pos", "position", "positions")
KEY_NAMES = ("key",)

EMBEDDING_SITE = site_name("hook_resid_pre", 0)
_SELECTOR = re.compile(r"^([^\[\]\s]+)\s*(?:\[(.*)\])?$", re.DOTALL | re.ASCII)
_WS = " \t\n\r\f\v"  # ASCII whitespace, as the other clients strip
_SITE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SITE_GLOB = re.compile(r"^[A-Za-z0-9_.\-*?]+$")
_INT = re.compile(r"^-?[0-9]+$")
_RANGE = re.compile(r"^(-?[0-9]+)[ \t\n\r\f\v]*:[ \t\n\r\f\v]*(-?[0-9]+)$")
_LAYER = re.compile(r"^blocks\.([0-9]+)\.")
_MLP_POST = re.compile(r"^blocks\.[0-9]+\.mlp\.hook_post$")
_PATTERN = re.compile(r"^blocks\.[0-9]+\.attn\.hook_pattern$")
_KEYED = re.compile(r"^blocks\.[0-9]+\.attn\.(hook_pattern|hook_attn_scores)$")
_LEGACY = (
    (re.compile(r"^embed@([0-9]+)$"), "embed"),
    (re.compile(r"^mlp_L([0-9]+)_N([0-9]+)@([0-9]+)$"), "mlp"),
    (re.compile(r"^attn_L([0-9]+)_H([0-9]+)@([0-9]+)(?:<-([0-9]+))?$"), "attn"),
    (re.compile(r"^sae_([A-Za-z0-9_.\-]+)_F([0-9]+)@([0-9]+)$"), "sae"),
)


def _error(what: str, text: str, grammar: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"cannot parse '{text}': {what}; {grammar}")


# --------------------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class Selector:
    """A site (or glob) and the units, positions and key positions selected on it (None: all).

    ``positions`` are query positions on attention scores/pattern sites; ``key_positions``
    select their key axis. Negative positions count from each prompt's end.
    """

    site: str
    units: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    key_positions: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """The canonical text of this selector."""
        parts = []
        if self.units is not None:
            parts.append(_format_ints(self.units))
        if self.positions is not None:
            parts.append("pos=" + _format_ints(self.positions))
        if self.key_positions is not None:
            parts.append("key=" + _format_ints(self.key_positions))
        return f"{self.site}[{','.join(parts)}]" if parts else self.site

    def __str__(self) -> str:
        return self.key

    def node(self) -> Node:
        """The node this selector names; InvalidArgumentError if it selects several."""
        return _node_of(self, self.key)


def _format_ints(values: Sequence[int]) -> str:
    """``1|3|5``, with runs of three or more consecutive integers as ranges (``0:4``)."""
    out: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{values[i]}:{values[j] + 1}")
        else:
            out.extend(str(v) for v in values[i : j + 1])
        i = j + 1
    return "|".join(out)


def _parse_ints(value: str, text: str, grammar: str) -> list[int]:
    out: list[int] = []
    for raw in value.split("|"):
        item = raw.strip(_WS)
        m = _RANGE.fullmatch(item)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if a >= b:
                raise _error(f"the range '{item}' is empty (a:b needs a < b)", text, grammar)
            out.extend(range(a, b))
        elif _INT.fullmatch(item):
            out.append(int(item))
        else:
            raise _error(f"'{item}' is not a number, a range a:b or a list 1|3", text, grammar)
    return out


def _legacy(text: str) -> Node | None:
    """The node an old display name (``mlp_L1_N42@5``, ...) names; None for any other text."""
    s = text.strip(_WS)
    for pattern, form in _LEGACY:
        m = pattern.fullmatch(s)
        if m is None:
            continue
        g = m.groups()
        if form == "embed":
            return Node(EMBEDDING_SITE, None, int(g[0]))
        if form == "mlp":
            return Node(site_name("mlp.hook_post", int(g[0])), int(g[1]), int(g[2]))
        if form == "attn":
            key = None if g[3] is None else int(g[3])
            return Node(site_name("attn.hook_pattern", int(g[0])), int(g[1]), int(g[2]), key)
        return Node(sae_site_name(g[0], "hook_sae_acts_post"), int(g[1]), int(g[2]))
    return None


def legacy_node(text: str) -> Node | None:
    """The node an old display name names (None for other text), without warning."""
    return _legacy(text)


def _warn_legacy(text: str, node: Node) -> None:
    warnings.warn(
        f"node name '{text.strip(_WS)}' is deprecated and will stop parsing in the next release; "
        f"use its key '{node.key}'",
        DeprecationWarning,
        stacklevel=3,
    )


def _parse(text: str, grammar: str, glob: bool) -> Selector:
    if not isinstance(text, str):
        raise InvalidArgumentError(f"expected a string, got {type(text).__name__}; {grammar}")
    m = _SELECTOR.fullmatch(text.strip(_WS))
    if m is None:
        raise _error("expected SITE or SITE[...]", text, grammar)
    site, body = m.group(1), m.group(2)
    if not (_SITE_GLOB if glob else _SITE).fullmatch(site):
        raise _error(f"'{site}' is not a site name", text, grammar)
    if body is None:
        return Selector(site)
    units: list[int] | None = None
    positions: list[int] | None = None
    keys: list[int] | None = None
    for raw in body.split(","):
        part = raw.strip(_WS)
        if not part:
            raise _error("an empty part between the brackets", text, grammar)
        name, eq, value = part.partition("=")
        name = name.strip(_WS) if eq else "unit"
        value = value if eq else part
        ints = _parse_ints(value, text, grammar)
        if name in UNIT_NAMES:
            if any(u < 0 for u in ints):
                raise _error("units are non-negative", text, grammar)
            units = (units or []) + ints
        elif name in POSITION_NAMES:
            positions = (positions or []) + ints
        elif name in KEY_NAMES:
            keys = (keys or []) + ints
        else:
            raise _error(f"unknown part '{name}='", text, grammar)
    return Selector(
        site,
        None if units is None else tuple(units),
        None if positions is None else tuple(positions),
        None if keys is None else tuple(keys),
    )


def parse_selector(text: str) -> Selector:
    """Parse a selector (a node key is one); InvalidArgumentError shows the grammar."""
    old = _legacy(text) if isinstance(text, str) else None
    if old is not None:
        _warn_legacy(text, old)
        return old.selector()
    return _parse(text, SELECTOR_GRAMMAR, glob=True)


def parse_node(text: str) -> Node:
    """Parse a node key (or, deprecated, an old display name); InvalidArgumentError shows the
    grammar."""
    old = _legacy(text) if isinstance(text, str) else None
    if old is not None:
        _warn_legacy(text, old)
        return old
    return _node_of(_parse(text, GRAMMAR, glob=False), text)


def _node_of(sel: Selector, text: str) -> Node:
    many = [
        what
        for what, values in (
            ("units", sel.units),
            ("positions", sel.positions),
            ("key positions", sel.key_positions),
        )
        if values is not None and len(values) != 1
    ]
    if many:
        raise _error(
            f"a node has one unit, one position and one key position at most, this names "
            f"several {' and '.join(many)} (a selector, not a node)",
            text,
            GRAMMAR,
        )

    def one(values: tuple[int, ...] | None) -> int | None:
        return None if values is None else values[0]

    unit, position, key = one(sel.units), one(sel.positions), one(sel.key_positions)
    _check(sel.site, unit, position, key, text)
    return Node(sel.site, unit, position, key)


def _check(site: str, unit: int | None, position: int | None, key: int | None, text: str) -> None:
    if not _SITE.fullmatch(site):
        raise _error(f"'{site}' is not a site name", text, GRAMMAR)
    if unit is not None and unit < 0:
        raise _error("units are non-negative", text, GRAMMAR)
    if key is not None and (unit is None or position is None or not _KEYED.fullmatch(site)):
        raise _error(
            "key= (a key position) needs an attention scores or pattern site, a unit (the head) "
            "and pos= (the query position)",
            text,
            GRAMMAR,
        )


# --------------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True)
class Node:
    """A node: ``(site, unit, position, key_position)`` (see the module docstring)."""

    site: str
    unit: int | None = None
    position: int | None = None
    key_position: int | None = None

    def __post_init__(self) -> None:
        _check(self.site, self.unit, self.position, self.key_position, _format_node(self))

    @property
    def key(self) -> str:
        """The canonical key, e.g. ``blocks.1.mlp.hook_post[42,pos=5]``."""
        return _format_node(self)

    def __str__(self) -> str:
        return self.key

    @property
    def kind(self) -> NodeKind:
        if self.unit is None:
            return NodeKind.EMBEDDING if self.site == EMBEDDING_SITE else NodeKind.VECTOR
        if _MLP_POST.fullmatch(self.site):
            return NodeKind.MLP_NEURON
        if _PATTERN.fullmatch(self.site):
            return NodeKind.ATTN_HEAD if self.key_position is None else NodeKind.ATTN_HEAD_PAIR
        sae = split_sae_site(self.site)
        if sae is not None and sae[1] == "hook_sae_acts_post":
            return NodeKind.SAE_LATENT
        return NodeKind.UNIT

    @property
    def layer(self) -> int | None:
        """The block of the node's site (None for sites outside the blocks, e.g. SAE sites)."""
        m = _LAYER.match(self.site)
        return None if m is None else int(m.group(1))

    @property
    def sae_id(self) -> str | None:
        """The SAE of an SAE site (ids may contain dots), else None."""
        sae = split_sae_site(self.site)
        return None if sae is None else sae[0]

    @property
    def label(self) -> str:
        """A short display name: ``mlp_L1_N42@5``, ``attn_L0_H3@14<-2``, ``sae_ID_F7@5``,
        ``embed@5`` (the node-table names of earlier releases); the key for other kinds."""
        kind, at = self.kind, "" if self.position is None else f"@{self.position}"
        if kind is NodeKind.EMBEDDING:
            return "embed" + at
        if kind is NodeKind.MLP_NEURON:
            return f"mlp_L{self.layer}_N{self.unit}{at}"
        if kind is NodeKind.ATTN_HEAD:
            return f"attn_L{self.layer}_H{self.unit}{at}"
        if kind is NodeKind.ATTN_HEAD_PAIR:
            return f"attn_L{self.layer}_H{self.unit}{at}<-{self.key_position}"
        if kind is NodeKind.SAE_LATENT:
            return f"sae_{self.sae_id}_F{self.unit}{at}"
        return self.key

    def unit_node(self) -> Node:
        """The node without its positions: what explanations describe."""
        return Node(self.site, self.unit)

    def at(self, position: int, key: int | None = None) -> Node:
        """This unit at a (query) position, and optionally a key position."""
        return Node(self.site, self.unit, position, key)

    def selector(self) -> Selector:
        """The intervention selector that picks exactly this node."""

        def one(v: int | None) -> tuple[int, ...] | None:
            return None if v is None else (v,)

        return Selector(self.site, one(self.unit), one(self.position), one(self.key_position))


def _format_node(n: Node) -> str:
    parts = []
    if n.unit is not None:
        parts.append(str(n.unit))
    if n.position is not None:
        parts.append(f"pos={n.position}")
    if n.key_position is not None:
        parts.append(f"key={n.key_position}")
    return f"{n.site}[{','.join(parts)}]" if parts else n.site


# -- constructors for the kinds with a fixed site


def embedding(position: int | None = None) -> Node:
    """The embedding (token + position) at a position: ``blocks.0.hook_resid_pre[pos=P]``."""
    return Node(EMBEDDING_SITE, None, position)


def mlp_neuron(layer: int, neuron: int, position: int | None = None) -> Node:
    return Node(site_name("mlp.hook_post", layer), neuron, position)


def attn_head(
    layer: int, head: int, position: int | None = None, key_position: int | None = None
) -> Node:
    """A head (at a query position; with a key position, a head pair)."""
    return Node(site_name("attn.hook_pattern", layer), head, position, key_position)


def sae_latent(sae_id: str, latent: int, position: int | None = None) -> Node:
    return Node(sae_site_name(sae_id, "hook_sae_acts_post"), latent, position)
