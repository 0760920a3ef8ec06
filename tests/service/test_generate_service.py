"""Generate over a real channel: streamed events, side-by-side sets, errors with their status
codes (the server keeps serving), and cancellation that stops the server's decoding loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest

from tdb_client import TdbClientError
from tdb_client import generation as gen
from tdb_client import interventions as iv
from tdb_core import specs
from tdb_core.ops import generate as G

PROMPT = "When Mary and John went to the store"


def test_events_stream_in_order_and_match_the_operation(client: Any, tiny_loaded: Any) -> None:
    """Start, one step per token, finish; the tokens equal the in-process operation's."""
    from tdb_core.runner import ModelRunner

    stream = client.generate(
        PROMPT,
        {"zero": [iv.zero("blocks.0.attn.hook_z[head=1]")]},
        max_new_tokens=6,
        alternatives=3,
        stop_at_eos=False,
    )
    events = list(stream)
    start, *steps, finish = events
    assert isinstance(start, gen.GenerateStart) and start.names == ["baseline", "zero"]
    assert start.seed is None
    assert all(isinstance(s, gen.GenerateStep) for s in steps) and len(steps) == 6
    assert [s.position for s in steps] == [len(start.token_ids) + i for i in range(6)]
    assert isinstance(finish, gen.GenerateFinish) and finish.steps == 6
    for s in steps:
        for row in s.rows.values():
            assert len(row.top) == 3 and row.top[0].token_id == row.token.token_id
    for name, row in finish.rows.items():
        assert row.token_ids == [s.rows[name].token.token_id for s in steps]
        assert row.stop_reason == "max_new_tokens"

    runner = ModelRunner(tiny_loaded)
    spec = G.GenerateSpec(
        prompt=specs.Prompt(text=PROMPT),
        sets=(
            G.GenerateSet(
                "zero",
                (G.Edit(specs.Intervention("blocks.0.attn.hook_z", specs.Zero(), units=(1,))),),
            ),
        ),
        max_new_tokens=6,
        stop_at_eos=False,
    )
    local = list(G.generate(runner, spec))[-1]
    assert isinstance(local, G.Finish)
    assert [list(r.token_ids) for r in local.rows] == [r.token_ids for r in finish.rows.values()]
    assert [r.text for r in local.rows] == list(finish.texts.values())


def test_generated_scope_and_captures_travel(client: Any) -> None:
    """A scoped edit and a capture with top-k round-trip: each step carries [1, 1, k] values."""
    stream = client.generate(
        PROMPT,
        {"late": [gen.generated(iv.scale("blocks.1.mlp.hook_post", 0.0))]},
        max_new_tokens=3,
        capture=[iv_capture()],
        stop_at_eos=False,
    )
    events = list(stream)
    first = events[1]
    assert isinstance(first, gen.GenerateStep)
    # the edit starts at the first generated position: the first token is the baseline's
    base, late = first.rows["baseline"], first.rows["late"]
    assert base.token == late.token
    assert base.activations["blocks.1.hook_resid_post"].shape == (1, 1, 4)
    assert base.indices["blocks.1.hook_resid_post"].dtype == np.int64


def iv_capture() -> Any:
    from tdb_client.types import Capture

    return Capture(site="blocks.1.hook_resid_post", top_k=4)


def test_seed_reported_and_reproducible(client: Any) -> None:
    a = client.generate(PROMPT, max_new_tokens=8, temperature=1.0, top_k=50)
    events = list(a)
    seed = events[0].seed
    assert seed is not None
    again = client.generate_texts(PROMPT, max_new_tokens=8, temperature=1.0, top_k=50, seed=seed)
    assert again == a.finish.texts


@pytest.mark.parametrize(
    ("kw", "code", "words"),
    [
        ({"max_new_tokens": -1}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens"),
        ({"max_new_tokens": 60}, grpc.StatusCode.OUT_OF_RANGE, "context of 64"),
        (
            {"max_new_tokens": 45},
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "tokens \\(prompt plus new\\)",
        ),
        ({"sets": [[]] * 4}, grpc.StatusCode.RESOURCE_EXHAUSTED, "5 rows"),
        ({"temperature": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        ({"sets": [[gen.steer_latent("nope", 1, 2.0)]]}, grpc.StatusCode.NOT_FOUND, "SAE 'nope'"),
        (
            {"sets": [[iv.add("blocks.0.hook_resid_pre", np.ones(7))]]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not broadcast",
        ),
        (
            {"sets": [[iv.add("blocks.0.hook_resid_pre", np.ones(64), coeff=float("nan"))]]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "finite",
        ),
        (
            {"sets": [[iv.patch("blocks.0.hook_resid_pre")]]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "patch",
        ),
        (
            {"sets": [[iv.zero("blocks.0.mlp.hook_post[neuron=9999]")]]},
            grpc.StatusCode.OUT_OF_RANGE,
            "neuron 9999",
        ),
    ],
)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    client: Any, kw: dict[str, Any], code: grpc.StatusCode, words: str
) -> None:
    sets = kw.pop("sets", ())
    with pytest.raises(TdbClientError) as e:
        client.generate_texts(PROMPT, sets, **kw)
    assert e.value.code == code, e.value.details
    assert __import__("re").search(words, e.value.details), e.value.details
    assert client.generate_texts(PROMPT, max_new_tokens=2)["baseline"]


def test_cancel_stops_the_server_at_the_next_step(client: Any, tiny_loaded: Any) -> None:
    """After the client cancels, the server runs no further decoding pass (a forward hook on the
    embedding counts passes and slows each one down so the generation cannot finish first)."""
    passes = [0]
    lock = threading.Lock()

    def slow(mod: Any, args: Any, out: Any) -> None:
        with lock:
            passes[0] += 1
        time.sleep(0.05)

    h = tiny_loaded.adapter.model.transformer.wte.register_forward_hook(slow)
    try:
        stream = client.generate("The cat", max_new_tokens=40, stop_at_eos=False)
        it = iter(stream)
        next(it)  # start
        next(it)  # step 0
        next(it)  # step 1
        stream.cancel()
        with pytest.raises(TdbClientError) as e:
            list(it)
        assert e.value.code == grpc.StatusCode.CANCELLED
        time.sleep(0.3)
        with lock:
            seen = passes[0]
        time.sleep(0.5)
        with lock:
            assert passes[0] == seen
        assert seen < 10
    finally:
        h.remove()
    assert client.generate_texts(PROMPT, max_new_tokens=2)["baseline"]
