"""One set of request checks: each mistake, sent to every RPC that accepts it, gets the same status
code and the same words (tdb_core/checks.py), and a message quotes at most a short prefix of a
user's value.

The table is MISTAKES: a mistake's code and the pattern of its words, and one raw request per RPC
that can make it. Requests are built from the generated messages, not the client's helpers, so
every check is the server's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
import torch

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
from tdb_core.runner import ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, build_sae
from tests.tiny import CORPUS

PROMPT = "When Mary and John went to the store, John gave a drink to"
D_SAE = 80
TEXTS = sorted(set(CORPUS))[:20]
VECTOR = cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=[64], data=bytes(4 * 64))


def _sae():
    g = torch.Generator().manual_seed(0)
    return build_sae(
        SaeConfig(d_in=64, d_sae=D_SAE, architecture=ReluArch(), site="blocks.1.hook_resid_pre"),
        {
            "W_enc": torch.randn(64, D_SAE, generator=g) * 0.3,
            "b_enc": torch.zeros(D_SAE),
            "W_dec": torch.randn(D_SAE, 64, generator=g) * 0.1,
            "b_dec": torch.zeros(64),
        },
    )


@dataclass(frozen=True)
class Sizes:
    vocab: int
    n_layers: int
    n_heads: int
    d_mlp: int


@pytest.fixture(scope="module")
def checked(tiny_loaded, tmp_path_factory):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("res1", _sae(), "memory")
    db = tmp_path_factory.mktemp("catalog") / "explanations.sqlite"
    svc = build_server(Settings(port=0, explanations_db=str(db)), ModelRegistry([runner]))
    channel = grpc.insecure_channel(f"127.0.0.1:{svc.port}")
    d = runner.schema.dims
    yield channel, Sizes(d.d_vocab, d.n_layers, d.n_heads, d.d_mlp)
    channel.close()
    svc.stop(0)


# --------------------------------------------------------------------------------------------------
# Request builders (raw messages)


def text(t: str = PROMPT) -> cpb.Prompt:
    return cpb.Prompt(text=t)


def ids(*token_ids: int) -> cpb.Prompt:
    return cpb.Prompt(token_ids=cpb.TokenIds(ids=list(token_ids)))


def toks(*strings: str, ids: tuple[int, ...] = ()) -> cpb.Tokens:
    return cpb.Tokens(strings=list(strings), ids=list(ids))


def zero(site: str, units: tuple[int, ...] = (), positions: tuple[int, ...] = ()):
    return cpb.Intervention(
        site=site, units=list(units), positions=list(positions), zero=cpb.ZeroOp()
    )


def forward(**kw) -> tuple[str, ipb.ForwardRequest]:
    kw.setdefault("prompts", [text()])
    return "Forward", ipb.ForwardRequest(**kw)


def ablate(**kw) -> tuple[str, ipb.AblateRequest]:
    kw.setdefault("prompt", text())
    kw.setdefault(
        "sets", [cpb.InterventionSet(name="z", interventions=[zero("blocks.0.hook_resid_pre")])]
    )
    return "Ablate", ipb.AblateRequest(**kw)


def sweep(**kw) -> tuple[str, ipb.PatchSweepRequest]:
    kw.setdefault("clean", text(PROMPT))
    kw.setdefault("corrupted", text(PROMPT.replace("John gave", "Mary gave")))
    kw.setdefault("site", "hook_resid_pre")
    if "target" not in kw and "distractor" not in kw:
        kw["target"], kw["distractor"] = toks(" Mary"), toks(" John")
    return "PatchSweep", ipb.PatchSweepRequest(**kw)


def attribute(**kw) -> tuple[str, apb.AttributeRequest]:
    kw.setdefault("prompt", text())
    if not {"logit_diff", "log_prob", "neuron", "head", "latent", "direction"} & set(kw):
        kw["logit_diff"] = apb.LogitDiffLoss(target=toks(" Mary"), distractor=toks(" John"))
    return "Attribute", apb.AttributeRequest(**kw)


def generate(*edits: cpb.Intervention, **kw) -> tuple[str, ipb.GenerateRequest]:
    kw.setdefault("prompt", text())
    kw.setdefault("max_new_tokens", 2)
    if edits:
        kw["sets"] = [
            ipb.GenerateSet(name="e", edits=[ipb.GenerateEdit(intervention=e) for e in edits])
        ]
    return "Generate", ipb.GenerateRequest(**kw)


def encode(**kw) -> tuple[str, spb.EncodeRequest]:
    kw.setdefault("sae", "res1")
    if "prompts" not in kw:
        kw["prompts"] = spb.PromptList(prompts=[text()])
    return "Encode", spb.EncodeRequest(**kw)


def dataset() -> epb.Dataset:
    return epb.Dataset(texts=epb.TextList(texts=TEXTS))


NODE_REQUESTS = {
    "GetActivationRecords": epb.GetActivationRecordsRequest,
    "ExplainNode": epb.ExplainNodeRequest,
}


def by_node(method: str, *nodes: str) -> tuple[str, object]:
    """A request of an RPC that takes node keys, mining a few texts."""
    if method == "ScoreExplanation":
        request = epb.ScoreExplanationRequest(
            node=nodes[0], explanation="the word 'the'", dataset=dataset()
        )
        return method, request
    return method, NODE_REQUESTS[method](nodes=list(nodes), dataset=dataset())


def node_rpcs(node: str) -> list[tuple[str, object]]:
    """The same node key sent to every RPC that takes one."""
    return [by_node(m, node) for m in ("GetActivationRecords", "ExplainNode", "ScoreExplanation")]


STUBS = {
    "Forward": (ipb_grpc.InferenceServiceStub, True),
    "Ablate": (ipb_grpc.InferenceServiceStub, True),
    "PatchSweep": (ipb_grpc.InferenceServiceStub, False),
    "Generate": (ipb_grpc.InferenceServiceStub, True),
    "Attribute": (apb_grpc.AttributionServiceStub, False),
    "Encode": (spb_grpc.SaeServiceStub, True),
    "Decode": (spb_grpc.SaeServiceStub, False),
    "ListSaes": (spb_grpc.SaeServiceStub, False),
    "GetModelInfo": (mpb_grpc.ModelServiceStub, False),
    "Tokenize": (mpb_grpc.ModelServiceStub, False),
    "Detokenize": (mpb_grpc.ModelServiceStub, False),
    "GetActivationRecords": (epb_grpc.ExplainServiceStub, False),
    "ExplainNode": (epb_grpc.ExplainServiceStub, True),
    "ScoreExplanation": (epb_grpc.ExplainServiceStub, False),
    "ListExplanations": (epb_grpc.ExplainServiceStub, False),
}


def call(channel: grpc.Channel, method: str, request) -> grpc.RpcError:
    stub_class, streaming = STUBS[method]
    rpc = getattr(stub_class(channel), method)
    with pytest.raises(grpc.RpcError) as info:
        out = rpc(request, timeout=60)
        if streaming:
            list(out)
    return info.value


# --------------------------------------------------------------------------------------------------
# The table: mistake -> (code, words, requests of every RPC that accepts it)

Build = Callable[[Sizes], list[tuple[str, object]]]


@dataclass(frozen=True)
class Mistake:
    code: grpc.StatusCode
    words: Callable[[Sizes], str]  # a regular expression every message must match
    requests: Build


def _oov(s: Sizes) -> int:
    return s.vocab + 7


MISTAKES: dict[str, Mistake] = {
    "token id outside the vocabulary": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: (
            rf"has token id {_oov(s)} outside the vocabulary \(allowed: 0\.\.{s.vocab - 1}\)$"
        ),
        lambda s: [
            forward(prompts=[ids(1, 2, _oov(s))]),
            forward(prompts=[ids(1, 2, 3)], sources=[ids(_oov(s), 2, 3)]),
            ablate(prompt=ids(_oov(s), 1)),
            ablate(target=toks(ids=(_oov(s),)), distractor=toks(" John")),
            sweep(clean=ids(1, 2, _oov(s)), corrupted=ids(1, 2, 3)),
            sweep(target=toks(ids=(_oov(s),)), distractor=toks(" John")),
            attribute(prompt=ids(3, _oov(s))),
            attribute(
                logit_diff=apb.LogitDiffLoss(target=toks(ids=(_oov(s),)), distractor=toks(" John"))
            ),
            attribute(log_prob=apb.LogProbLoss(target=toks(ids=(_oov(s),)))),
            encode(prompts=spb.PromptList(prompts=[ids(1, _oov(s))])),
            generate(prompt=ids(1, _oov(s))),
            ("Detokenize", mpb.DetokenizeRequest(token_ids=[1, _oov(s)])),
        ],
    ),
    "layer out of range": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: rf"^layer 9\b.* is out of range \(allowed: 0\.\.{s.n_layers - 1}\)$",
        lambda s: [
            forward(captures=[cpb.Capture(site="blocks.9.mlp.hook_post")]),
            forward(interventions=[zero("blocks.9.hook_resid_pre")]),
            ablate(
                sets=[cpb.InterventionSet(name="z", interventions=[zero("blocks.9.mlp.hook_post")])]
            ),
            sweep(layers=[0, 9]),
            generate(zero("blocks.9.mlp.hook_post")),
            attribute(neuron=apb.NeuronTrace(layer=9, neuron=0)),
            attribute(head=apb.HeadTrace(layer=9, head=0, key_position=0)),
            attribute(direction=apb.DirectionLoss(site="blocks.9.hook_resid_pre", vector=VECTOR)),
            *node_rpcs("blocks.9.mlp.hook_post[1]"),
        ],
    ),
    "head out of range": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: rf"^head 7\b.* is out of range \(allowed: 0\.\.{s.n_heads - 1}\)$",
        lambda s: [
            forward(captures=[cpb.Capture(site="blocks.0.attn.hook_z", units=[7])]),
            forward(interventions=[zero("blocks.0.attn.hook_z", units=(1, 7))]),
            ablate(
                sets=[
                    cpb.InterventionSet(
                        name="h", interventions=[zero("blocks.1.attn.hook_z", units=(7,))]
                    )
                ]
            ),
            attribute(head=apb.HeadTrace(layer=0, head=7, key_position=0)),
            generate(zero("blocks.0.attn.hook_z", units=(7,))),
            *node_rpcs("blocks.0.attn.hook_pattern[7]"),
        ],
    ),
    "neuron out of range": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: rf"^neuron {s.d_mlp + 5}\b.* is out of range \(allowed: 0\.\.{s.d_mlp - 1}\)$",
        lambda s: [
            forward(captures=[cpb.Capture(site="blocks.0.mlp.hook_post", units=[s.d_mlp + 5])]),
            ablate(
                sets=[
                    cpb.InterventionSet(
                        name="n",
                        interventions=[zero("blocks.0.mlp.hook_post", units=(s.d_mlp + 5,))],
                    )
                ]
            ),
            attribute(neuron=apb.NeuronTrace(layer=1, neuron=s.d_mlp + 5)),
            generate(zero("blocks.0.mlp.hook_post", units=(s.d_mlp + 5,))),
            *node_rpcs(f"blocks.0.mlp.hook_post[{s.d_mlp + 5}]"),
        ],
    ),
    "latent out of range": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: rf"^latent {D_SAE + 5}\b.* is out of range \(allowed: 0\.\.{D_SAE - 1}\)$",
        lambda s: [
            forward(captures=[cpb.Capture(site="sae.res1.hook_sae_acts_post", units=[D_SAE + 5])]),
            ablate(
                sets=[
                    cpb.InterventionSet(
                        name="l",
                        interventions=[zero("sae.res1.hook_sae_acts_post", units=(D_SAE + 5,))],
                    )
                ]
            ),
            attribute(latent=apb.LatentTrace(sae="res1", latent=D_SAE + 5)),
            generate(zero("sae.res1.hook_sae_acts_post", units=(D_SAE + 5,))),
            *node_rpcs(f"sae.res1.hook_sae_acts_post[{D_SAE + 5}]"),
        ],
    ),
    "position out of range": Mistake(
        grpc.StatusCode.OUT_OF_RANGE,
        lambda s: (
            r"position 50 is out of range for prompt 0, which has \d+ tokens \(allowed: -\d+\.\.\d+\)$"
        ),
        lambda s: [
            forward(captures=[cpb.Capture(site="blocks.0.hook_resid_pre", positions=[50])]),
            forward(logit_positions=[-1, 50]),
            forward(interventions=[zero("blocks.0.hook_resid_pre", positions=(50,))]),
            ablate(position=50),
            sweep(position=50),
            attribute(
                logit_diff=apb.LogitDiffLoss(
                    target=toks(" Mary"), distractor=toks(" John"), position=50
                )
            ),
            attribute(neuron=apb.NeuronTrace(layer=1, neuron=0, position=50)),
            attribute(head=apb.HeadTrace(layer=1, head=0, query_position=50, key_position=0)),
        ],
    ),
    "top-k over its bound": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: r"^(capture )?top_k must be in [01]\.\.1000, got 5000$",
        lambda s: [
            forward(top_k=5000),
            forward(captures=[cpb.Capture(site="blocks.0.mlp.hook_post", top_k=cpb.TopK(k=5000))]),
            ablate(top_k=5000),
            attribute(top_k=5000),
            encode(top_k=5000),
            generate(top_k=5000),
        ],
    ),
    "top-k of zero where one is needed": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: r"^(capture )?top_k must be in 1\.\.1000, got 0$",
        lambda s: [
            forward(captures=[cpb.Capture(site="blocks.0.mlp.hook_post", top_k=cpb.TopK(k=0))]),
            attribute(top_k=0),
        ],
    ),
    "an empty list": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: r"^no (prompts|nodes); give at least one",
        lambda s: [
            forward(prompts=[]),
            encode(prompts=spb.PromptList(prompts=[])),
            by_node("GetActivationRecords"),
            by_node("ExplainNode"),
        ],
    ),
    "a missing prompt": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: r"^the (clean |corrupted )?prompt is missing; give one$",
        lambda s: [
            ("Ablate", ipb.AblateRequest()),
            ("PatchSweep", ipb.PatchSweepRequest(corrupted=text(), site="hook_resid_pre")),
            ("Attribute", apb.AttributeRequest(logit_diff=apb.LogitDiffLoss())),
        ],
    ),
    "a target without a distractor": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: (
            r"^give (both target and distractor tokens, or neither|at least one target and one distractor token)$"
        ),
        lambda s: [
            ablate(target=toks(" Mary")),
            sweep(target=toks(" Mary")),
            attribute(logit_diff=apb.LogitDiffLoss(target=toks(" Mary"))),
        ],
    ),
    "no target": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: r"^give at least one target( and one distractor)? token$",
        lambda s: [
            sweep(target=toks(), distractor=toks()),
            attribute(logit_diff=apb.LogitDiffLoss()),
            attribute(log_prob=apb.LogProbLoss()),
        ],
    ),
    "a target that is not one token": Mistake(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda s: (
            r"^(target|distractor) ' Mary John' is \d+ tokens \[.*\], not one; use a string that is a single token"
        ),
        lambda s: [
            ablate(target=toks(" Mary John"), distractor=toks(" John")),
            sweep(target=toks(" Mary"), distractor=toks(" Mary John")),
            attribute(
                logit_diff=apb.LogitDiffLoss(target=toks(" Mary John"), distractor=toks(" John"))
            ),
            attribute(log_prob=apb.LogProbLoss(target=toks(" Mary John"))),
        ],
    ),
}

NOPE = "nope"
LATENTS = cpb.Tensor(dtype=cpb.DTYPE_FLOAT32, shape=[1, D_SAE], data=bytes(4 * D_SAE))


def on_model(model: str) -> list[tuple[str, object]]:
    """A valid request of every RPC that names a model, naming ``model``."""
    out: list[tuple[str, object]] = [
        forward(model=model),
        ablate(model=model),
        sweep(model=model),
        attribute(model=model),
        encode(model=model),
        ("Decode", spb.DecodeRequest(model=model, sae="res1", latents=LATENTS)),
        ("ListSaes", spb.ListSaesRequest(model=model)),
        ("GetModelInfo", mpb.GetModelInfoRequest(model=model)),
        ("Tokenize", mpb.TokenizeRequest(model=model, texts=["hi"])),
        ("Detokenize", mpb.DetokenizeRequest(model=model, token_ids=[1])),
    ]
    for method, request in node_rpcs("blocks.0.mlp.hook_post[1]"):
        request.model = model  # type: ignore[attr-defined]
        out.append((method, request))
    return out


MISTAKES.update(
    {
        "an unknown model": Mistake(
            grpc.StatusCode.NOT_FOUND,
            lambda s: r"^model 'nope' is not loaded; available: tiny$",
            lambda s: on_model(NOPE),
        ),
        "an unknown SAE": Mistake(
            grpc.StatusCode.NOT_FOUND,
            lambda s: r"^SAE 'nope' is not attached to model 'tiny'; available: res1$",
            lambda s: [
                encode(sae=NOPE),
                ("Decode", spb.DecodeRequest(sae=NOPE, latents=LATENTS)),
                attribute(latent=apb.LatentTrace(sae=NOPE, latent=0)),
            ],
        ),
        "an unknown explanation method": Mistake(
            grpc.StatusCode.NOT_FOUND,
            lambda s: r"^explanation method 'nope' is not configured; available: baseline$",
            lambda s: [
                (
                    "ExplainNode",
                    epb.ExplainNodeRequest(nodes=["blocks.0.mlp.hook_post[1]"], method=NOPE),
                ),
                (
                    "ScoreExplanation",
                    epb.ScoreExplanationRequest(
                        node="blocks.0.mlp.hook_post[1]", explanation="x", method=NOPE
                    ),
                ),
            ],
        ),
        "an unknown dataset": Mistake(
            grpc.StatusCode.NOT_FOUND,
            lambda s: r"^dataset 'nope' is not registered; available: toy$",
            lambda s: (
                [
                    (
                        m,
                        type(r)(
                            nodes=["blocks.0.mlp.hook_post[1]"], dataset=epb.Dataset(name=NOPE)
                        ),
                    )
                    for m, r in (by_node("GetActivationRecords"), by_node("ExplainNode"))
                ]
                + [
                    (
                        "ScoreExplanation",
                        epb.ScoreExplanationRequest(
                            node="blocks.0.mlp.hook_post[1]",
                            explanation="x",
                            dataset=epb.Dataset(name=NOPE),
                        ),
                    )
                ]
            ),
        ),
    }
)

CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name in MISTAKES
    for i in range(len(MISTAKES[name].requests(Sizes(100, 2, 4, 256))))
]


@pytest.mark.parametrize("name,i", CASES)
def test_same_mistake_same_status_and_words(checked, name, i):
    """Every RPC that accepts a mistake answers it with the mistake's status code and words."""
    channel, sizes = checked
    mistake = MISTAKES[name]
    method, request = mistake.requests(sizes)[i]
    err = call(channel, method, request)
    assert err.code() == mistake.code, f"{method}: {err.code()} {err.details()}"
    assert re.search(mistake.words(sizes), err.details()), f"{method}: {err.details()!r}"


