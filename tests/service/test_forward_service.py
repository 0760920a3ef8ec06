"""ModelService and InferenceService.Forward over a real channel."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from tdb_client import Capture, TdbClientError
from tdb_client import interventions as iv
from tdb_core import specs
from tdb_core.ops.forward import forward

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_list_models_and_model_info_report_the_schema(client, tiny_runner):
    """ListModels names the model; GetModelInfo reports sizes and every site with shape/meaning."""
    models = client.list_models()
    assert [(m.name, m.architecture, m.is_default) for m in models] == [
        ("tiny", "GPT2LMHeadModel", True)
    ]
    info = client.model_info("tiny")
    d = tiny_runner.schema.dims
    assert (
        info.n_layers,
        info.n_heads,
        info.d_model,
        info.d_head,
        info.d_mlp,
        info.d_vocab,
        info.n_ctx,
    ) == (d.n_layers, d.n_heads, d.d_model, d.d_head, d.d_mlp, d.d_vocab, d.n_ctx)
    assert [s.name for s in info.sites] == [s.name for s in tiny_runner.schema.sites]
    pattern = info.site("blocks.1.attn.hook_pattern")
    assert pattern.dims == ("head", "q_pos", "k_pos") and pattern.sizes == (d.n_heads, -1, -1)
    assert pattern.layer == 1 and pattern.unit_dim == "head" and "softmax" in pattern.meaning
    assert info.site("logits").layer is None


def test_tokenize_and_detokenize_round_trip(client, tiny_runner):
    """Tokenize matches the model's tokenizer; Detokenize restores the text."""
    ids = client.tokenize(PROMPT)
    assert ids == tiny_runner.loaded.tokenizer(PROMPT)["input_ids"]
    assert client.detokenize(ids) == PROMPT
    assert client.tokenize(["a b", "c"]) == [client.tokenize("a b"), client.tokenize("c")]


def test_forward_over_grpc_equals_in_process(client, tiny_runner):
    """Forward through gRPC returns exactly the in-process runner's tokens, captures and top-k."""
    sites = ["blocks.*.attn.hook_pattern", "blocks.1.mlp.hook_post", "logits"]
    out = client.forward([PROMPT, "The quick brown fox"], capture=sites, top_k=5)
    ref = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT), specs.Prompt(text="The quick brown fox")),
            captures=tuple(specs.Capture(s) for s in sites),
            top_k=5,
        ),
    )
    assert out.token_ids == [list(p.token_ids) for p in ref.prompts]
    assert out.tokens == [list(p.tokens) for p in ref.prompts]
    for c in ref.captures:
        np.testing.assert_array_equal(out.activations[c.site], c.values.numpy())
        assert out.dims[c.site] == ("batch", *c.dims)
    assert out.activations["blocks.0.attn.hook_pattern"].shape[:2] == (2, 4)
    assert out.top_logits[1][0].token_ids == ref.top_logits[1][0].token_ids


def test_large_capture_streams_in_chunks(tiny_loaded, tiny_runner):
    """A capture far over 4 MiB (~18 MiB) arrives intact, streamed in ~1 MiB chunks, without
    raising any gRPC message-size limit."""
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings
    from tdb_client import TdbClient
    from tdb_core.runner import Limits, ModelRunner

    limits = Limits(max_tokens_per_prompt=64, max_prompts=16, max_response_bytes=64 * 2**20)
    svc = build_server(
        Settings(port=0, limits=limits), ModelRegistry([ModelRunner(tiny_loaded, limits)])
    )
    try:
        prompts = [[(7 * i + j) % 300 + 1 for j in range(64)] for i in range(16)]
        with TdbClient(f"127.0.0.1:{svc.port}") as c:
            out = c.forward(prompts, capture=["*"])
    finally:
        svc.stop(0)
    total = sum(a.nbytes for a in out.activations.values())
    assert total > 4 * 2**20
    ref = forward(
        tiny_runner,
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(token_ids=tuple(p)) for p in prompts),
            captures=(specs.Capture("*"),),
        ),
    )
    for c in ref.captures:
        np.testing.assert_array_equal(out.activations[c.site], c.values.numpy())


def test_reductions_and_dtypes_travel(client):
    """Top-k indices, positions, float16 and bfloat16 values arrive decoded."""
    out = client.forward(
        PROMPT,
        capture=[
            Capture("blocks.0.mlp.hook_post", positions=(-1,), top_k=3),
            Capture("blocks.1.hook_resid_post", positions=(0, -1), units=(0, 5), dtype="bfloat16"),
            Capture("blocks.1.attn.hook_z", dtype="float16"),
        ],
    )
    assert out.activations["blocks.0.mlp.hook_post"].shape == (1, 1, 3)
    assert out.indices["blocks.0.mlp.hook_post"].dtype == np.int64
    n = len(out.token_ids[0])
    assert out.positions["blocks.1.hook_resid_post"].tolist() == [[0, n - 1]]
    full = client.forward(PROMPT, capture=["blocks.1.hook_resid_post"]).activations[
        "blocks.1.hook_resid_post"
    ]
    want = torch.tensor(full[:, [0, n - 1]][:, :, [0, 5]]).bfloat16().float().numpy()
    np.testing.assert_array_equal(out.activations["blocks.1.hook_resid_post"], want)
    assert out.activations["blocks.1.attn.hook_z"].dtype == np.float16


