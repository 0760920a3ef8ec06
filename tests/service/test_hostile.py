"""Hostile and heavy traffic (issue 18), over a real channel: every reported case is refused with
its proper status before the work it would drive (asserted by counting the expensive calls, never
by timing), the server keeps serving after each, load is shed at once with UNAVAILABLE while
health checks still answer, and the token is checked before a request is parsed."""

from __future__ import annotations

import fnmatch
import os
import threading
import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import attribution_pb2_grpc as apb_grpc
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import explain_pb2_grpc as epb_grpc
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import inference_pb2_grpc as ipb_grpc
from tdb.v1 import model_pb2 as mpb
from tdb.v1 import model_pb2_grpc as mpb_grpc
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import sae_pb2_grpc as spb_grpc
from tdb_core.runner import Limits, ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, build_sae, save_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"
LIMITS = Limits(
    max_tokens_per_prompt=48,
    max_prompts=4,
    max_response_bytes=2 * 2**20,
    max_working_bytes=16 * 2**20,
)
MB = 2**20
BIG = [("grpc.max_send_message_length", 64 * MB), ("grpc.max_receive_message_length", 64 * MB)]


def _sae(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return build_sae(
        SaeConfig(d_in=64, d_sae=80, architecture=ReluArch(), site="blocks.1.hook_resid_pre"),
        {
            "W_enc": torch.randn(64, 80, generator=g) * 0.3,
            "b_enc": torch.zeros(80),
            "W_dec": torch.randn(80, 64, generator=g) * 0.1,
            "b_dec": torch.zeros(64),
        },
    )


@pytest.fixture(scope="module")
def hostile(tiny_loaded, tmp_path_factory):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    root = tmp_path_factory.mktemp("saes")
    runner = ModelRunner(tiny_loaded, LIMITS)
    runner.saes.attach("res1", _sae(), "memory")
    db = tmp_path_factory.mktemp("catalog") / "explanations.sqlite"
    svc = build_server(
        Settings(port=0, limits=LIMITS, explanations_db=str(db), sae_root=str(root)),
        ModelRegistry([runner]),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}", options=BIG)
    yield channel, runner, root, db, f"127.0.0.1:{svc.port}"
    channel.close()
    svc.stop(0)


def _call(channel, method: str, request, timeout: float = 60) -> grpc.RpcError:
    stubs = {
        "Forward": (ipb_grpc.InferenceServiceStub, True),
        "Ablate": (ipb_grpc.InferenceServiceStub, True),
        "PatchSweep": (ipb_grpc.InferenceServiceStub, False),
        "Attribute": (apb_grpc.AttributionServiceStub, False),
        "Encode": (spb_grpc.SaeServiceStub, True),
        "Decode": (spb_grpc.SaeServiceStub, False),
        "LoadSae": (spb_grpc.SaeServiceStub, False),
        "Tokenize": (mpb_grpc.ModelServiceStub, False),
        "Detokenize": (mpb_grpc.ModelServiceStub, False),
        "ScoreExplanation": (epb_grpc.ExplainServiceStub, False),
        "ListExplanations": (epb_grpc.ExplainServiceStub, False),
    }
    stub, streaming = stubs[method]
    rpc = getattr(stub(channel), method)
    with pytest.raises(grpc.RpcError) as info:
        out = rpc(request, timeout=timeout)
        if streaming:
            list(out)
    return info.value


def _serves(channel) -> None:
    """The server keeps serving: a plain follow-up Forward succeeds."""
    stub = ipb_grpc.InferenceServiceStub(channel)
    got = list(stub.Forward(ipb.ForwardRequest(prompts=[cpb.Prompt(text=PROMPT)]), timeout=60))
    assert got and got[0].header.top_logits


def _text(t: str = PROMPT) -> cpb.Prompt:
    return cpb.Prompt(text=t)


def _ld(**kw) -> apb.AttributeRequest:
    kw.setdefault("prompt", _text())
    return apb.AttributeRequest(
        logit_diff=apb.LogitDiffLoss(
            target=cpb.Tokens(strings=[" Mary"]), distractor=cpb.Tokens(strings=[" John"])
        ),
        **kw,
    )


def _zero(site: str = "blocks.0.hook_resid_pre", **kw) -> cpb.Intervention:
    return cpb.Intervention(site=site, zero=cpb.ZeroOp(), **kw)


HUGE_TEXT = "hello world " * (MB // 12)  # 1 MB: 1300 times the 768-byte limit of 48 tokens

# --------------------------------------------------------------------------------------------------
# 1. Text is measured before it is tokenized


@pytest.mark.parametrize(
    "method,request_,code",
    [
        ("Forward", ipb.ForwardRequest(prompts=[_text(HUGE_TEXT)]), "RESOURCE_EXHAUSTED"),
        (
            "Forward",  # a later prompt: no earlier one is tokenized either
            ipb.ForwardRequest(prompts=[_text(), _text(HUGE_TEXT)]),
            "RESOURCE_EXHAUSTED",
        ),
        (
            "Forward",
            ipb.ForwardRequest(prompts=[_text()], sources=[_text(HUGE_TEXT)]),
            "RESOURCE_EXHAUSTED",
        ),
        ("Tokenize", mpb.TokenizeRequest(texts=["ok", HUGE_TEXT]), "RESOURCE_EXHAUSTED"),
        ("Attribute", _ld(prompt=_text(HUGE_TEXT)), "RESOURCE_EXHAUSTED"),
        (
            "Encode",
            spb.EncodeRequest(sae="res1", prompts=spb.PromptList(prompts=[_text(HUGE_TEXT)])),
            "RESOURCE_EXHAUSTED",
        ),
        (
            "PatchSweep",
            ipb.PatchSweepRequest(
                clean=_text(HUGE_TEXT),
                corrupted=_text(),
                site="hook_resid_pre",
                target=cpb.Tokens(strings=[" Mary"]),
                distractor=cpb.Tokens(strings=[" John"]),
            ),
            "RESOURCE_EXHAUSTED",
        ),
        (
            "Ablate",  # a target string that must be one token: longer than any token
            ipb.AblateRequest(
                prompt=_text(),
                sets=[cpb.InterventionSet(name="z", interventions=[_zero()])],
                target=cpb.Tokens(strings=[HUGE_TEXT]),
                distractor=cpb.Tokens(strings=[" John"]),
            ),
            "INVALID_ARGUMENT",
        ),
    ],
)
def test_text_is_measured_before_it_is_tokenized(hostile, monkeypatch, method, request_, code):
    """Reported: a 10 MB prompt took 15 s and +1.6 GB before INVALID_ARGUMENT (30 MB: 40 s and
    +5 GB). Now the tokenizer never sees an oversized text: refused with the limit named."""
    channel, runner, *_ = hostile
    tokenizer_class = type(runner.tokens.tokenizer)
    calls = []
    real = tokenizer_class.__call__

    def counting(self, *a, **k):
        calls.append(len(a[0]) if a and isinstance(a[0], str) else -1)
        return real(self, *a, **k)

    monkeypatch.setattr(tokenizer_class, "__call__", counting)
    err = _call(channel, method, request_)
    assert err.code().name == code, err.details()
    assert "bytes" in err.details() and len(err.details()) < 1000
    assert all(n < 10_000 for n in calls), "an oversized text reached the tokenizer"
    monkeypatch.undo()
    _serves(channel)


# --------------------------------------------------------------------------------------------------
# 2. Every list and size the admission estimate misses


@pytest.mark.parametrize(
    "method,request_,code,words",
    [
        (
            "Forward",  # 0.2 MB request, +950 MB before
            ipb.ForwardRequest(prompts=[_text()], logit_positions=[-1] * 200_000),
            "RESOURCE_EXHAUSTED",
            "logit positions",
        ),
        (
            "Forward",  # +1 GB before
            ipb.ForwardRequest(
                prompts=[_text()],
                captures=[cpb.Capture(site="blocks.0.hook_resid_pre", positions=[0] * 1_000_000)],
            ),
            "RESOURCE_EXHAUSTED",
            "capture positions",
        ),
        (
            "Forward",
            ipb.ForwardRequest(
                prompts=[_text()],
                captures=[cpb.Capture(site="blocks.0.mlp.hook_post", units=[1] * 1_000_000)],
            ),
            "RESOURCE_EXHAUSTED",
            "units for site",
        ),
        (
            "Forward",  # 100,000 interventions held the model for 17 s
            ipb.ForwardRequest(prompts=[_text()], interventions=[_zero()] * 20_000),
            "RESOURCE_EXHAUSTED",
            "interventions",
        ),
        (
            "Forward",
            ipb.ForwardRequest(prompts=[_text()], interventions=[_zero(positions=[0] * 100_000)]),
            "RESOURCE_EXHAUSTED",
            "intervention positions",
        ),
        (
            "Ablate",
            ipb.AblateRequest(
                prompt=_text(),
                sets=[
                    cpb.InterventionSet(name=f"s{i}", interventions=[_zero()] * 100)
                    for i in range(3)
                ],
            ),
            "RESOURCE_EXHAUSTED",
            "interventions",
        ),
        (
            "PatchSweep",
            ipb.PatchSweepRequest(
                clean=_text(),
                corrupted=_text(),
                site="hook_resid_pre",
                target=cpb.Tokens(strings=[" Mary"]),
                distractor=cpb.Tokens(strings=[" John"]),
                layers=[0] * 1_000_000,
            ),
            "RESOURCE_EXHAUSTED",
            "layers",
        ),
        (
            "Ablate",
            ipb.AblateRequest(
                prompt=_text(),
                sets=[cpb.InterventionSet(name="z", interventions=[_zero()])],
                target=cpb.Tokens(ids=[5] * 1_000_000),
                distractor=cpb.Tokens(ids=[6]),
            ),
            "RESOURCE_EXHAUSTED",
            "target tokens",
        ),
        (
            "Attribute",  # node_tokens = 2^32-1 gave a 59 MB response and +1.2 GB
            _ld(node_tokens=2**32 - 1),
            "INVALID_ARGUMENT",
            "node_tokens",
        ),
        (
            "Attribute",  # responses were never checked against --max-response-mb
            _ld(top_k=1000, node_tokens=1000),
            "RESOURCE_EXHAUSTED",
            "response would be",
        ),
        (
            "Tokenize",  # 1,000,000 texts ran 73 s
            mpb.TokenizeRequest(texts=["hello"] * 100_000),
            "RESOURCE_EXHAUSTED",
            "texts",
        ),
        (
            "Detokenize",  # 10,000,000 ids: +830 MB
            mpb.DetokenizeRequest(token_ids=[5] * 1_000_000),
            "RESOURCE_EXHAUSTED",
            "token ids",
        ),
        (
            "Forward",  # a 1 MB glob: refused without compiling it
            ipb.ForwardRequest(prompts=[_text()], captures=[cpb.Capture(site="*" * MB)]),
            "INVALID_ARGUMENT",
            "longer than 512 characters",
        ),
        (
            "ScoreExplanation",  # a 5 MB explanation took 15 s to score
            epb.ScoreExplanationRequest(
                node="blocks.0.mlp.hook_post[1]",
                explanation="word " * MB,
                dataset=epb.Dataset(texts=epb.TextList(texts=[PROMPT])),
            ),
            "RESOURCE_EXHAUSTED",
            "explanation",
        ),
    ],
)
def test_sizes_are_checked_before_the_work(hostile, method, request_, code, words):
    """Each reported request is refused with its status and words, before any forward pass (the
    runner's pass counter does not move), and the server keeps serving."""
    channel, runner, *_ = hostile
    passes = runner.stats["passes"]
    glob_cache = fnmatch._compile_pattern.cache_info().currsize
    err = _call(channel, method, request_)
    assert err.code().name == code, err.details()
    assert words in err.details() and len(err.details()) < 1000
    assert runner.stats["passes"] == passes
    assert fnmatch._compile_pattern.cache_info().currsize == glob_cache
    _serves(channel)


def _tensor(shape: list[int], data: bytes = b"") -> cpb.Tensor:
    return cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=shape, data=data)


@pytest.mark.parametrize(
    "method,request_,words",
    [
        (
            "Decode",
            spb.DecodeRequest(sae="res1", latents=_tensor([1] * 65, bytes(4))),
            "dimensions",
        ),
        ("Decode", spb.DecodeRequest(sae="res1", latents=_tensor([2**62, 0])), "dimension over"),
        (
            "Encode",
            spb.EncodeRequest(sae="res1", activations=spb.Activations(values=_tensor([0, 64]))),
            "hold no vectors",
        ),
        (
            "Encode",
            spb.EncodeRequest(sae="res1", activations=spb.Activations(values=_tensor([1, 0, 64]))),
            "hold no vectors",
        ),
        (
            "Encode",
            spb.EncodeRequest(
                sae="res1", activations=spb.Activations(values=_tensor([1] * 65, bytes(4)))
            ),
            "dimensions",
        ),
        (
            "Forward",
            ipb.ForwardRequest(
                prompts=[_text()],
                interventions=[
                    cpb.Intervention(site="blocks.0.hook_resid_pre", set_tensor=_tensor([2**62, 0]))
                ],
            ),
            "dimension over",
        ),
        (
            "Forward",
            ipb.ForwardRequest(
                prompts=[_text()],
                interventions=[
                    cpb.Intervention(
                        site="blocks.0.hook_resid_pre",
                        add=cpb.AddOp(vector=_tensor([1] * 65, bytes(4))),
                    )
                ],
            ),
            "dimensions",
        ),
        (
            "Attribute",
            apb.AttributeRequest(
                prompt=_text(),
                direction=apb.DirectionLoss(
                    site="blocks.1.hook_resid_pre", vector=_tensor([2**62, 0])
                ),
            ),
            "dimension over",
        ),
    ],
)
def test_bad_tensors_are_invalid_argument_not_internal(hostile, method, request_, words):
    """Reported INTERNAL: tensors with more than 64 dims or shape [2^62, 0] without data, and
    Encode activations [0, 128] or [1, 0, 128]. Now INVALID_ARGUMENT saying what is wrong."""
    channel, *_ = hostile
    err = _call(channel, method, request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert words in err.details()
    _serves(channel)


def test_encode_of_raw_activations_is_admitted(hostile, monkeypatch):
    """Reported: Encode of raw activations [120000, 128] skipped admission entirely (+2.1 GB with
    --memory-budget-mb 64). Now its working memory is estimated against the budget first; the SAE
    never runs."""
    from tdb_core.ops import encode as encode_op

    channel, runner, *_ = hostile
    from services import convert

    ran = []
    monkeypatch.setattr(encode_op, "_encode_activations", lambda *a: ran.append(1))
    monkeypatch.setattr(convert, "tensor_from_pb", lambda *a: ran.append(2))  # bytes never copied
    n = 20_000  # 5 MB of request; ~28 MB of working memory, over the 16 MiB budget
    request_ = spb.EncodeRequest(
        sae="res1",
        activations=spb.Activations(values=_tensor([n, 64], bytes(n * 64 * 4))),
        top_k=0,  # a small response: only the working memory is over
    )
    err = _call(channel, "Encode", request_)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "working memory" in err.details() and ran == []
    assert runner.queue_depth == 0
    monkeypatch.undo()
    small = spb.EncodeRequest(
        sae="res1", activations=spb.Activations(values=_tensor([3, 64], bytes(3 * 64 * 4)))
    )
    (header, *_) = list(spb_grpc.SaeServiceStub(channel).Encode(small, timeout=60))
    assert list(header.header.l0.shape) == [1, 3]


# --------------------------------------------------------------------------------------------------
# Explanations: bounded size, paged within the response limit, deep paging


def test_list_explanations_pages_within_the_response_limit(hostile):
    """Reported: ListExplanations ignored --max-response-mb (twelve 5 MB explanations -> one
    60 MB response) and paging past ~90,000 explanations was impossible. A page now stops before
    the response limit and says where the next starts; any offset works."""
    import sqlite3

    from tdb_core import checks

    channel = hostile[0]
    stub = epb_grpc.ExplainServiceStub(channel)
    db = hostile[3]
    text = "x" * checks.MAX_EXPLANATION_BYTES
    n = 800  # 800 x 4 KB = 3.2 MB, over the 2 MiB response limit
    rows = [
        (
            "tiny",
            "",
            f"blocks.0.mlp.hook_post[{i}]",
            "baseline",
            "given",
            text,
            0.5,
            "",
            "[]",
            "{}",
            0,
            0,
        )
        for i in range(n)
    ]
    with sqlite3.connect(db) as conn:  # one transaction (the store's put is one per row)
        conn.executemany(f"INSERT INTO explanations VALUES ({', '.join('?' * 12)})", rows)
    first = stub.ListExplanations(epb.ListExplanationsRequest(limit=n), timeout=60)
    assert 0 < len(first.explanations) < n and first.next_offset == len(first.explanations)
    assert first.ByteSize() <= LIMITS.max_response_bytes
    rest = stub.ListExplanations(
        epb.ListExplanationsRequest(limit=n, offset=first.next_offset), timeout=60
    )
    assert len(first.explanations) + len(rest.explanations) == n and rest.next_offset == 0
    keys = [e.node for e in first.explanations] + [e.node for e in rest.explanations]
    assert len(set(keys)) == n
    deep = stub.ListExplanations(epb.ListExplanationsRequest(offset=200_000), timeout=60)
    assert list(deep.explanations) == [] and deep.next_offset == 0
    short = stub.ListExplanations(epb.ListExplanationsRequest(limit=5), timeout=60)
    assert len(short.explanations) == 5 and short.next_offset == 5
    from tdb_client import TdbClient  # the client follows the pages up to its limit

    with TdbClient(hostile[4]) as client:
        assert len(client.list_explanations(limit=n)) == n
        assert len(client.list_explanations(limit=n, offset=n - 3)) == 3
        # a limit over the server's 10000 per request is asked for in pages it accepts
        assert len(client.list_explanations(limit=25_000)) == n
        assert client.list_explanations(limit=0) == []


# --------------------------------------------------------------------------------------------------
# LoadSae confinement


def test_load_sae_resolves_every_file_it_opens(hostile, tmp_path):
    """Reported: only the requested path was resolved, so a directory under --sae-root whose files
    are symlinks to an SAE outside it loaded, and a cfg.json symlinked to another file echoed that
    file's values; paths of 10,000 characters or with a symlink loop were INTERNAL. Now each is
    INVALID_ARGUMENT, and sources and errors show paths relative to the root."""
    channel, _, root, *_ = hostile
    outside = tmp_path / "outside"
    save_sae(_sae(seed=1), outside)
    (root / "good").mkdir(exist_ok=True)
    save_sae(_sae(seed=2), root / "good")
    (root / "linked").mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        os.symlink(outside / name, root / "linked" / name)
    (root / "secret").mkdir()
    (tmp_path / "secret.json").write_text('{"password": "hunter2"}')
    os.symlink(tmp_path / "secret.json", root / "secret" / "cfg.json")
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    cases = [
        ("linked", "outside"),
        ("secret", "outside"),
        ("a" * 10_000, "too long"),
        ("loop_a", "cannot be resolved"),
        ("loop_a/x", "cannot be resolved"),
    ]
    for path, words in cases:
        err = _call(channel, "LoadSae", spb.LoadSaeRequest(id="x", path=path))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err.details())
        assert words in err.details() and "hunter2" not in err.details()
        assert str(tmp_path) not in err.details()
    ok = spb_grpc.SaeServiceStub(channel).LoadSae(
        spb.LoadSaeRequest(id="res_good", path="good", site="blocks.0.hook_resid_post"), timeout=60
    )
    assert ok.sae.source == "good"
    (root / "broken").mkdir()
    (root / "broken" / "cfg.json").write_text("{not json")
    err = _call(channel, "LoadSae", spb.LoadSaeRequest(id="y", path="broken"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and str(root) not in err.details()
    _serves(channel)


# --------------------------------------------------------------------------------------------------
# 3. Load shedding and health


@pytest.fixture()
def busy_server(tiny_loaded):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    runner = ModelRunner(tiny_loaded, LIMITS)
    svc = build_server(Settings(port=0, limits=LIMITS, max_workers=2), ModelRegistry([runner]))
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}")
    yield svc, runner, channel
    channel.close()
    svc.stop(0)


def test_excess_requests_are_shed_and_health_still_answers(busy_server):
    """Reported: health Check shared the worker pool (a 3 s probe timed out with 20 sweeps in
    flight) and UNAVAILABLE "queue is full" could not happen with the defaults. With --workers 2
    and the model held busy, two requests wait for it; a third is UNAVAILABLE at once (no
    waiting: it answers while the model is still held), health answers SERVING, and once the
    model is free the two waiting requests finish and the server serves on."""
    svc, runner, channel = busy_server
    stub = ipb_grpc.InferenceServiceStub(channel)
    request_ = ipb.ForwardRequest(prompts=[_text()])
    runner.admission._lock.acquire()  # the model is busy with a long pass
    results: list[object] = []
    try:
        waiting = [
            threading.Thread(
                target=lambda: results.append(list(stub.Forward(request_, timeout=60)))
            )
            for _ in range(2)
        ]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 30
        while svc.in_flight.count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert svc.in_flight.count == 2
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Forward(request_, timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "busy" in e.value.details() and "--workers" in e.value.details()
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(5):
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert runner.admission._lock.locked() and len(results) == 0
    finally:
        runner.admission._lock.release()
    for t in waiting:
        t.join(60)
    assert len(results) == 2 and svc.in_flight.count == 0
    _serves(channel)


def test_health_watchers_hold_no_worker_threads(busy_server):
    """Found while chasing a flaky shutdown test: the interceptor wrapped the health Watch (a
    callback handler) as an iterator, so every open Watch pinned one of the pool's threads for
    its life; with --workers 2 (6 threads) the 7th watcher hung and so did every other call.
    gRPC clients with health checking turned on open one Watch per channel. Now 24 watchers
    (4x the pool) hold no thread: a 25th Watch, Check and ListModels answer at once, and a
    status change reaches every watcher."""
    svc, _, channel = busy_server
    channels = [grpc.insecure_channel(f"127.0.0.1:{svc.port}") for _ in range(24)]
    watches = [
        health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=60)
        for ch in channels
    ]
    try:
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        extra = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert next(extra).status == health_pb2.HealthCheckResponse.SERVING
        extra.cancel()
        check = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        _serves(channel)
        svc.set_serving(False)
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.NOT_SERVING
        svc.set_serving(True)
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for w, ch in zip(watches, channels, strict=True):
            w.cancel()
            ch.close()


def test_calls_whose_clients_left_do_not_shed_live_ones(busy_server, monkeypatch):
    """A call whose client has gone (here: past its deadline while its handler is stuck in the
    tokenizer, which never checks cancellation) is only finishing up: it does not count against
    --workers, so a live client is served instead of getting UNAVAILABLE (in a 16-client mixed
    load with 5-100 ms deadlines and cancelling clients, no well-behaved call fails)."""
    svc, runner, channel = busy_server
    tokenizer_class = type(runner.tokens.tokenizer)
    real = tokenizer_class.__call__
    release = threading.Event()

    def stuck(self, text, *a, **k):
        if isinstance(text, str) and text.startswith("stuck"):
            release.wait(30)
        return real(self, text, *a, **k)

    monkeypatch.setattr(tokenizer_class, "__call__", stuck)
    stub = ipb_grpc.InferenceServiceStub(channel)
    try:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Forward(ipb.ForwardRequest(prompts=[_text("stuck here")]), timeout=0.3))
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert svc.in_flight.count == 2  # both handlers are still in the tokenizer
        got = list(stub.Forward(ipb.ForwardRequest(prompts=[_text()]), timeout=60))
        assert got and got[0].header.top_logits
    finally:
        release.set()


# --------------------------------------------------------------------------------------------------
# 8. The token is checked before the request is parsed


def test_token_is_checked_before_the_request_is_parsed(tiny_loaded, tmp_path, monkeypatch):
    """Reported: requests were fully deserialized before the token check (12 unauthenticated
    50 MB requests: +437 MB). Now an unauthenticated request is refused from its metadata; its
    body is never parsed."""
    from services import interceptors
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    parsed = []
    real = interceptors._lenient

    def counting(deserialize):
        decode = real(deserialize)
        if decode is None:
            return None

        def wrapped(raw):
            parsed.append(len(raw))
            return decode(raw)

        return wrapped

    monkeypatch.setattr(interceptors, "_lenient", counting)
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    svc = build_server(
        Settings(port=0, limits=LIMITS, auth_token_file=str(tokens)),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{svc.port}", options=BIG) as channel:
            stub = ipb_grpc.InferenceServiceStub(channel)
            big = ipb.ForwardRequest(prompts=[_text("x" * (8 * MB))])
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Forward(big, timeout=30))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert parsed == []
            md = (("authorization", "Bearer s3cret"),)
            out = list(stub.Forward(ipb.ForwardRequest(prompts=[_text()]), metadata=md, timeout=60))
            assert out and parsed  # an authenticated request is parsed as usual
    finally:
        svc.stop(0)


# --------------------------------------------------------------------------------------------------
# 5/7. Host out-of-memory and huge messages get their real status


def test_status_mapping_of_host_oom_and_long_messages():
    """Any CPU allocation failure is RESOURCE_EXHAUSTED (only CUDA OOM was mapped); a message is
    cut so the status always fits gRPC's 16 KiB metadata (above it the client got
    RESOURCE_EXHAUSTED 'received metadata size exceeds hard limit' and lost the request id)."""
    from services.interceptors import MAX_DETAILS, status_for
    from tdb_core import errors

    for exc in (
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 100000000000 bytes."
        ),
    ):
        code, _ = status_for(exc)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, message = status_for(errors.InvalidArgumentError("x" * 100_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(message) <= MAX_DETAILS
    assert status_for(RuntimeError("a real bug")) is None