def test_every_rpc_with_such_input_is_in_the_table(checked):
    """The table covers each RPC that takes prompts, token ids, units, positions or top-k."""
    _, sizes = checked
    covered = {m for mistake in MISTAKES.values() for m, _ in mistake.requests(sizes)}
    assert covered >= {
        "Forward",
        "Ablate",
        "PatchSweep",
        "Attribute",
        "Encode",
        "Detokenize",
        "GetActivationRecords",
        "ExplainNode",
        "ScoreExplanation",
        "Decode",
        "GetModelInfo",
        "ListSaes",
        "Tokenize",
    }


LONG = "x" * 100_000


@pytest.mark.parametrize(
    "method,request_,code",
    [
        (
            "Forward",
            ipb.ForwardRequest(prompts=[text()], captures=[cpb.Capture(site=LONG)]),
            "NOT_FOUND",
        ),
        ("Forward", ipb.ForwardRequest(model=LONG, prompts=[text()]), "NOT_FOUND"),
        (
            "Forward",
            ipb.ForwardRequest(prompts=[text()], interventions=[cpb.Intervention(site=LONG)]),
            "INVALID_ARGUMENT",
        ),
        (
            "Ablate",
            ablate(target=toks(" Mary" * 2000), distractor=toks(" John"))[1],
            "INVALID_ARGUMENT",
        ),
        ("PatchSweep", sweep(site=LONG)[1], "NOT_FOUND"),
        ("Encode", encode(sae=LONG)[1], "NOT_FOUND"),
        ("ExplainNode", by_node("ExplainNode", LONG)[1], "INVALID_ARGUMENT"),
        (
            "GetActivationRecords",
            epb.GetActivationRecordsRequest(
                nodes=["blocks.0.mlp.hook_post[1]"], dataset=epb.Dataset(name=LONG)
            ),
            "NOT_FOUND",
        ),
    ],
)
def test_messages_quote_a_short_prefix_of_long_values(checked, method, request_, code):
    """A user's long value is quoted by a short prefix and its length, never in full."""
    channel, _ = checked
    err = call(channel, method, request_)
    assert err.code().name == code, err.details()
    assert len(err.details()) < 1000 and LONG not in err.details()
    assert "characters)" in err.details()
