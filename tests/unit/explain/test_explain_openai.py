"""The OpenAI-compatible path against a local fake server speaking OpenAI's wire format.

The fake model (see conftest) explains a neuron as "the word X" for the highest-valued token, and
as a simulator puts most probability on "10" for tokens named in the explanation. Covered: prompt
logprobs via /v1/completions (echo), the no-logprobs fallback and error, a server without the
completions route, a tokenizer that merges the tab into the slot, garbled answers, head judging
via chat logprobs, and unreachable / failing servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tdb_core.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from tdb_core.explain.backends import LogprobsUnavailableError, OpenAICompatibleBackend
from tdb_core.explain.explainers import LLMExplainer, LLMHeadExplainer
from tdb_core.explain.heads import LLMPairJudge
from tdb_core.explain.pipeline import explain_head, explain_node, score_explanation
from tdb_core.explain.prompts import build_simulation_prompt, slotted_text
from tdb_core.explain.records import NodeRecords
from tdb_core.explain.simulators import AllAtOnceSimulator, MissingLogprobsPolicy, SimulationMethod

if TYPE_CHECKING:
    from tests.unit.explain.conftest import FakeOpenAI


def make_backend(server: FakeOpenAI) -> OpenAICompatibleBackend:
    """A backend on the fake server, failing fast (no retries)."""
    return OpenAICompatibleBackend(
        server.base_url, "fake-model", api_key="sk-test", timeout=10.0, max_retries=0
    )


def test_explain_and_score_through_completions_logprobs(
    fake_openai: FakeOpenAI, word_nodes: list[NodeRecords]
) -> None:
    """Chat explains, /v1/completions with echo=True and logprobs=15 simulates; the score is a real correlation."""
    backend = make_backend(fake_openai)
    result = explain_node(
        word_nodes[0], LLMExplainer(backend), AllAtOnceSimulator(backend), n_examples_per_split=5
    )
    assert result.best.explanation == "the word cat"
    assert (
        result.best.simulator == f"all_at_once:openai-compatible:fake-model@{fake_openai.base_url}"
    )
    assert result.best.fallback_reason is None
    assert (
        result.best.scores.correlation.score is not None
        and result.best.scores.correlation.score > 0.99
    )

    chat = [r for r in fake_openai.requests if r["path"] == "/v1/chat/completions"]
    completions = [r for r in fake_openai.requests if r["path"] == "/v1/completions"]
    assert len(chat) == 1 and len(completions) == 10
    assert chat[0]["authorization"] == "Bearer sk-test"
    assert chat[0]["body"]["model"] == "fake-model" and chat[0]["body"]["max_tokens"] == 60
    assert chat[0]["body"]["messages"][-1]["content"].endswith(
        "the main thing this neuron does is find"
    )
    body = completions[0]["body"]
    assert body["echo"] is True and body["logprobs"] == 15 and body["temperature"] == 0.0


def test_expected_values_from_top_logprobs(fake_openai: FakeOpenAI) -> None:
    """Non-value alternatives are dropped and 0..10 renormalized: cat -> (10*.8 + 1*.04)/.99."""
    backend = make_backend(fake_openai)
    result = AllAtOnceSimulator(backend).simulate("the word cat", [" cat", " dog"])
    assert result.method is SimulationMethod.ALL_AT_ONCE
    assert result.expected_activations == pytest.approx(
        ((10 * 0.8 + 0.04) / 0.99, (0.07 + 2 * 0.02) / 0.99), abs=1e-9
    )
    assert result.distribution_values == ((0, 1, 10), (0, 1, 2))
    sent = fake_openai.requests[-1]["body"]["prompt"]
    assert sent == slotted_text(build_simulation_prompt("the word cat", [" cat", " dog"]))


def test_no_logprobs_errors_or_falls_back_as_configured(
    fake_openai: FakeOpenAI, word_nodes: list[NodeRecords]
) -> None:
    """Without logprobs: ERROR raises LogprobsUnavailableError; FALLBACK uses the logprob-free simulator and says so."""
    fake_openai.mode = "no_logprobs"
    backend = make_backend(fake_openai)
    strict = AllAtOnceSimulator(backend, on_missing_logprobs=MissingLogprobsPolicy.ERROR)
    with pytest.raises(LogprobsUnavailableError, match="returned no prompt logprobs"):
        strict.simulate("the word cat", [" cat"])

    scored, _ = score_explanation(
        word_nodes[0], "the word cat", AllAtOnceSimulator(backend), n_examples_per_split=5
    )
    assert scored.fallback_reason is not None and "no prompt logprobs" in scored.fallback_reason
    assert all(s.method is SimulationMethod.LOGPROB_FREE for s in scored.simulations)
    assert scored.simulator == f"logprob_free:openai-compatible:fake-model@{fake_openai.base_url}"
    assert scored.scores.correlation.score is not None and scored.scores.correlation.score > 0.99
    paths = [r["path"] for r in fake_openai.requests]
    assert paths.count("/v1/completions") == 2  # one per simulator: the fallback is sticky


def test_server_without_completions_route_falls_back(fake_openai: FakeOpenAI) -> None:
    """A 404 on /v1/completions counts as "no logprobs": the fallback runs through chat."""
    fake_openai.mode = "chat_only"
    result = AllAtOnceSimulator(make_backend(fake_openai)).simulate(
        "the word cat", [" cat", " dog"]
    )
    assert result.method is SimulationMethod.LOGPROB_FREE and result.expected_activations == (
        10.0,
        0.0,
    )
    assert result.fallback_reason is not None and "404" in result.fallback_reason


def test_tokenizer_merging_every_slot_counts_as_no_logprobs(
    fake_openai: FakeOpenAI, word_nodes: list[NodeRecords]
) -> None:
    """A tokenizer that folds every tab into "unknown" leaves no slot readable: fallback, or error if strict."""
    fake_openai.mode = "merged"
    backend = make_backend(fake_openai)
    with pytest.raises(LogprobsUnavailableError, match="merges the tab"):
        AllAtOnceSimulator(backend, on_missing_logprobs=MissingLogprobsPolicy.ERROR).simulate(
            "cat", [" cat"]
        )
    scored, _ = score_explanation(
        word_nodes[0], "the word cat", AllAtOnceSimulator(backend), n_examples_per_split=5
    )
    assert scored.fallback_reason is not None and "merges the tab" in scored.fallback_reason
    assert scored.scores.correlation.score is not None and scored.scores.correlation.score > 0.99


def test_an_unreadable_slot_fails_its_sequence_not_the_score(
    fake_openai: FakeOpenAI, word_nodes: list[NodeRecords]
) -> None:
    """Slots after " dog" are merged: sequences containing " dog" fail (counted), the rest are scored."""
    fake_openai.mode = "merged_dog"
    scored, _ = score_explanation(
        word_nodes[0],
        "the word cat",
        AllAtOnceSimulator(make_backend(fake_openai)),
        n_examples_per_split=5,
    )
    with_dog = [s for s in scored.simulations if " dog" in s.tokens]
    assert 0 < len(with_dog) < 10 and scored.scores.n_failed == len(with_dog)
    assert all(
        s.expected_activations is None and "could not be read" in (s.error or "") for s in with_dog
    )
    assert scored.scores.correlation.n_sequences == 10 - len(with_dog)
    assert scored.scores.correlation.score is not None and scored.scores.correlation.score > 0.99


def test_garbled_answers_give_none_with_reason(
    fake_openai: FakeOpenAI, word_nodes: list[NodeRecords]
) -> None:
    """A chat model that does not follow the format: every logprob-free simulation fails, score None."""
    fake_openai.mode = "garbled"
    scored, _ = score_explanation(
        word_nodes[0],
        "the word cat",
        AllAtOnceSimulator(make_backend(fake_openai)),
        n_examples_per_split=5,
    )
    assert scored.scores.correlation.score is None
    assert "never reproduces the first token" in (scored.scores.correlation.reason or "")


def test_head_explained_and_judged_with_chat_logprobs(
    fake_openai: FakeOpenAI, head_nodes: list[NodeRecords]
) -> None:
    """Head judge reads top_logprobs of "0"/"1" from chat: P(1)/(P(0)+P(1)); ROC AUC over 5 + 5 pairs."""
    backend = make_backend(fake_openai)
    result = explain_head(
        head_nodes[0], LLMHeadExplainer(backend), LLMPairJudge(backend), n_examples_per_split=5
    )
    assert result.best_explanation == "attends to the previous token from every token"
    assert result.best.roc_auc == 1.0
    assert [p.prediction.probability for p in result.best.pairs] == pytest.approx(
        [0.9] * 5 + [0.2] * 5
    )
    judge_requests = [r["body"] for r in fake_openai.requests if r["body"].get("logprobs")]
    assert len(judge_requests) == 10 and all(
        b["top_logprobs"] == 15 and b["max_tokens"] == 1 for b in judge_requests
    )


def test_head_judge_without_logprobs_uses_hard_answers(
    fake_openai: FakeOpenAI, head_nodes: list[NodeRecords]
) -> None:
    """No logprobs: the judge falls back to the greedy 0/1 answer (recorded), or raises if so configured."""
    fake_openai.mode = "no_logprobs"
    backend = make_backend(fake_openai)
    result = explain_head(
        head_nodes[0], LLMHeadExplainer(backend), LLMPairJudge(backend), n_examples_per_split=5
    )
    assert result.best.roc_auc == 1.0
    assert all(
        p.prediction.method == "hard_answer" and p.prediction.fallback_reason
        for p in result.best.pairs
    )
    strict = LLMPairJudge(backend, on_missing_logprobs=MissingLogprobsPolicy.ERROR)
    with pytest.raises(LogprobsUnavailableError):
        strict.judge("attends to x", ["a", "b"], (1, 0))


def test_unreachable_endpoint_is_unavailable_with_the_url(
    closed_port: int, word_nodes: list[NodeRecords]
) -> None:
    """Nothing listening: UnavailableError naming the URL, from explaining and from simulating alike."""
    backend = OpenAICompatibleBackend(
        f"http://127.0.0.1:{closed_port}/v1", "m", timeout=5.0, max_retries=0
    )
    with pytest.raises(UnavailableError, match=rf"cannot reach .*127\.0\.0\.1:{closed_port}/v1"):
        explain_node(
            word_nodes[0],
            LLMExplainer(backend),
            AllAtOnceSimulator(backend),
            n_examples_per_split=5,
        )
    with pytest.raises(UnavailableError, match="cannot reach"):
        AllAtOnceSimulator(backend).simulate("cats", [" cat"])


def test_server_errors_map_to_domain_errors(fake_openai: FakeOpenAI) -> None:
    """5xx -> UnavailableError (retryable); rejected credentials -> FailedPreconditionError; bad URL -> InvalidArgument."""
    backend = make_backend(fake_openai)
    fake_openai.mode = "error_500"
    with pytest.raises(UnavailableError, match="500: boom"):
        backend.generate([], max_tokens=5)
    fake_openai.mode = "error_401"
    with pytest.raises(FailedPreconditionError, match="rejected the credentials"):
        backend.generate([], max_tokens=5)
    with pytest.raises(InvalidArgumentError, match="http"):
        OpenAICompatibleBackend("localhost:8000", "m")
