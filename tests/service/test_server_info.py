"""ServerInfo (capabilities) and Prometheus metrics, over real channels and real HTTP scrapes."""

from __future__ import annotations

import dataclasses
import urllib.request
from importlib import metadata

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from services.server import SERVICE_NAMES
from tdb_core.runner import ModelRunner
from tests.service.conftest import LIMITS


def test_server_info_reports_models_limits_features_and_rpcs(client, service):
    """ServerInfo names the package version, the model with its device and dtype, every field of
    the runner's Limits, the features that are on, and every service with every RPC exactly as the
    descriptors define them; reflection lists ServerService too."""
    info = client.server_info()
    assert info.version == metadata.version("tdb-service")
    assert info.library_versions["torch"] == metadata.version("torch")
    m = info.model()
    assert (m.name, m.architecture, m.device, m.dtype, m.is_default) == (
        "tiny",
        "GPT2LMHeadModel",
        "cpu",
        "float32",
        True,
    )
    assert (m.n_layers, m.d_model, m.n_ctx) == (2, 64, 64)
    assert m.limits == {
        **dataclasses.asdict(LIMITS),
        "max_text_bytes": LIMITS.max_text_bytes,  # derived limits are reported too
        "max_request_tokens": LIMITS.max_request_tokens,
    }
    # The service fixture keeps explanations in a SQLite store (the default catalog).
    assert info.features == {
        "auth": False,
        "tls": False,
        "mutual_tls": False,
        "metrics": False,
        "explanation_store": True,
        "load_sae": False,
    }
    assert info.server_limits["max_request_bytes"] > 0
    expected = {}
    for name in (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME):
        svc = descriptor_pool.Default().FindServiceByName(name)
        expected[name] = [
            (f"/{name}/{x.name}", x.input_type.full_name, x.server_streaming) for x in svc.methods
        ]
    got = {
        k: [(x.path, x.input_type, x.server_streaming) for x in v] for k, v in info.services.items()
    }
    assert got == expected
    assert ("/tdb.v1.InferenceService/Forward", "tdb.v1.ForwardRequest", True) in got[
        "tdb.v1.InferenceService"
    ]
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        assert "tdb.v1.ServerService" in ProtoReflectionDescriptorDatabase(ch).get_services()


def test_server_info_sees_saes_attached_at_runtime(tiny_loaded, tmp_path):
    """SAEs attached with LoadSae appear in the next ServerInfo; load_sae is on with an SAE root."""
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings
    from tdb_client import TdbClient
    from tdb_core.sae import save_sae
    from tests.service.test_sae_service import make_sae

    save_sae(make_sae(seed=1), tmp_path / "l1")
    svc = build_server(
        Settings(port=0, sae_root=str(tmp_path), limits=LIMITS),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    try:
        with TdbClient(f"127.0.0.1:{svc.port}") as c:
            before = c.server_info()
            assert before.features["load_sae"] and before.model().saes == ()
            c.load_sae("l1", "l1")
            (sae,) = c.server_info().model().saes
            assert (sae.id, sae.site, sae.d_sae) == ("l1", "blocks.1.hook_resid_pre", 80)
    finally:
        svc.stop(0)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_endpoint_counts_requests_latency_tokens_and_queue(tiny_loaded):
    """After a known mix of calls, /metrics reports exactly those requests by method and code,
    a latency histogram per method whose count matches, the tokens the server reported processing,
    queue depth per model (0 when idle; pushed values show), and process memory; device memory
    series exist exactly when CUDA is available."""
    import torch

    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings
    from tdb_client import TdbClient, TdbClientError

    svc = build_server(
        Settings(port=0, metrics_port=0, limits=LIMITS),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    try:
        assert svc.metrics is not None and svc.metrics.port
        with TdbClient(f"127.0.0.1:{svc.port}", timeout=30) as c:
            assert c.server_info().features["metrics"] is True
            outs = [c.forward(p, top_k=2) for p in ("Hello there", "When Mary and John went")]
            ids = c.tokenize(["a b c", "the dog"])
            with pytest.raises(TdbClientError):
                c.forward("x", model="nope")
        s = _scrape(svc.metrics.port)

        def get(name: str, **labels: str) -> float:
            return s[(name, tuple(sorted(labels.items())))]

        fwd = dict(service="tdb.v1.InferenceService", method="Forward")
        assert get("tdb_rpc_requests_total", code="OK", **fwd) == 2
        assert get("tdb_rpc_requests_total", code="NOT_FOUND", **fwd) == 1
        assert (
            get(
                "tdb_rpc_requests_total",
                service="tdb.v1.ServerService",
                method="ServerInfo",
                code="OK",
            )
            == 1
        )
        assert get("tdb_rpc_duration_seconds_count", code="OK", **fwd) == 2
        assert get("tdb_rpc_duration_seconds_bucket", code="OK", le="+Inf", **fwd) == 2
        assert 0 < get("tdb_rpc_duration_seconds_sum", code="OK", **fwd) < 60
        tokens = sum(len(o.token_ids[0]) for o in outs) + sum(len(x) for x in ids)
        assert get("tdb_tokens_processed_total", model="tiny") == tokens
        assert get("tdb_queue_depth", model="tiny") == 0
        assert get("process_resident_memory_bytes") > 10 * 2**20
        has_cuda = any(name.startswith("tdb_device_memory") for name, _ in s)
        assert has_cuda == torch.cuda.is_available()
        svc.metrics.queue_depth("other", 3)
        assert _scrape(svc.metrics.port)[("tdb_queue_depth", (("model", "other"),))] == 3
    finally:
        svc.stop(0)
    with pytest.raises(OSError):  # the endpoint stops with the server
        urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics.port}/metrics", timeout=2)
