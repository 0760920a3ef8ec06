"""gRPC-Web on the HTTP port: a real server on port 0, called with a real HTTP client (http.client)
and over native gRPC, side by side. Every RPC answers the same messages both ways; errors, auth,
limits, deadlines, cancellation, request ids, logs and metrics are the native ones; malformed
requests get clean errors; CORS; the static web app."""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest
import structlog
from google.protobuf import message as pb_message

from services.server import SERVICE_NAMES, method_paths
from tdb.v1 import attribution_pb2 as apb
from tdb.v1 import common_pb2 as cpb
from tdb.v1 import explain_pb2 as epb
from tdb.v1 import inference_pb2 as ipb
from tdb.v1 import model_pb2 as mpb
from tdb.v1 import sae_pb2 as spb
from tdb.v1 import server_pb2 as svpb
from tdb_client import interventions as iv
from tdb_client import losses
from tdb_client.client import capture_pb, prompt_pb, tokens_pb
from tdb_client.tensors import from_numpy
from tdb_core.runner import Limits, ModelRunner
from tdb_core.sae import save_sae
from tests.service.test_sae_service import make_sae
from tests.tiny import CORPUS

TOKEN = "web-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ALLOWED = "http://app.example.test:5173"
PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
TEXTS = sorted(set(CORPUS))
LIMITS = Limits(max_tokens_per_prompt=48, max_prompts=4, max_response_bytes=8 * 2**20)
MAX_REQUEST = 2**20


@pytest.fixture(scope="module")
def web(tiny_loaded, tmp_path_factory):
    """A server with auth, metrics, an SAE, an SAE root, a catalog and the HTTP port on."""
    import numpy as np

    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    tmp = tmp_path_factory.mktemp("web")
    (tmp / "tokens").write_text(TOKEN + "\n")
    save_sae(make_sae(seed=3), tmp / "saes" / "good")
    runner = ModelRunner(tiny_loaded, LIMITS)
    runner.saes.attach("res1", make_sae(), "memory")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        metrics_port=0,
        cors_origins=(ALLOWED,),
        web_dir=str(tmp / "no-app-here"),
        auth_token_file=str(tmp / "tokens"),
        sae_root=str(tmp / "saes"),
        explanations_db=str(tmp / "catalog.sqlite"),
        limits=LIMITS,
        max_request_bytes=MAX_REQUEST,
    )
    svc = build_server(settings, ModelRegistry([runner]))
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}")
    yield svc, channel, np
    channel.close()
    svc.stop(0)


# -- a small gRPC-Web client over http.client --------------------------------------------------


@dataclass
class Reply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def code(self) -> grpc.StatusCode:
        """The status: from the trailer frame, or the headers of a trailers-only response."""
        raw = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        assert raw is not None, (self.http_status, self.headers, self.body[:200])
        return next(c for c in grpc.StatusCode if c.value[0] == int(raw))

    @property
    def message(self) -> str:
        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))


