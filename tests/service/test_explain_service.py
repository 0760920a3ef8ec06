"""ExplainService over a real channel: records, explanations with streamed progress, scores,
the persistent catalog, and explanations next to Attribute's nodes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tdb_client import TdbClient, TdbClientError
from tdb_core.runner import ModelRunner
from tests.tiny import CORPUS

TEXTS = sorted(set(CORPUS))


def _most_active_neuron(runner: ModelRunner, layer: int) -> int:
    from tdb_core import specs

    res = runner.forward(
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=t) for t in TEXTS),
            captures=(specs.Capture(f"blocks.{layer}.mlp.hook_post"),),
        )
    )
    return int(res.captures[0].values.amax((0, 1)).argmax())


@pytest.fixture(scope="module", autouse=True)
def _node(tiny_runner):
    global NODE, NEURON0
    NODE = f"blocks.1.mlp.hook_post[{_most_active_neuron(tiny_runner, 1)}]"
    NEURON0 = _most_active_neuron(tiny_runner, 0)


NODE = ""
NEURON0 = 0


@pytest.fixture(scope="module")
def explain_service(tiny_loaded, tmp_path_factory):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    db = tmp_path_factory.mktemp("catalog") / "explanations.sqlite"
    settings = Settings(port=0, explanations_db=str(db))
    svc = build_server(settings, ModelRegistry([ModelRunner(tiny_loaded)]))
    yield svc, settings
    svc.stop(0)


@pytest.fixture()
def eclient(explain_service):
    with TdbClient(f"127.0.0.1:{explain_service[0].port}") as c:
        yield c


def test_activation_records_match_forward(eclient):
    """A node's top record holds the activations Forward reads for that window."""
    (rec,) = eclient.activation_records(NODE, dataset=TEXTS, window_len=16, top_k=3, n_random=2)
    assert rec.node == NODE and rec.kind == "token" and len(rec.top) == 3 and len(rec.random) == 2
    top = rec.top[0]
    assert max(top.activations) == pytest.approx(rec.max_activation, abs=1e-6)
    ids = [eclient.tokenize(t) for t in TEXTS]
    # find the window by its tokens and compare with a Forward capture of it
    window_ids = None
    for row in ids:
        for start in range(0, len(row), 16):
            w = row[start : start + 16]
            if [eclient.detokenize([i]) for i in w] == top.tokens:
                window_ids = w
    assert window_ids is not None
    out = eclient.forward([window_ids], capture=["blocks.1.mlp.hook_post"])
    unit = int(NODE.split("[")[1][:-1])
    np.testing.assert_allclose(
        out.activations["blocks.1.mlp.hook_post"][0, :, unit], top.activations, atol=1e-5
    )


def test_explain_streams_progress_and_persists(eclient, explain_service, tiny_loaded):
    """ExplainNode streams mining, explaining, simulating, scoring, done; the result is scored and
    stored; a restarted server (same catalog file) still lists it."""
    events = []
    (res,) = eclient.explain(NODE, dataset=TEXTS, on_progress=events.append, window_len=16)
    phases = [e.phase for e in events]
    for phase in ("mining", "explaining", "simulating", "scoring", "done"):
        assert phase in phases
    assert phases.index("mining") < phases.index("explaining") < phases.index("done")
    assert res.node == NODE and res.method == "baseline" and res.explanation
    assert res.score is not None or res.score_reason
    assert any(e.node == NODE for e in eclient.list_explanations(node_prefix="blocks.1.mlp"))
    from services.registry import ModelRegistry
    from services.server import build_server

    svc2 = build_server(explain_service[1], ModelRegistry([ModelRunner(tiny_loaded)]))
    try:
        with TdbClient(f"127.0.0.1:{svc2.port}") as c2:
            again = c2.list_explanations(node=NODE)
        assert [e.explanation for e in again] == [res.explanation]
    finally:
        svc2.stop(0)


def test_heads_and_scores(eclient):
    """Heads are explained over token pairs (ROC AUC); a given explanation can be scored."""
    (head,) = eclient.explain(
        "blocks.0.attn.hook_pattern[1]", dataset=TEXTS, window_len=12, save=False
    )
    assert head.node == "blocks.0.attn.hook_pattern[1]" and "roc_auc" in head.scores
    (neuron,) = eclient.explain(NODE, dataset=TEXTS, window_len=16, save=False)
    scored = eclient.score_explanation(NODE, neuron.explanation, dataset=TEXTS, window_len=16)
    assert neuron.score is not None
    assert scored.score == pytest.approx(neuron.score, abs=1e-6)
    wrong = eclient.score_explanation(NODE, 'the token " zzz" (10.0)', dataset=TEXTS, window_len=16)
    assert wrong.score is None or wrong.score < neuron.score


def test_attribute_rows_carry_explanations(eclient):
    """A node with a stored explanation shows it in Attribute's table."""
    key = f"blocks.0.mlp.hook_post[{NEURON0}]"
    eclient.explain(key, dataset=TEXTS, window_len=16)
    table = eclient.attribute(
        "When Mary and John went to the store, John gave a drink to",
        target=" Mary",
        distractor=" John",
        top_k=400,
        families=["mlp_neuron"],
    )
    rows = [r for r in table.rows if r.node.layer == 0 and r.node.index == NEURON0]
    assert rows and rows[0].explanation is not None and rows[0].explanation.node == key


@pytest.mark.parametrize(
    "kwargs,code,text",
    [
        (dict(nodes="blocks.9.mlp.hook_post[1]"), grpc.StatusCode.OUT_OF_RANGE, "layers"),
        (dict(nodes="blocks.0.mlp.hook_nope[1]"), grpc.StatusCode.NOT_FOUND, "unknown hook site"),
        (dict(nodes="blocks.0.mlp.hook_post[99999]"), grpc.StatusCode.OUT_OF_RANGE, "unit 99999"),
        (
            dict(nodes="blocks.0.attn.hook_z[1]"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot be explained",
        ),
        (dict(nodes="not a node"), grpc.StatusCode.INVALID_ARGUMENT, "SITE[UNIT,pos=P,key=K]"),
        (
            dict(nodes="blocks.1.mlp.hook_post[1]", dataset=["", "  "]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty",
        ),
        (
            dict(nodes="blocks.1.mlp.hook_post[1]", dataset="nope"),
            grpc.StatusCode.NOT_FOUND,
            "not registered",
        ),
        (
            dict(nodes="blocks.1.mlp.hook_post[1]", method="openai"),
            grpc.StatusCode.NOT_FOUND,
            "not configured",
        ),
    ],
)
def test_bad_explain_requests(eclient, kwargs, code, text):
    """Unknown nodes, empty datasets and unconfigured methods get clear errors."""
    kwargs.setdefault("dataset", TEXTS)
    with pytest.raises(TdbClientError) as e:
        eclient.explain(**kwargs)
    assert e.value.code == code and text in e.value.details, e.value
