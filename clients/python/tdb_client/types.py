"""Plain result types returned by the client (NumPy arrays, no protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tdb_client import nodes
from tdb_client.nodes import NodeKind


@dataclass(frozen=True)
class SiteInfo:
    name: str
    kind: str
    layer: int | None
    dims: tuple[str, ...]
    sizes: tuple[int, ...]  # -1 for position axes
    unit_dim: str | None
    meaning: str


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    source: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    device: str
    dtype: str
    sites: tuple[SiteInfo, ...]
    saes: tuple[SaeInfo, ...] = ()
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def site(self, name: str) -> SiteInfo:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass(frozen=True)
class ModelSummary:
    name: str
    architecture: str
    source: str
    is_default: bool


@dataclass(frozen=True)
class TopLogits:
    position: int
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    logits: tuple[float, ...]
    probs: tuple[float, ...]


@dataclass(frozen=True)
class Capture:
    """A capture request: a site (or glob) and optional server-side reductions.

    top_k_mode: "largest", "smallest" or "abs". dtype: "float32", "float16" or "bfloat16".
    """

    site: str
    positions: tuple[int, ...] | None = None
    units: tuple[int, ...] | None = None
    top_k: int | None = None
    top_k_mode: str = "largest"
    dtype: str | None = None


@dataclass
class ForwardResult:
    """What Forward returned.

    ``activations[site]`` is ``[batch, *site shape]`` (reduced as requested), e.g.
    ``blocks.0.attn.hook_pattern`` -> ``[batch, head, q_pos, k_pos]``. With top-k,
    ``indices[site]`` holds the indices on the last axis. ``positions[site]`` gives the absolute
    position of each kept position, per prompt.
    """

    model: str
    token_ids: list[list[int]]
    tokens: list[list[str]]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    positions: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    top_logits: list[list[TopLogits]] = field(default_factory=list)
    # with a loss: d(loss)/d(site) per grad capture (reduced like activations) and each
    # prompt's loss value
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    grad_indices: dict[str, np.ndarray] = field(default_factory=dict)
    loss_values: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class AblateRow:
    name: str
    top: TopLogits
    logit_diff: float | None
    logit_diff_change: float | None
    kl_from_baseline: float
    target_prob: float | None


@dataclass
class AblateResult:
    """Rows: the baseline first, then one per intervention set. ``activations[site]`` has the
    row as its batch axis."""

    model: str
    tokens: list[str]
    token_ids: list[int]
    position: int
    rows: list[AblateRow]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    grads: dict[str, np.ndarray] = field(default_factory=dict)  # batch axis = rows
    loss_values: list[float] = field(default_factory=list)  # per row

    def row(self, name: str) -> AblateRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass
class PatchSweepResult:
    """``recovered[i, j]``: normalized logit difference recovered by patching layer
    ``layers[i]`` at column ``columns[j]`` (a position or a head)."""

    model: str
    site: str
    by: str
    layers: list[int]
    columns: list[int]
    column_labels: list[str]
    recovered: np.ndarray
    logit_diffs: np.ndarray
    clean_logit_diff: float
    corrupted_logit_diff: float
    clean_tokens: list[str]
    corrupted_tokens: list[str]
    method: str = "exact"  # or "attribution" (AtP estimate)


@dataclass(frozen=True)
class Node:
    """A node-table node. ``key`` names it everywhere: pass it unchanged to
    ``TdbClient.explain`` (its unit is explained) or to ``interventions.zero`` (its write is
    removed); :mod:`tdb_client.nodes` parses it. ``name`` is a short display label."""

    key: str
    kind: NodeKind
    site: str
    unit: int | None
    position: int | None
    key_position: int | None
    layer: int | None
    sae: str | None
    name: str

    @property
    def family(self) -> str:
        """Deprecated: the kind's string (``embedding``, ``mlp_neuron``, ...); use ``kind``."""
        return str(self.kind)

    @property
    def index(self) -> int:
        """Deprecated: the unit (0 for embeddings); use ``unit``."""
        return self.unit if self.unit is not None else 0

    def node(self) -> nodes.Node:
        """The parsed node (``.unit_node()``, ``.at(pos)``, ``.selector()``)."""
        return nodes.Node(self.site, self.unit, self.position, self.key_position)


@dataclass(frozen=True)
class NodeValues:
    activation: float
    write_magnitude: float
    direct_effect: float
    total_effect: float


@dataclass(frozen=True)
class TokenScore:
    token_id: int
    token: str
    score: float


@dataclass(frozen=True)
class NodeRow:
    node: Node
    values: list[NodeValues]  # one per prompt row
    upvoted: list[TokenScore]
    downvoted: list[TokenScore]
    input_tokens: list[TokenScore]
    explanation: Explanation | None = None


