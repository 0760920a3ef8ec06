"""The runner's admission control, bounded queue, cancellation and micro-batching."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tdb_core import cancel, errors, specs
from tdb_core.ops.forward import forward
from tdb_core.runner import Limits, ModelRunner

PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The quick brown fox",
    "I ate an apple and a banana",
    "A cat sat on the mat while the dog slept",
]


def _spec(text: str, *caps: specs.Capture) -> specs.ForwardSpec:
    return specs.ForwardSpec(prompts=(specs.Prompt(text=text),), captures=caps, top_k=3)


def test_memory_budget_is_checked_before_work(tiny_loaded):
    """A request whose estimated working memory exceeds the budget is RESOURCE_EXHAUSTED with the
    estimate, and no forward pass runs."""
    runner = ModelRunner(tiny_loaded, Limits(max_working_bytes=64 * 2**10))
    with pytest.raises(errors.ResourceExhaustedError, match="MiB of working memory"):
        forward(runner, _spec(PROMPTS[0], specs.Capture("*")))
    assert runner.stats["passes"] == 0 and runner.queue_depth == 0


def test_full_queue_is_unavailable_and_slots_are_freed(tiny_loaded):
    """With the model busy and the queue full, a new request is UNAVAILABLE (retryable); the
    queue drains and a later request succeeds."""
    runner = ModelRunner(tiny_loaded, Limits(max_queue=1))
    runner.admission._lock.acquire()  # the model is busy
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(forward, runner, _spec(PROMPTS[0]))
            deadline = time.monotonic() + 5
            while runner.queue_depth < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(errors.UnavailableError, match="busy"):
                forward(runner, _spec(PROMPTS[1]))
            runner.admission._lock.release()
            assert first.result(timeout=30).top_logits
            runner.admission._lock.acquire()
    finally:
        runner.admission._lock.release()
    assert runner.queue_depth == 0
    assert forward(runner, _spec(PROMPTS[1])).top_logits


def test_cancelled_request_stops_waiting_and_frees_its_slot(tiny_loaded):
    """A request whose check says 'cancelled' stops while waiting for the model; its slot is
    released; during a pass the check runs at every layer."""
    runner = ModelRunner(tiny_loaded)
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise errors.DeadlineExceededError("deadline passed")

    runner.admission._lock.acquire()
    try:
        with ThreadPoolExecutor(1) as pool:

            def call():
                with cancel.scope(check):
                    return forward(
                        runner,
                        specs.ForwardSpec(
                            prompts=(specs.Prompt(text=PROMPTS[0]),),
                            interventions=(
                                specs.Intervention("blocks.0.hook_resid_pre", specs.Scale(1.0)),
                            ),
                        ),
                    )

            fut = pool.submit(call)
            time.sleep(0.1)
            stop.set()
            with pytest.raises(errors.DeadlineExceededError):
                fut.result(timeout=10)
    finally:
        runner.admission._lock.release()
    assert runner.queue_depth == 0 and runner.stats["passes"] == 0
    calls = []
    with cancel.scope(lambda: calls.append(1)):
        forward(runner, _spec(PROMPTS[0]))
    assert len(calls) >= runner.schema.dims.n_layers


def test_concurrent_reads_are_merged_and_each_gets_its_own_result(tiny_loaded):
    """Reads arriving while the model is busy run as one padded batch; each result equals the
    request run alone (same tokens, top-k, captures trimmed to its own length)."""
    runner = ModelRunner(tiny_loaded)
    caps = (
        specs.Capture("blocks.*.attn.hook_pattern"),
        specs.Capture("blocks.1.mlp.hook_post", positions=(-1,)),
        specs.Capture("logits", top_k=specs.TopK(4)),
    )
    alone = [forward(runner, _spec(p, *caps)) for p in PROMPTS]
    runner.admission._lock.acquire()
    try:
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            futs = [pool.submit(forward, runner, _spec(p, *caps)) for p in PROMPTS]
            deadline = time.monotonic() + 5
            while len(runner.admission._pending) < len(PROMPTS) and time.monotonic() < deadline:
                time.sleep(0.01)
            runner.admission._lock.release()
            merged = [f.result(timeout=60) for f in futs]
            runner.admission._lock.acquire()
    finally:
        runner.admission._lock.release()
    assert runner.stats["merged_passes"] >= 1 and runner.stats["merged_requests"] >= 2
    for a, m in zip(alone, merged):
        assert a.prompts == m.prompts
        assert [t.token_ids for t in a.top_logits[0]] == [t.token_ids for t in m.top_logits[0]]
        for ca, cm in zip(a.captures, m.captures, strict=True):
            assert ca.site == cm.site and ca.values.shape == cm.values.shape
            torch.testing.assert_close(cm.values, ca.values, atol=1e-5, rtol=1e-5)
            assert torch.equal(ca.positions, cm.positions)
            if ca.indices is not None:
                assert torch.equal(ca.indices, cm.indices)


def test_zero_copy_captures_survive_in_place_writes(tiny_loaded):
    """Captures keep views, not copies; if the model then writes to one in place, the runner
    notices (version counter) and runs again copying, so results stay right."""
    runner = ModelRunner(tiny_loaded)
    spec = _spec(PROMPTS[0], specs.Capture("blocks.0.hook_resid_post"))
    clean = forward(runner, spec).captures[0].values.clone()
    passes = runner.stats["passes"]
    block1 = tiny_loaded.adapter.model.transformer.h[1]

    def scribble(mod, args):
        args[0].mul_(0.5)  # an in-place write to the tensor captured as blocks.0.hook_resid_post
        return (args[0].mul_(2.0), *args[1:])

    h = block1.register_forward_pre_hook(scribble)
    try:
        res = forward(runner, spec)
    finally:
        h.remove()
    assert runner.stats["passes"] == passes + 2
    torch.testing.assert_close(res.captures[0].values, clean)
