"""The LLM path end to end on a tiny random-init local HF model.

Quality is irrelevant; what is asserted is real: the prompts sent, the parsing of completions, the
slot logprobs (checked against an independent forward pass per slot), the expected values, the
scores (checked against numpy), and the clear failure of unreadable logprob-free answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from tdb_core.errors import NotFoundError, ResourceExhaustedError
from tdb_core.explain.backends import HFLocalBackend, LLMBackend
from tdb_core.explain.explainers import LLMExplainer, LLMHeadExplainer
from tdb_core.explain.formatting import (
    UNKNOWN_ACTIVATION_STRING,
    format_activation_records,
    max_activation,
)
from tdb_core.explain.heads import LLMPairJudge
from tdb_core.explain.mining import (
    MiningConfig,
    NodeRef,
    as_text_tokenizer,
    mine_head_records,
    mine_records,
)
from tdb_core.explain.pipeline import (
    explain_head,
    explain_node,
    score_explanation,
    score_simulations,
)
from tdb_core.explain.prompts import (
    ChatMessage,
    SlottedPrompt,
    build_head_judge_prompt,
    build_simulation_prompt,
    render_text,
)
from tdb_core.explain.records import NodeRecords, split_records
from tdb_core.explain.simulators import (
    VALUE_TOKENS,
    AllAtOnceSimulator,
    LogprobFreeSimulator,
    SimulationMethod,
)

if TYPE_CHECKING:
    from tests.unit.explain.conftest import TinyLM, WordData


class RecordingBackend:
    """Delegates to a real backend and records every prompt it is sent."""

    def __init__(self, inner: LLMBackend) -> None:
        self.inner = inner
        self.generated: list[tuple[ChatMessage, ...]] = []
        self.slotted: list[SlottedPrompt] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def generate(self, messages: Sequence[ChatMessage], **kwargs: object) -> list[str]:
        self.generated.append(tuple(messages))
        return self.inner.generate(messages, **kwargs)  # type: ignore[arg-type]

    def slot_logprobs(
        self, prompt: SlottedPrompt, candidates: Sequence[str]
    ) -> list[dict[str, float] | None]:
        self.slotted.append(prompt)
        return self.inner.slot_logprobs(prompt, candidates)

    def next_token_logprobs(
        self, messages: Sequence[ChatMessage], candidates: Sequence[str]
    ) -> dict[str, float]:
        return self.inner.next_token_logprobs(messages, candidates)


@pytest.fixture(scope="module")
def hf_nodes(tiny_lm: TinyLM, word_data: WordData) -> list[NodeRecords]:
    """A planted " cat" detector mined with the HF tokenizer (short windows keep prompts small)."""
    cat_id = as_text_tokenizer(tiny_lm.tokenizer).encode(" cat")
    assert len(cat_id) == 1

    def fn(ids: torch.Tensor) -> torch.Tensor:
        return (ids == cat_id[0]).float()[..., None] * 2.0  # [B, T, 1]

    config = MiningConfig(window_len=8, top_k=8, n_random=6, seed=1)
    return mine_records(
        word_data.texts[:60],
        tiny_lm.tokenizer,
        fn,
        [NodeRef("hf:0:0", 0, 0)],
        config,
        progress=False,
    )


@pytest.fixture(scope="module")
def backend(tiny_lm: TinyLM) -> HFLocalBackend:
    """The tiny model behind the local backend."""
    return HFLocalBackend(tiny_lm.model, "cpu", tokenizer=tiny_lm.tokenizer, name="hf:tiny")


def test_values_zero_to_ten_are_single_tokens(tiny_lm: TinyLM) -> None:
    """Precondition of the logits test below: "0".."10" and "unknown" encode as one token each."""
    for value in (*VALUE_TOKENS, UNKNOWN_ACTIVATION_STRING):
        assert len(tiny_lm.tokenizer.encode(value, add_special_tokens=False)) == 1, value


def test_llm_explainer_sends_the_original_prompt_and_parses_the_answer(
    backend: HFLocalBackend, hf_nodes: list[NodeRecords]
) -> None:
    """The target message shows the train records discretized by their max; answers come back stripped."""
    recorder = RecordingBackend(backend)
    train = split_records(hf_nodes[0].record, 2).train
    explanations = LLMExplainer(recorder, num_samples=2, max_tokens=12, seed=3).explain(train)
    (messages,) = recorder.generated
    expected_records = format_activation_records(train, max_activation(train))
    assert messages[-1].content.startswith(f"\n\nNeuron 4\nActivations:{expected_records}")
    assert messages[-1].content.endswith(
        "\nExplanation of neuron 4 behavior: the main thing this neuron does is find"
    )
    assert 1 <= len(explanations) <= 2
    for e in explanations:
        assert e == e.strip() and e and "\n" not in e and not e.endswith(".")
    again = LLMExplainer(backend, num_samples=2, max_tokens=12, seed=3).explain(train)
    assert again == explanations  # seeded sampling is reproducible


def test_slot_logprobs_equal_an_independent_forward_pass_per_slot(
    backend: HFLocalBackend, tiny_lm: TinyLM
) -> None:
    """Each slot's distribution equals log_softmax of the model's last logits on the prompt cut at that slot."""
    tokens = [" cat", " sat", " on"]
    prompt = build_simulation_prompt("cats", tokens)
    slots = backend.slot_logprobs(prompt, VALUE_TOKENS)
    assert len(slots) == len(tokens)
    encode = lambda text: tiny_lm.tokenizer.encode(text, add_special_tokens=False)
    prefix: list[int] = []
    for j, slot in enumerate(slots):
        prefix += encode(prompt.segments[j])
        with torch.no_grad():
            logits = tiny_lm.model(input_ids=torch.tensor([prefix])).logits[0, -1]  # [vocab]
        reference = torch.log_softmax(logits.double(), dim=-1)
        assert slot is not None and set(slot) == set(VALUE_TOKENS)
        for value, logprob in slot.items():
            assert logprob == pytest.approx(float(reference[encode(value)[0]]), abs=1e-5)
        prefix += encode(UNKNOWN_ACTIVATION_STRING)


def test_all_at_once_expected_values_and_distributions(backend: HFLocalBackend) -> None:
    """EV = sum v * p(v) with p renormalized over 0..10; distributions sum to 1."""
    tokens = [" cat", " sat", " on", " the", " mat"]
    result = AllAtOnceSimulator(backend).simulate("cats", tokens)
    slots = backend.slot_logprobs(build_simulation_prompt("cats", tokens), VALUE_TOKENS)
    assert result.method is SimulationMethod.ALL_AT_ONCE and result.error is None
    assert result.expected_activations is not None and len(result.expected_activations) == len(
        tokens
    )
    for ev, values, probs, slot in zip(
        result.expected_activations,
        result.distribution_values or (),
        result.distribution_probabilities or (),
        slots,
    ):
        assert slot is not None
        weights = {int(v): math.exp(lp) for v, lp in slot.items()}
        total = sum(weights.values())
        assert ev == pytest.approx(sum(v * w / total for v, w in weights.items()), abs=1e-9)
        assert values == tuple(range(11)) and sum(probs) == pytest.approx(1.0)
        assert 0.0 <= ev <= 10.0


def test_explain_node_end_to_end_with_the_local_model(
    backend: HFLocalBackend, hf_nodes: list[NodeRecords]
) -> None:
    """Explain with the LLM, simulate all-at-once, score: the score equals numpy's pooled correlation."""
    recorder = RecordingBackend(backend)
    result = explain_node(
        hf_nodes[0],
        LLMExplainer(recorder, max_tokens=12),
        AllAtOnceSimulator(recorder),
        n_examples_per_split=2,
    )
    best = result.best
    assert (
        best.simulator == "all_at_once:hf:tiny"
        and result.explainer == "token_activation_pair:hf:tiny"
    )
    assert len(recorder.slotted) == 4  # 2 valid top + 2 valid random records
    splits = split_records(hf_nodes[0].record, 2)
    records = splits.valid_top + splits.valid_random
    true = np.concatenate([r.activations for r in records])
    predicted = np.concatenate([s.expected_activations for s in best.simulations])
    expected = np.corrcoef(true, predicted)[0, 1]
    assert best.scores.correlation.score == pytest.approx(expected, abs=1e-9)
    assert best.scores == score_simulations(records, best.simulations)