@dataclass
class AttributeResult:
    model: str
    tokens: list[list[str]]
    loss_values: list[float]
    rows: list[NodeRow]
    token_attribution: list[list[float]]
    bias_direct_effect: list[float]
    constant: list[float]
    loss_position: int
    nodes_ranked: int


@dataclass(frozen=True)
class SaeInfo:
    id: str
    model: str
    site: str
    kind: str
    d_in: int
    d_sae: int
    input_norm: str
    k: int | None
    source: str
    sites: tuple[str, ...]


@dataclass
class EncodeResult:
    """Per-token top-k latents ``[batch, pos, k]`` (values and indices), optional dense latents,
    L0 and mean squared reconstruction error per token."""

    model: str
    sae: str
    tokens: list[list[str]]
    top_values: np.ndarray
    top_indices: np.ndarray
    dense: np.ndarray | None
    l0: np.ndarray
    mse: np.ndarray
    explained_variance: float
    mean_l0: float


LimitValue = int | float | bool | str | None  # None: the limit is off


@dataclass(frozen=True)
class ModelCapabilities:
    """One model of a server: where it runs, its SAEs, and its per-request limits."""

    name: str
    architecture: str
    source: str
    device: str
    dtype: str
    is_default: bool
    n_layers: int
    n_ctx: int
    d_model: int
    d_vocab: int
    saes: tuple[SaeInfo, ...]
    limits: dict[str, LimitValue]  # e.g. {"max_tokens_per_prompt": 1024, "max_prompts": 64, ...}


@dataclass(frozen=True)
class MethodInfo:
    name: str  # e.g. "Forward"
    path: str  # e.g. "/tdb.v1.InferenceService/Forward"
    input_type: str
    output_type: str
    client_streaming: bool
    server_streaming: bool


@dataclass(frozen=True)
class ServerInfo:
    """What a server is and can do (``TdbClient.server_info()``)."""

    version: str
    library_versions: dict[str, str]
    models: tuple[ModelCapabilities, ...]
    default_model: str
    features: dict[str, bool]  # auth, tls, mutual_tls, metrics, explanation_store, load_sae
    services: dict[str, tuple[MethodInfo, ...]]  # full service name -> its RPCs
    server_limits: dict[str, LimitValue]  # e.g. {"max_request_bytes": 67108864}

    def model(self, name: str | None = None) -> ModelCapabilities:
        """The named model (the default one for None)."""
        want = name or self.default_model
        for m in self.models:
            if m.name == want:
                return m
        raise KeyError(want)


@dataclass(frozen=True)
class Explanation:
    """A stored explanation; ``score`` is the pooled correlation (neurons, latents) or ROC AUC
    (heads), None with ``score_reason`` when it could not be scored."""

    model: str
    sae: str
    node: str
    method: str
    explainer: str
    explanation: str
    score: float | None
    score_reason: str
    scores: dict[str, Any]
    records_used: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ActivationRecord:
    tokens: list[str]
    activations: list[float]


@dataclass(frozen=True)
class NodeRecords:
    node: str
    kind: str
    density: float
    max_activation: float
    top: list[ActivationRecord]
    random: list[ActivationRecord]
    n_positions: int
    neuron_record_json: str


@dataclass(frozen=True)
class ExplainProgress:
    node: str
    phase: str
    done: int
    total: int
    message: str


@dataclass(frozen=True)
class WeightView:
    """A folded view for ``TdbClient.weights``: ``kind`` is "neuron_logits" (unit = neuron),
    "head_ov" or "head_qk" (unit = head); heads take an optional token pair."""

    kind: str
    layer: int
    unit: int
    source_token: int | None = None
    destination_token: int | None = None


@dataclass
class Weights:
    """Parameters (and views) by name: ``values[name]`` in the schema's layout, ``dims[name]``
    its axis names, ``kept[name]`` the head or neuron indices kept when sliced."""

    model: str
    values: dict[str, np.ndarray] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]


@dataclass(frozen=True)
class LensCell:
    layer: int
    position: int
    token_ids: list[int]
    tokens: list[str]
    logits: list[float]
    probs: list[float]


@dataclass
class LensResult:
    """The logit-lens grid: ``cell(layer, position)`` or ``grid[i][j]`` for ``layers[i]`` at
    ``positions[j]``; ``tokens`` are the prompt's tokens."""

    model: str
    site: str
    scale: str
    tokens: list[str]
    layers: list[int]
    positions: list[int]
    grid: list[list[LensCell]]

    def cell(self, layer: int, position: int) -> LensCell:
        return self.grid[self.layers.index(layer)][self.positions.index(position)]