def test_forward_under_interventions(client):
    """Forward accepts interventions: the read is made under them."""
    out = client.forward(
        PROMPT,
        capture=["blocks.0.attn.hook_z"],
        interventions=[iv.zero("blocks.0.attn.hook_z[head=2,pos=-1]")],
    )
    z = out.activations["blocks.0.attn.hook_z"]
    assert np.all(z[0, -1, 2] == 0) and np.any(z[0, -1, 1] != 0) and np.any(z[0, 0, 2] != 0)


BAD = [
    ("unknown model", dict(prompts="hi", model="nope"), grpc.StatusCode.NOT_FOUND, "not loaded"),
    (
        "unknown site",
        dict(prompts="hi", capture=["blocks.0.mlp.hook_nope"]),
        grpc.StatusCode.NOT_FOUND,
        "unknown hook site",
    ),
    (
        "glob matching nothing",
        dict(prompts="hi", capture=["blocks.*.hook_nothing*"]),
        grpc.StatusCode.NOT_FOUND,
        "matches no site",
    ),
    (
        "layer out of range",
        dict(prompts="hi", capture=["blocks.7.mlp.hook_post"]),
        grpc.StatusCode.OUT_OF_RANGE,
        "layer 7 of site 'blocks.7.mlp.hook_post' is out of range (allowed: 0..1)",
    ),
    (
        "unit out of range",
        dict(prompts="hi", capture=[Capture("blocks.0.mlp.hook_post", units=(9999,))]),
        grpc.StatusCode.OUT_OF_RANGE,
        "allowed: 0..255",
    ),
    (
        "position out of range",
        dict(prompts="hi", capture=["blocks.0.mlp.hook_post"], positions=[40]),
        grpc.StatusCode.OUT_OF_RANGE,
        "position 40",
    ),
    ("empty prompt", dict(prompts=""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    ("no prompts", dict(prompts=[]), grpc.StatusCode.INVALID_ARGUMENT, "no prompts"),
    (
        "longer than context",
        dict(prompts=[[1] * 65]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "context of 64",
    ),
    (
        "over token limit",
        dict(prompts=[[1] * 50]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit of 48",
    ),
    (
        "too many prompts",
        dict(prompts=["a", "b", "c", "d", "e"]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit of 4",
    ),
    (
        "response over byte limit",
        dict(prompts=[[1] * 48] * 4, capture=["*"]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "MiB",
    ),
    ("malformed token ids", dict(prompts=[[5, -3]]), grpc.StatusCode.OUT_OF_RANGE, "vocabulary"),
    (
        "top_k zero",
        dict(prompts="hi", capture=[Capture("logits", top_k=0)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k",
    ),
    (
        "units on a unitless site",
        dict(prompts="hi", capture=[Capture("blocks.0.ln1.hook_scale", units=(0,))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no unit axis",
    ),
]


@pytest.mark.parametrize("name,kwargs,code,text", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_status_and_server_keeps_serving(client, name, kwargs, code, text):
    """Each bad request fails with its status and a message saying what is allowed; then a good
    request still succeeds."""
    with pytest.raises(TdbClientError) as info:
        client.forward(**kwargs)
    assert info.value.code == code, info.value
    assert text in info.value.details
    assert info.value.request_id
    assert client.forward("hi", top_k=1).top_logits[0][0].token_ids


def test_health_and_reflection(service):
    """Standard health reports SERVING; reflection lists the services."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        status = (
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service="tdb.v1.InferenceService"), timeout=5)
            .status
        )
        assert status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"tdb.v1.ModelService", "tdb.v1.InferenceService", "grpc.health.v1.Health"} <= names


def test_deadline_stops_work_and_frees_the_slot(client, service):
    """A call whose deadline passes while the model is busy gets DEADLINE_EXCEEDED; the server
    frees its slot and serves the next call."""
    runner = service.models.get()
    runner.admission._lock.acquire()
    try:
        with pytest.raises(TdbClientError) as e:
            client.forward(PROMPT, timeout=0.3)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        runner.admission._lock.release()
    import time as _time

    deadline = _time.monotonic() + 5
    while runner.queue_depth and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert runner.queue_depth == 0
    assert client.forward(PROMPT, top_k=1).top_logits