def test_unreadable_logprob_free_answers_fail_loudly(
    backend: HFLocalBackend, hf_nodes: list[NodeRecords]
) -> None:
    """A random model cannot re-emit the token lines: every simulation fails and the score is None with a reason."""
    scored, _ = score_explanation(
        hf_nodes[0], "cats", LogprobFreeSimulator(backend, max_tokens=8), n_examples_per_split=2
    )
    assert scored.scores.correlation.score is None
    assert scored.scores.n_failed == 4
    assert (scored.scores.correlation.reason or "").startswith(
        "all 4 simulations failed; first: the simulator's answer"
    )


def test_head_path_end_to_end_with_the_local_model(
    backend: HFLocalBackend, tiny_lm: TinyLM, word_data: WordData
) -> None:
    """Head explainer + pair judge on the local model: P("1")/(P("0")+P("1")) from the logits, ROC AUC scored."""

    def pair_fn(ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        prev = (torch.arange(t)[:, None] - torch.arange(t)[None, :] == 1).float()  # [T, T]
        return prev.expand(b, 1, t, t)  # [B, 1, T, T]

    (node,) = mine_head_records(
        word_data.texts[:40],
        tiny_lm.tokenizer,
        pair_fn,
        [NodeRef("hf:head", 0, 0)],
        MiningConfig(window_len=6, top_k=8, n_random=6),
        progress=False,
    )
    judge = LLMPairJudge(backend)
    result = explain_head(
        node, LLMHeadExplainer(backend, max_tokens=12), judge, n_examples_per_split=2, n_pairs=3
    )
    assert result.best_explanation and len(result.best.pairs) == 6
    assert result.best.roc_auc is not None and 0.0 <= result.best.roc_auc <= 1.0
    labels = [p.label for p in result.best.pairs]
    assert labels == [1, 1, 1, 0, 0, 0]
    first = result.best.pairs[0]
    splits = split_records(node.record, 2)
    tokens = (splits.valid_top + splits.valid_random)[first.pair.record_index].tokens
    messages = build_head_judge_prompt(
        result.best_explanation, tokens, (first.pair.query, first.pair.key)
    )
    ids = tiny_lm.tokenizer.encode(render_text(messages), add_special_tokens=False)
    with torch.no_grad():
        logprobs = torch.log_softmax(
            tiny_lm.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1
        )
    p0 = math.exp(float(logprobs[tiny_lm.tokenizer.encode("0", add_special_tokens=False)[0]]))
    p1 = math.exp(float(logprobs[tiny_lm.tokenizer.encode("1", add_special_tokens=False)[0]]))
    assert first.prediction.probability == pytest.approx(p1 / (p0 + p1), abs=1e-5)


def test_loading_from_a_directory_and_bad_paths(tiny_lm: TinyLM, tmp_path: Path) -> None:
    """A saved model directory loads by path; a missing one is NotFoundError; an overlong prompt is ResourceExhausted."""
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    loaded = HFLocalBackend(str(tmp_path))
    assert loaded.name == f"hf:{tmp_path}"
    prompt = build_simulation_prompt("cats", [" cat"])
    assert loaded.slot_logprobs(prompt, VALUE_TOKENS)[0] is not None
    with pytest.raises(NotFoundError, match="cannot load a causal LM"):
        HFLocalBackend(str(tmp_path / "missing"))
    with pytest.raises(ResourceExhaustedError, match="context is 2048"):
        loaded.slot_logprobs(build_simulation_prompt("cats", [" cat"] * 600), VALUE_TOKENS)
