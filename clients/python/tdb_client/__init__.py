"""Python client for the TDB interpretability service (gRPC). Needs grpcio, protobuf and numpy only.

from tdb_client import TdbClient
with TdbClient("localhost:50051") as c:
    out = c.forward("The quick brown fox", capture=["blocks.0.mlp.hook_post"])
    out.activations["blocks.0.mlp.hook_post"].shape   # (1, n_tokens, d_mlp)
"""

from tdb_client import generation, interventions, losses, nodes
from tdb_client.channel import TlsConfig
from tdb_client.client import TdbClient
from tdb_client.errors import TdbClientError
from tdb_client.interventions import Intervention
from tdb_client.nodes import NodeKeyError, NodeKind, Selector, parse_node, parse_selector
from tdb_client.types import (
    AblateResult,
    AblateRow,
    ActivationRecord,
    AttributeResult,
    Capture,
    EncodeResult,
    ExplainProgress,
    Explanation,
    ForwardResult,
    LensCell,
    LensResult,
    MethodInfo,
    ModelCapabilities,
    ModelInfo,
    ModelSummary,
    Node,
    NodeRecords,
    NodeRow,
    NodeValues,
    PatchSweepResult,
    SaeInfo,
    ServerInfo,
    SiteInfo,
    TokenScore,
    TopLogits,
    UnknownModelError,
    Weights,
    WeightView,
)

__all__ = [
    "AblateResult",
    "AblateRow",
    "ActivationRecord",
    "AttributeResult",
    "Capture",
    "EncodeResult",
    "ExplainProgress",
    "Explanation",
    "ForwardResult",
    "Intervention",
    "LensCell",
    "LensResult",
    "MethodInfo",
    "ModelCapabilities",
    "ModelInfo",
    "ModelSummary",
    "Node",
    "NodeKeyError",
    "NodeKind",
    "NodeRecords",
    "NodeRow",
    "NodeValues",
    "PatchSweepResult",
    "SaeInfo",
    "Selector",
    "ServerInfo",
    "SiteInfo",
    "TdbClient",
    "TdbClientError",
    "TlsConfig",
    "TokenScore",
    "TopLogits",
    "UnknownModelError",
    "WeightView",
    "Weights",
    "generation",
    "interventions",
    "losses",
    "nodes",
    "parse_node",
    "parse_selector",
]