def frames(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        flags, n = struct.unpack_from(">BI", data, i)
        assert i + 5 + n <= len(data), "a response frame is truncated"
        out.append((flags, data[i + 5 : i + 5 + n]))
        i += 5 + n
    return out


def web_call(
    port: int,
    method: str,
    request: pb_message.Message | None = None,
    *,
    text: bool = False,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    content_type: str | None = None,
    http_method: str = "POST",
    auth: bool = True,
    timeout: float = 60,
) -> Reply:
    """One gRPC-Web call; ``body`` replaces the framed ``request`` as it is."""
    if body is None:
        payload = request.SerializeToString() if request is not None else b""
        body = struct.pack(">BI", 0, len(payload)) + payload
        if text:
            body = base64.b64encode(body)
    h = {
        "content-type": content_type
        or ("application/grpc-web-text" if text else "application/grpc-web+proto"),
        "x-grpc-web": "1",
        **(AUTH if auth else {}),
        **(headers or {}),
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(http_method, method, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body=data)
    finally:
        conn.close()
    if reply.http_status == 200 and reply.headers.get("content-type", "").startswith(
        "application/grpc-web"
    ):
        if reply.headers["content-type"].startswith("application/grpc-web-text"):
            data = b"".join(base64.b64decode(c) for c in re.findall(rb"[A-Za-z0-9+/]+=*", data))
        for flags, payload in frames(data):
            if flags & 0x80:
                for line in payload.decode("ascii").split("\r\n"):
                    if line:
                        k, _, v = line.partition(":")
                        reply.trailers[k.strip().lower()] = v.strip()
            else:
                assert not reply.trailers, "a message frame after the trailers"
                reply.messages.append(payload)
    return reply


def native_call(
    channel: grpc.Channel, method: str, request: pb_message.Message, auth: bool = True
) -> tuple[list[bytes], grpc.StatusCode, str]:
    """The same call over native gRPC, response bytes untouched."""
    call = channel.unary_stream(method)(
        request.SerializeToString(), metadata=tuple(AUTH.items()) if auth else (), timeout=60
    )
    messages: list[bytes] = []
    with contextlib.suppress(grpc.RpcError):
        messages.extend(call)
    return messages, call.code(), call.details() or ""


# -- every RPC, both ways ------------------------------------------------------------------------


def _requests(np) -> dict[str, tuple[pb_message.Message, type[pb_message.Message]]]:
    node = "blocks.1.mlp.hook_post[3]"
    mining = epb.MiningOptions(window_len=16)
    dataset = epb.Dataset(texts=epb.TextList(texts=TEXTS))
    sets = [
        cpb.InterventionSet(
            name="L0H0", interventions=[iv.zero("blocks.0.attn.hook_z[head=0]").to_pb()]
        ),
        cpb.InterventionSet(
            name="n3", interventions=[iv.zero("blocks.1.mlp.hook_post[3]").to_pb()]
        ),
    ]
    attribute = apb.AttributeRequest(prompt=prompt_pb(PROMPT), top_k=10, node_tokens=3)
    loss = losses.logit_diff(" Mary", " John")
    getattr(attribute, loss.field).CopyFrom(loss.to_pb())
    encode = spb.EncodeRequest(sae="res1", top_k=4, dense=True)
    encode.prompts.prompts.extend([prompt_pb(PROMPT), prompt_pb(CORRUPT)])
    rng = np.random.default_rng(0)
    return {
        "/tdb.v1.ModelService/ListModels": (mpb.ListModelsRequest(), mpb.ListModelsResponse),
        "/tdb.v1.ModelService/GetModelInfo": (mpb.GetModelInfoRequest(), mpb.GetModelInfoResponse),
        "/tdb.v1.ModelService/Tokenize": (
            mpb.TokenizeRequest(texts=[PROMPT, "Hello"]),
            mpb.TokenizeResponse,
        ),
        "/tdb.v1.ModelService/Detokenize": (
            mpb.DetokenizeRequest(token_ids=[5, 6, 7]),
            mpb.DetokenizeResponse,
        ),
        "/tdb.v1.InferenceService/Forward": (
            ipb.ForwardRequest(
                prompts=[
                    prompt_pb(p) for p in (PROMPT, CORRUPT, PROMPT + " Mary", "John and Mary")
                ],
                # more than 1 MiB of activations, so tensors stream as several chunks
                captures=[capture_pb("*")],
                top_k=3,
            ),
            ipb.ForwardResponse,
        ),
        "/tdb.v1.InferenceService/Ablate": (
            ipb.AblateRequest(
                prompt=prompt_pb(PROMPT),
                sets=sets,
                target=tokens_pb(" Mary"),
                distractor=tokens_pb(" John"),
                top_k=5,
                captures=[capture_pb("blocks.1.hook_resid_post")],
            ),
            ipb.AblateResponse,
        ),
        "/tdb.v1.InferenceService/Generate": (
            ipb.GenerateRequest(
                prompt=prompt_pb(PROMPT),
                sets=[
                    ipb.GenerateSet(
                        name="z",
                        edits=[
                            ipb.GenerateEdit(
                                intervention=iv.zero("blocks.0.attn.hook_z[1]").to_pb()
                            )
                        ],
                    )
                ],
                max_new_tokens=4,
                captures=[capture_pb("blocks.1.hook_resid_post")],
            ),
            ipb.GenerateResponse,
        ),
        "/tdb.v1.InferenceService/PatchSweep": (
            ipb.PatchSweepRequest(
                clean=prompt_pb(PROMPT),
                corrupted=prompt_pb(CORRUPT),
                site="hook_resid_pre",
                target=tokens_pb(" Mary"),
                distractor=tokens_pb(" John"),
                by=ipb.SWEEP_BY_POSITION,
                position=-1,
            ),
            ipb.PatchSweepResponse,
        ),
        "/tdb.v1.ModelService/GetWeights": (
            mpb.GetWeightsRequest(
                names=["*"],
                views=[mpb.WeightView(kind=mpb.WEIGHT_VIEW_KIND_HEAD_OV, layer=1, unit=2)],
            ),
            mpb.GetWeightsResponse,
        ),
        "/tdb.v1.InferenceService/LogitLens": (
            ipb.LogitLensRequest(prompt=prompt_pb(PROMPT), top_k=3),
            ipb.LogitLensResponse,
        ),
        "/tdb.v1.AttributionService/Attribute": (attribute, apb.AttributeResponse),
        "/tdb.v1.SaeService/ListSaes": (spb.ListSaesRequest(), spb.ListSaesResponse),
        "/tdb.v1.SaeService/Encode": (encode, spb.EncodeResponse),
        "/tdb.v1.SaeService/Decode": (
            spb.DecodeRequest(
                sae="res1", latents=from_numpy(rng.standard_normal((3, 80)).astype(np.float32))
            ),
            spb.DecodeResponse,
        ),
        # attaching the same id twice is refused, so this one is compared specially below
        "/tdb.v1.SaeService/LoadSae": (
            spb.LoadSaeRequest(id="x", path="good"),
            spb.LoadSaeResponse,
        ),
        "/tdb.v1.ExplainService/GetActivationRecords": (
            epb.GetActivationRecordsRequest(nodes=[node], dataset=dataset, mining=mining),
            epb.GetActivationRecordsResponse,
        ),
        "/tdb.v1.ExplainService/ExplainNode": (
            epb.ExplainNodeRequest(nodes=[node], dataset=dataset, mining=mining, save=False),
            epb.ExplainNodeResponse,
        ),
        "/tdb.v1.ExplainService/ScoreExplanation": (
            epb.ScoreExplanationRequest(
                node=node, explanation="nothing in particular", dataset=dataset, mining=mining
            ),
            epb.ScoreExplanationResponse,
        ),
        "/tdb.v1.ExplainService/ListExplanations": (
            epb.ListExplanationsRequest(limit=10),
            epb.ListExplanationsResponse,
        ),
        "/tdb.v1.ServerService/ServerInfo": (svpb.ServerInfoRequest(), svpb.ServerInfoResponse),
    }


def test_every_rpc_has_a_case(web):
    """The table below covers every RPC of the tdb.v1 contract (read from the descriptors)."""
    assert set(_requests(web[2])) == method_paths(SERVICE_NAMES)


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
@pytest.mark.parametrize("method", sorted(method_paths(SERVICE_NAMES)))
def test_every_rpc_answers_as_native(web, method, text):
    """Through gRPC-Web (binary and base64 text), each RPC returns the same messages as over
    native gRPC: equal after deserializing, in the same order, streams included."""
    svc, channel, np = web
    request, response_type = _requests(np)[method]
    if method.endswith("/LoadSae"):
        request = spb.LoadSaeRequest(id=f"web-{int(text)}", path="good")
    reply = web_call(svc.http_port, method, request, text=text)
    assert reply.http_status == 200 and reply.code == grpc.StatusCode.OK, reply.message
    assert reply.trailers["x-request-id"] == reply.headers["x-request-id"]
    if method.endswith("/LoadSae"):
        request = spb.LoadSaeRequest(id=f"native-{int(text)}", path="good")
    native, code, details = native_call(channel, method, request)
    assert code == grpc.StatusCode.OK, details
    web_msgs = [response_type.FromString(m) for m in reply.messages]
    native_msgs = [response_type.FromString(m) for m in native]
    if method.endswith("/LoadSae"):  # the same SAE under two ids
        web_msgs = [_renamed(m, f"web-{int(text)}") for m in web_msgs]
        native_msgs = [_renamed(m, f"native-{int(text)}") for m in native_msgs]
    if method.endswith("/ServerInfo"):  # the second call sees the SAEs the first attached
        for m in (*web_msgs, *native_msgs):
            for model in m.models:
                del model.saes[:]
    for m in (*web_msgs, *native_msgs):
        _clear_times(m)
    assert len(web_msgs) == len(native_msgs) >= 1
    if method.endswith("/Forward"):
        assert len(web_msgs) >= 2  # the header, then streamed chunks
    for a, b in zip(web_msgs, native_msgs):
        assert a == b


def _renamed(msg: pb_message.Message, sae_id: str) -> pb_message.Message:
    """``msg`` with the SAE id ``sae_id`` (and the site names made from it) renamed to x."""
    from google.protobuf import text_format

    text = text_format.MessageToString(msg).replace(sae_id, "x")
    return text_format.Parse(text, type(msg)())


def _clear_times(msg: pb_message.Message) -> None:
    """Clear created_at / updated_at (when an explanation was made) and Generate's seconds
    anywhere in ``msg``."""
    for fd, value in msg.ListFields():
        if fd.name in ("created_at", "updated_at", "seconds"):
            msg.ClearField(fd.name)
        elif fd.message_type is not None:
            items = value if fd.is_repeated else [value]
            if fd.message_type.GetOptions().map_entry:
                items = [v for v in value.values() if isinstance(v, pb_message.Message)]
            for item in items:
                _clear_times(item)


ERRORS = [
    ("/tdb.v1.ModelService/GetModelInfo", mpb.GetModelInfoRequest(model="nope"), "NOT_FOUND"),
    (
        "/tdb.v1.InferenceService/Forward",
        ipb.ForwardRequest(prompts=[prompt_pb(PROMPT)], captures=[capture_pb("blocks.9.nope")]),
        "NOT_FOUND",
    ),
    (
        "/tdb.v1.InferenceService/Forward",
        ipb.ForwardRequest(prompts=[prompt_pb("")]),
        "INVALID_ARGUMENT",
    ),
    (
        "/tdb.v1.InferenceService/Forward",
        ipb.ForwardRequest(prompts=[cpb.Prompt(token_ids=cpb.TokenIds(ids=[5] * 56))]),
        "RESOURCE_EXHAUSTED",
    ),
    (
        "/tdb.v1.InferenceService/Ablate",
        ipb.AblateRequest(prompt=prompt_pb(PROMPT), target=tokens_pb(" Mary John")),
        "INVALID_ARGUMENT",
    ),
    (
        "/tdb.v1.ModelService/Detokenize",
        mpb.DetokenizeRequest(token_ids=[10**6]),
        "OUT_OF_RANGE",
    ),
    ("/tdb.v1.NoSuchService/Method", mpb.ListModelsRequest(), "UNIMPLEMENTED"),
]


@pytest.mark.parametrize(("method", "request_msg", "code"), ERRORS)
def test_errors_map_to_the_same_status_and_message(web, method, request_msg, code):
    """Errors come back with the native code and message, as a trailers-only response (status in
    the HTTP headers, empty body), streaming methods included."""
    svc, channel, _ = web
    reply = web_call(svc.http_port, method, request_msg)
    _, native_code, native_details = native_call(channel, method, request_msg)
    assert reply.code.name == native_code.name == code
    assert reply.message == native_details
    assert reply.http_status == 200 and reply.body == b"" and "grpc-status" in reply.headers


def test_auth_token_is_required(web):
    """With --auth-token-file, a call without the token (or with a wrong one) is
    UNAUTHENTICATED, as natively; health needs no token."""
    from grpc_health.v1 import health_pb2

    svc, channel, _ = web
    req = mpb.ListModelsRequest()
    method = "/tdb.v1.ModelService/ListModels"
    missing = web_call(svc.http_port, method, req, auth=False)
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED
    assert missing.message == native_call(channel, method, req, auth=False)[2]
    wrong = web_call(svc.http_port, method, req, headers={"authorization": "Bearer nope"})
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED
    health = web_call(
        svc.http_port, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(), auth=False
    )
    assert health.code == grpc.StatusCode.OK
    assert health_pb2.HealthCheckResponse.FromString(health.messages[0]).status == 1  # SERVING


def _frame(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


GOOD = mpb.TokenizeRequest(texts=["Hello"]).SerializeToString()

MALFORMED = [
    ("empty body", b"", "application/grpc-web+proto", "INVALID_ARGUMENT", "is empty"),
    ("short header", b"\x00\x00\x01", "application/grpc-web+proto", "INVALID_ARGUMENT", "3 bytes"),
    (
        "length prefix past the end",
        _frame(GOOD, length=1000),
        "application/grpc-web+proto",
        "INVALID_ARGUMENT",
        "truncated",
    ),
    (
        "bytes after the frame",
        _frame(GOOD) + b"\x00\x00",
        "application/grpc-web+proto",
        "INVALID_ARGUMENT",
        "after its one request frame",
    ),
    (
        "two frames",
        _frame(GOOD) + _frame(GOOD),
        "application/grpc-web+proto",
        "INVALID_ARGUMENT",
        "exactly one message",
    ),
    (
        "trailer flag",
        _frame(GOOD, flags=0x80),
        "application/grpc-web+proto",
        "INVALID_ARGUMENT",
        "flags 0x80",
    ),
    (
        "compressed",
        _frame(GOOD, flags=0x01),
        "application/grpc-web+proto",
        "UNIMPLEMENTED",
        "compressed",
    ),
    (
        "bad base64",
        b"AAAA!!not-base64",
        "application/grpc-web-text",
        "INVALID_ARGUMENT",
        "not valid base64",
    ),
    (
        "not protobuf",
        _frame(b"\xff\xff\xff"),
        "application/grpc-web+proto",
        "INVALID_ARGUMENT",
        "not a valid protobuf message",
    ),
    (
        "too large",
        _frame(b"", length=MAX_REQUEST + 1),
        "application/grpc-web+proto",
        "RESOURCE_EXHAUSTED",
        "at most",
    ),
]


@pytest.mark.parametrize(
    ("body", "ctype", "code", "text"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_get_clean_errors_and_the_server_keeps_serving(
    web, body, ctype, code, text
):
    """Broken framing, bad base64, undecodable messages and oversized frames get a clear status
    and message (never INTERNAL, never a hang); the next call works."""
    svc, _, _ = web
    method = "/tdb.v1.ModelService/ListModels"
    reply = web_call(svc.http_port, method, body=body, content_type=ctype, timeout=20)
    assert reply.http_status == 200 and reply.code.name == code and text in reply.message
    ok = web_call(svc.http_port, method, mpb.ListModelsRequest())
    assert ok.code == grpc.StatusCode.OK and len(ok.messages) == 1


def test_wrong_content_type_and_http_method(web):
    """A POST that is not gRPC-Web gets 415 with the accepted types; GET on an RPC path is not a
    call; both leave the server serving."""
    svc, _, _ = web
    method = "/tdb.v1.ModelService/ListModels"
    reply = web_call(
        svc.http_port, method, mpb.ListModelsRequest(), content_type="application/json"
    )
    assert reply.http_status == 415 and b"application/grpc-web-text" in reply.body
    assert reply.code == grpc.StatusCode.INVALID_ARGUMENT
    put = web_call(svc.http_port, method, mpb.ListModelsRequest(), http_method="PUT")
    assert put.http_status == 405
    assert web_call(svc.http_port, method, mpb.ListModelsRequest()).code == grpc.StatusCode.OK


def test_oversized_body_is_refused_before_it_is_read(web):
    """A Content-Length over the request limit is refused at once (RESOURCE_EXHAUSTED), before
    the body is read or any work starts."""
    svc, _, _ = web
    conn = http.client.HTTPConnection("127.0.0.1", svc.http_port, timeout=20)
    conn.putrequest("POST", "/tdb.v1.ModelService/ListModels")
    for k, v in {
        "content-type": "application/grpc-web+proto",
        "content-length": str(64 * MAX_REQUEST),
        **AUTH,
    }.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(b"\x00" * 1000)  # far less than announced: the answer must not wait for the rest
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("grpc-status") == str(
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    )
    conn.close()


def test_client_leaving_during_the_upload(web):
    """A client that disconnects before its request body is complete costs nothing: no error is
    logged, no call is made, and the server keeps serving."""
    svc, _, _ = web
    with structlog.testing.capture_logs() as logs:
        conn = http.client.HTTPConnection("127.0.0.1", svc.http_port, timeout=20)
        conn.putrequest("POST", "/tdb.v1.ModelService/ListModels")
        conn.putheader("content-type", "application/grpc-web+proto")
        conn.putheader("content-length", "100")
        conn.endheaders()
        conn.send(b"\x00\x00\x00\x00\x5f" + b"\x0a" * 5)
        conn.close()
        _wait_for(lambda: any("left before" in e["event"] for e in logs))
        ok = web_call(svc.http_port, "/tdb.v1.ModelService/ListModels", mpb.ListModelsRequest())
    assert ok.code == grpc.StatusCode.OK
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


def test_text_request_in_padded_chunks(web):
    """A grpc-web-text body may be several padded base64 chunks one after another."""
    svc, _, _ = web
    framed = _frame(mpb.TokenizeRequest(texts=["Hello"]).SerializeToString())
    body = b"".join(base64.b64encode(framed[i : i + 4]) for i in range(0, len(framed), 4))
    assert body.count(b"=") > 2
    reply = web_call(svc.http_port, "/tdb.v1.ModelService/Tokenize", body=body, text=True)
    assert reply.code == grpc.StatusCode.OK
    assert reply.headers["content-type"] == "application/grpc-web-text"
    assert mpb.TokenizeResponse.FromString(reply.messages[0]).prompts[0].token_ids


def test_grpc_timeout_is_the_deadline(web):
    """grpc-timeout becomes the call's deadline (DEADLINE_EXCEEDED, as natively); a malformed
    one is INVALID_ARGUMENT."""
    svc, _, _ = web
    req = epb.ExplainNodeRequest(
        nodes=[f"blocks.1.mlp.hook_post[{i}]" for i in range(16)],
        dataset=epb.Dataset(name="toy"),
        save=False,
    )
    start = time.perf_counter()
    reply = web_call(
        svc.http_port, "/tdb.v1.ExplainService/ExplainNode", req, headers={"grpc-timeout": "200m"}
    )
    assert reply.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - start < 10
    bad = web_call(
        svc.http_port,
        "/tdb.v1.ModelService/ListModels",
        mpb.ListModelsRequest(),
        headers={"grpc-timeout": "soon"},
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and "grpc-timeout" in bad.message


def _rpc_lines(logs: list[dict], request_id: str) -> list[dict]:
    return [e for e in logs if e.get("event") == "rpc" and e.get("request_id") == request_id]


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_client_going_away_cancels_the_call(web):
    """When the HTTP client disconnects in the middle of a long call, the server's call is
    cancelled (its log line says CANCELLED) and stops within seconds, where the whole run (16
    neurons explained over the 2,000-text toy corpus) takes about a minute on a 2-core CPU."""
    svc, _, _ = web
    req = epb.ExplainNodeRequest(
        nodes=[f"blocks.1.mlp.hook_post[{i}]" for i in range(16)],
        dataset=epb.Dataset(name="toy"),
        save=False,
    )
    payload = req.SerializeToString()
    with structlog.testing.capture_logs() as logs:
        conn = http.client.HTTPConnection("127.0.0.1", svc.http_port, timeout=30)
        conn.request(
            "POST",
            "/tdb.v1.ExplainService/ExplainNode",
            body=_frame(payload),
            headers={
                "content-type": "application/grpc-web+proto",
                "x-request-id": "web-cancel-1",
                **AUTH,
            },
        )
        r = conn.getresponse()
        assert r.status == 200
        first = r.read(5)  # the first progress message has begun: the work is under way
        assert len(first) == 5 and first[0] == 0
        start = time.monotonic()
        conn.sock.close()  # the browser tab goes away
        conn.close()
        _wait_for(lambda: _rpc_lines(logs, "web-cancel-1"))
    (line,) = _rpc_lines(logs, "web-cancel-1")
    assert line["status"] == "CANCELLED"
    assert time.monotonic() - start < 10


def test_request_id_log_line_and_metrics(web):
    """A client's x-request-id is the call's: echoed in the headers and trailers, on the server's
    one log line for the call; the call is counted in the server's metrics, and so are requests
    refused for their framing."""
    svc, _, _ = web
    method = "/tdb.v1.ModelService/Tokenize"

    def count(code: str) -> float:
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics.port}/metrics", timeout=10)
            .read()
            .decode()
        )
        series = f'tdb_rpc_requests_total{{code="{code}",method="Tokenize",service="tdb.v1.ModelService"}}'
        m = re.search(re.escape(series) + r" (\S+)", text)
        return float(m.group(1)) if m else 0.0

    ok_before, bad_before = count("OK"), count("INVALID_ARGUMENT")
    with structlog.testing.capture_logs() as logs:
        reply = web_call(
            svc.http_port,
            method,
            mpb.TokenizeRequest(texts=["Hello"]),
            headers={"x-request-id": "web-rid-42"},
        )
        refused = web_call(
            svc.http_port,
            method,
            body=b"\x00\x00",
            headers={"x-request-id": "web-rid-43"},
        )
        _wait_for(lambda: _rpc_lines(logs, "web-rid-42"))
    assert reply.headers["x-request-id"] == reply.trailers["x-request-id"] == "web-rid-42"
    (line,) = _rpc_lines(logs, "web-rid-42")
    assert line["method"] == method and line["status"] == "OK" and line["tokens"] > 0
    assert refused.headers["x-request-id"] == "web-rid-43"
    assert any(
        e.get("event") == "grpc-web refused"
        and e["request_id"] == "web-rid-43"
        and e["status"] == "INVALID_ARGUMENT"
        for e in logs
    )
    assert count("OK") == ok_before + 1
    assert count("INVALID_ARGUMENT") == bad_before + 1


def test_generated_request_id(web):
    """Without x-request-id the server makes one, the same in the header and the trailers."""
    svc, _, _ = web
    reply = web_call(svc.http_port, "/tdb.v1.ModelService/ListModels", mpb.ListModelsRequest())
    rid = reply.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid) and reply.trailers["x-request-id"] == rid


# -- CORS -----------------------------------------------------------------------------------------


def _raw(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_cors_preflight_for_an_allowed_origin(web):
    """Preflight from a --cors-origin origin allows POST with the headers gRPC-Web clients send
    and exposes the status headers; the call then carries Access-Control-Allow-Origin."""
    svc, _, _ = web
    status, headers, _ = _raw(
        svc.http_port,
        "OPTIONS",
        "/tdb.v1.ModelService/ListModels",
        {
            "origin": ALLOWED,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,grpc-timeout,"
            "x-grpc-web,x-user-agent",
        },
    )
    assert status == 204 and headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in headers["access-control-allow-methods"]
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {
        "authorization",
        "content-type",
        "grpc-timeout",
        "x-grpc-web",
        "x-user-agent",
    } <= allowed
    exposed = {h.strip() for h in headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "x-request-id"} <= exposed
    reply = web_call(
        svc.http_port,
        "/tdb.v1.ModelService/ListModels",
        mpb.ListModelsRequest(),
        headers={"origin": ALLOWED},
    )
    assert reply.code == grpc.StatusCode.OK
    assert reply.headers["access-control-allow-origin"] == ALLOWED
    assert "grpc-status" in reply.headers["access-control-expose-headers"]


def test_cors_refuses_other_origins_and_allows_the_same_origin(web):
    """Another origin is refused (403, preflight and call, with how to allow it); a page served by
    this server itself (Origin = its own scheme://host:port) needs no CORS headers."""
    svc, _, _ = web
    evil = "http://evil.example.test"
    status, headers, body = _raw(
        svc.http_port,
        "OPTIONS",
        "/tdb.v1.ModelService/ListModels",
        {"origin": evil, "access-control-request-method": "POST"},
    )
    assert status == 403 and "access-control-allow-origin" not in headers
    assert b"--cors-origin" in body
    reply = web_call(
        svc.http_port,
        "/tdb.v1.ModelService/ListModels",
        mpb.ListModelsRequest(),
        headers={"origin": evil},
    )
    assert reply.http_status == 403
    same = web_call(
        svc.http_port,
        "/tdb.v1.ModelService/ListModels",
        mpb.ListModelsRequest(),
        headers={"origin": f"http://127.0.0.1:{svc.http_port}"},
    )
    assert same.code == grpc.StatusCode.OK and "access-control-allow-origin" not in same.headers


# -- the web app ----------------------------------------------------------------------------------


def test_without_a_built_app_root_says_how_to_build_it(web):
    """With no built app, / says (HTML) how to build it, and gRPC-Web still works."""
    svc, _, _ = web
    status, headers, body = _raw(svc.http_port, "GET", "/", {})
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"make web" in body and b"Node.js 20" in body
    assert web_call(svc.http_port, "/tdb.v1.ModelService/ListModels").code == grpc.StatusCode.OK


@pytest.fixture(scope="module")
def app_server(tiny_loaded, tmp_path_factory):
    """A server without auth serving a built app from --web-dir, and a secret next to it."""
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    tmp = tmp_path_factory.mktemp("app")
    dist = tmp / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>TDB app</title>")
    (dist / "assets" / "index-abc123.js").write_text("console.log('tdb')")
    (dist / "assets" / "index-abc123.css").write_text("body{}")
    (dist / "favicon.svg").write_text("<svg/>")
    (dist / ".env").write_text("SECRET=1")
    (tmp / "secret.txt").write_text("do not serve")
    (dist / "escape").symlink_to(tmp)
    svc = build_server(
        Settings(host="127.0.0.1", port=0, http_port=0, web_dir=str(dist)),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    yield svc
    svc.stop(0)


@pytest.mark.parametrize(
    ("path", "status", "ctype", "snippet"),
    [
        ("/", 200, "text/html", b"TDB app"),
        ("/index.html", 200, "text/html", b"TDB app"),
        ("/assets/index-abc123.js", 200, "text/javascript", b"console.log"),
        ("/assets/index-abc123.css", 200, "text/css", b"body"),
        ("/favicon.svg", 200, "image/svg+xml", b"<svg"),
        ("/node/blocks.1.mlp.hook_post%5B42%5D", 404, "text/plain", b"not found"),
        ("/node/blocks.1.mlp.hook_post%5B42%5D|html", 200, "text/html", b"TDB app"),
        ("/debugger", 200, "text/html", b"TDB app"),  # a client-side route: the app
        ("/node/abc?prompt=x", 200, "text/html", b"TDB app"),
        ("/assets/missing.js", 404, "text/plain", b"not found"),
        ("/../secret.txt", 404, "text/plain", b"not found"),
        ("/%2e%2e/secret.txt", 404, "text/plain", b"not found"),
        ("/escape/secret.txt", 404, "text/plain", b"not found"),
        ("/.env", 404, "text/plain", b"not found"),
    ],
)
def test_static_app(app_server, path, status, ctype, snippet):
    """The built app is served with its content types; client-side routes (no file extension, or
    any page a browser navigates to) get index.html; no path leaves the app's directory (.., encoded .., symlinks out, dotfiles)."""
    path, _, accept = path.partition("|")  # |html: a browser navigation (Accept: text/html)
    got_status, headers, body = _raw(
        app_server.http_port, "GET", path, {"accept": "text/html,*/*"} if accept else {}
    )
    assert (got_status, headers["content-type"].split(";")[0]) == (status, ctype)
    assert snippet in body


def test_static_caching_and_head(app_server):
    """Hashed assets are cached for good, index.html revalidated; ETag gives 304; HEAD has no
    body; gRPC-Web works on the same port."""
    port = app_server.http_port
    headers = _raw(port, "GET", "/assets/index-abc123.js", {})[1]
    assert "immutable" in headers["cache-control"]
    assert (
        _raw(port, "GET", "/assets/index-abc123.js", {"if-none-match": headers["etag"]})[0] == 304
    )
    assert _raw(port, "GET", "/", {})[1]["cache-control"] == "no-cache"
    head = _raw(port, "HEAD", "/", {})
    assert head[0] == 200 and head[2] == b"" and int(head[1]["content-length"]) > 0
    reply = web_call(port, "/tdb.v1.ModelService/ListModels", mpb.ListModelsRequest(), auth=False)
    assert reply.code == grpc.StatusCode.OK


def test_concurrent_calls(web):
    """Several browsers at once: concurrent streaming and unary calls all complete correctly."""
    svc, channel, np = web
    request, _ = _requests(np)["/tdb.v1.InferenceService/Forward"]
    expected, _, _ = native_call(channel, "/tdb.v1.InferenceService/Forward", request)
    results: list[Reply] = []

    def one() -> None:
        results.append(web_call(svc.http_port, "/tdb.v1.InferenceService/Forward", request))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6
    for r in results:
        assert r.code == grpc.StatusCode.OK and r.messages == expected


def test_settings_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """--http-port, --cors-origin (repeatable) and --web-dir, and their TDB_* variables."""
    from services.cli import build_parser
    from services.settings import settings_from_args
    from tdb_core.errors import InvalidArgumentError

    parse = lambda *a: settings_from_args(build_parser().parse_args(["serve", *a]))
    s = parse()
    assert (s.http_port, s.cors_origins, s.web_dir) == (None, (), None)
    s = parse("--http-port", "0", "--cors-origin", "http://a.test:1/", "--cors-origin", "*")
    assert (s.http_port, s.cors_origins) == (0, ("http://a.test:1", "*"))
    monkeypatch.setenv("TDB_HTTP_PORT", "8080")
    monkeypatch.setenv("TDB_CORS_ORIGINS", "http://a.test,https://b.test:8443")
    monkeypatch.setenv("TDB_WEB_DIR", str(tmp_path))
    s = parse()
    assert (s.http_port, s.cors_origins, s.web_dir) == (
        8080,
        ("http://a.test", "https://b.test:8443"),
        str(tmp_path),
    )
    with pytest.raises(InvalidArgumentError, match="--cors-origin"):
        parse("--cors-origin", "a.test/path")
    with pytest.raises(InvalidArgumentError, match="--web-dir"):
        parse("--web-dir", str(tmp_path / "missing"))


def test_http_port_in_use_is_a_clear_error(web, tiny_loaded):
    """Asking for an HTTP port that is taken fails start-up with a message naming it."""
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    svc, _, _ = web
    with pytest.raises(OSError, match=f"cannot serve HTTP on 127.0.0.1:{svc.http_port}"):
        build_server(
            Settings(host="127.0.0.1", port=0, http_port=svc.http_port),
            ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
        )


# -- the protocol pieces, one by one ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(b"1H", 3600.0), (b"2M", 120.0), (b"30S", 30.0), (b"1500m", 1.5), (b"250u", 2.5e-4)],
)
def test_parse_timeout_units(raw, seconds):
    """grpc-timeout: up to 8 digits and a unit (hours down to nanoseconds)."""
    from services.grpcweb import parse_timeout

    assert parse_timeout(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", [b"", b"10", b"123456789S", b"1.5S", b"-1S", b"10s"])
def test_parse_timeout_refuses_malformed(raw):
    from services.grpcweb import GrpcWebError, parse_timeout

    with pytest.raises(GrpcWebError, match="grpc-timeout"):
        parse_timeout(raw)


def test_grpc_message_percent_encoding_round_trips():
    """grpc-message keeps printable ASCII, percent-encodes '%' and everything else as UTF-8."""
    from services.grpcweb import encode_grpc_message

    text = "site 'blocks.9' → 100% wrong\n"
    encoded = encode_grpc_message(text)
    assert encoded == "site 'blocks.9' %E2%86%92 100%25 wrong%0A"
    assert unquote(encoded) == text


def test_request_metadata_keeps_call_metadata_only():
    """authorization, x-request-id and custom headers pass; HTTP and CORS headers do not; -bin
    values are base64-decoded (padded or not); a bad -bin value is refused."""
    from services.grpcweb import GrpcWebError, request_metadata

    md = request_metadata(
        [
            (b"authorization", b"Bearer t"),
            (b"x-request-id", b"abc"),
            (b"x-user-agent", b"grpc-web-javascript/0.1"),
            (b"trace-bin", base64.b64encode(b"\x00\x01").rstrip(b"=")),
            (b"host", b"localhost"),
            (b"origin", b"http://x"),
            (b"cookie", b"session=1"),
            (b"content-type", b"application/grpc-web"),
            (b"grpc-timeout", b"1S"),
            (b"x-grpc-web", b"1"),
            (b"sec-fetch-mode", b"cors"),
            (b"x-weird", b"caf\xc3\xa9"),  # not printable ASCII: dropped
        ]
    )
    assert md == [
        ("authorization", "Bearer t"),
        ("x-request-id", "abc"),
        ("x-user-agent", "grpc-web-javascript/0.1"),
        ("trace-bin", b"\x00\x01"),
    ]
    with pytest.raises(GrpcWebError, match="base64"):
        request_metadata([(b"trace-bin", b"!!!")])


def test_text_body_decoding():
    """One base64 string, several padded chunks, or line-wrapped: the same bytes."""
    from services.grpcweb import GrpcWebError, decode_text_body

    data = bytes(range(40))
    assert decode_text_body(base64.b64encode(data)) == data
    chunks = b"".join(base64.b64encode(data[i : i + 7]) for i in range(0, 40, 7))
    assert decode_text_body(chunks) == data
    assert decode_text_body(base64.encodebytes(data)) == data
    for bad in (b"AAA", b"AA=A", b"A@AA"):
        with pytest.raises(GrpcWebError):
            decode_text_body(bad)
