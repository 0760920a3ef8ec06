"""Python client for the TDB interpretability service (gRPC). Needs grpcio, protobuf and numpy only.

    from tdb_client import TdbClient
    with TdbClient("localhost:50051") as c:
        out = c.forward("The quick brown fox", capture=["blocks.0.mlp.hook_post"])
        out.activations["blocks.0.mlp.hook_post"].shape   # (1, n_tokens, d_mlp)
"""

from tdb_client import interventions, losses
from tdb_client.client import TdbClient
from tdb_client.errors import TdbClientError
from tdb_client.interventions import Selector, parse_selector
from tdb_client.types import (AblateResult, AblateRow, AttributeResult, Capture, ForwardResult,
                              EncodeResult, ModelInfo, ModelSummary, Node, NodeRow, NodeValues,
                              PatchSweepResult, SaeInfo, SiteInfo, TokenScore, TopLogits)

__all__ = [
    "TdbClient", "TdbClientError", "Capture", "ForwardResult", "ModelInfo", "ModelSummary",
    "SiteInfo", "TopLogits", "AblateResult", "AblateRow", "PatchSweepResult",
    "AttributeResult", "EncodeResult", "SaeInfo", "Node", "NodeRow", "NodeValues", "TokenScore", "losses", "Selector", "parse_selector", "interventions",
]
