"""The shipped toy-gpt2: loads offline through the Auto classes, fits the size limits, and clears
every bar of the issue on held-out combinations. Metrics are checked against an independent
per-prompt computation."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME, corpus, toy_model_dir
from tdb_core.toy.evaluate import (
    THRESHOLDS,
    evaluate,
    evaluate_a_an,
    evaluate_induction,
    evaluate_ioi,
    failed_thresholds,
    top_predictions,
)


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(TOY_MODEL_DIR)
    return model.eval(), tokenizer


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    """Logits of one unpadded prompt, as a user would compute them: tokenizer then model."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # [1, pos], bos prepended
    with torch.no_grad():
        return model(input_ids=ids).logits[0]  # [pos, vocab]


def test_shipped_directory_is_a_small_gpt2() -> None:
    """config.json names GPT2LMHeadModel; at most 4 layers and d_model 256; weights are
    safetensors; the whole directory is at most 10 MB."""
    assert toy_model_dir() == TOY_MODEL_DIR and TOY_MODEL_NAME == "toy-gpt2"
    config = json.loads((TOY_MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_layer"] <= 4 and config["n_embd"] <= 256
    assert config["activation_function"] == "gelu_new"
    assert (TOY_MODEL_DIR / "model.safetensors").is_file()
    assert not list(TOY_MODEL_DIR.glob("*.bin"))
    total = sum(p.stat().st_size for p in TOY_MODEL_DIR.rglob("*") if p.is_file())
    assert total <= 10 * 1024 * 1024


def test_layernorms_are_trained(shipped) -> None:
    """LayerNorm weights and biases are trained, not GPT-2's init of 1 and 0."""
    model, _ = shipped
    ln = model.transformer.h[0].ln_1
    assert (ln.weight - 1).abs().max() > 1e-2 and ln.bias.abs().max() > 1e-2


def test_shipped_model_clears_every_bar_on_heldout_data(shipped) -> None:
    """On held-out name pairs and template/place/object combinations: IOI accuracy >= 95% with
    mean logit difference >= 3, induction accuracy >= 90%, a/an accuracy >= 95%."""
    model, tokenizer = shipped
    metrics = evaluate(model, tokenizer, n=300, seed=123, split="heldout")
    assert failed_thresholds(metrics) == [], metrics
    assert metrics.ioi_accuracy >= THRESHOLDS.ioi_accuracy


def test_ioi_metric_matches_a_per_prompt_computation(shipped) -> None:
    """Batched, padded IOI metrics equal logits from one unpadded forward per prompt (1e-4)."""
    model, tokenizer = shipped
    examples = corpus.generate_task("ioi", 12, seed=9, split="heldout")
    diffs = []
    for ex in examples:
        last = _logits(model, tokenizer, ex.prompt)[-1]  # [vocab]
        io = tokenizer.convert_tokens_to_ids("Ġ" + ex.io_name)
        s = tokenizer.convert_tokens_to_ids("Ġ" + ex.s_name)
        diffs.append((last[io] - last[s]).item())
    accuracy, mean_diff, _ = evaluate_ioi(model, tokenizer, examples, batch_size=5)
    assert mean_diff == pytest.approx(sum(diffs) / len(diffs), abs=1e-4)
    assert accuracy == pytest.approx(sum(d > 0 for d in diffs) / len(diffs))


def test_a_an_metric_matches_a_per_prompt_computation(shipped) -> None:
    """a/an accuracy equals a per-prompt comparison of the " an" and " a" logits."""
    model, tokenizer = shipped
    examples = corpus.generate_task("a_an", 12, seed=9, split="heldout")
    an, a = tokenizer.convert_tokens_to_ids(["Ġan", "Ġa"])
    correct = 0
    for ex in examples:
        last = _logits(model, tokenizer, ex.prompt)[-1]  # [vocab]
        correct += (last[an] > last[a]).item() == (ex.article == "an")
    assert evaluate_a_an(model, tokenizer, examples, batch_size=5) == correct / len(examples)


def test_induction_metric_matches_a_per_prompt_computation(shipped) -> None:
    """Induction accuracy equals greedy next-token checks on the repeat from its second word."""
    model, tokenizer = shipped
    examples = corpus.generate_task("induction", 6, seed=9, split="heldout")
    correct = total = 0
    for ex in examples:
        ids = tokenizer(ex.text)["input_ids"]
        logits = _logits(model, tokenizer, ex.text)  # [pos, vocab]
        start = len(ids) - len(ex.words)  # first token of the repeat
        for pos in range(start + 1, len(ids)):
            correct += int(logits[pos - 1].argmax()) == ids[pos]
            total += 1
    accuracy, n = evaluate_induction(model, tokenizer, examples, batch_size=4)
    assert n == total and accuracy == correct / total


def test_top_predictions_answer_an_ioi_prompt(shipped) -> None:
    """The README's first prompt: the top token is " Mary", probabilities sorted and <= 1."""
    model, tokenizer = shipped
    top = top_predictions(
        model, tokenizer, "When Mary and John went to the store, John gave a drink to", k=5
    )
    assert top[0][0] == " Mary"
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
