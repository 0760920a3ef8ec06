"""Behavioural metrics of a toy model on its tasks, by default on held-out combinations.

* IOI: at the end of the prompt ("... John gave a drink to"), accuracy is the fraction of prompts
  where logit(" IO") > logit(" S"); also reported: the mean logit difference and how often the IO
  name is the top-1 token over the whole vocabulary.
* Induction: for a sequence of L random words repeated once, each word of the repeat from the
  second on is predicted (argmax over the vocabulary) from everything before it; the first word of
  the repeat is not counted because nothing in the text says where the repeat starts.
* a/an: at the position before the article that re-mentions a noun named earlier, accuracy is the
  fraction where the logit of the right article (" a" or " an") beats the other.

Every prompt is encoded as ``<|endoftext|>`` followed by its tokens, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import corpus
from tdb_core.toy.tokenizer import single_token_id


@dataclass(frozen=True)
class ToyMetrics:
    """Task metrics of a toy model on one split."""

    split: str
    ioi_accuracy: float  # fraction with logit(IO) > logit(S)
    ioi_logit_diff: float  # mean of logit(IO) - logit(S)
    ioi_top1: float  # fraction where IO is the argmax over the vocabulary
    ioi_n: int  # prompts
    induction_accuracy: float  # top-1 accuracy on the repeated half (2nd word on)
    induction_n: int  # predicted tokens
    a_an_accuracy: float  # fraction with logit(right article) > logit(other article)
    a_an_n: int  # prompts


@dataclass(frozen=True)
class Thresholds:
    """The bars the shipped toy model must clear on held-out data (from the issue)."""

    ioi_accuracy: float = 0.95
    ioi_logit_diff: float = 3.0
    induction_accuracy: float = 0.90
    a_an_accuracy: float = 0.95


THRESHOLDS = Thresholds()


def failed_thresholds(metrics: ToyMetrics, thresholds: Thresholds = THRESHOLDS) -> list[str]:
    """One human-readable line per metric below its threshold (empty when all pass)."""
    checks = (
        ("IOI accuracy", metrics.ioi_accuracy, thresholds.ioi_accuracy),
        ("IOI mean logit diff", metrics.ioi_logit_diff, thresholds.ioi_logit_diff),
        ("induction accuracy", metrics.induction_accuracy, thresholds.induction_accuracy),
        ("a/an accuracy", metrics.a_an_accuracy, thresholds.a_an_accuracy),
    )
    return [f"{name} {value:.4f} < {bar}" for name, value, bar in checks if value < bar]


def format_metrics(metrics: ToyMetrics, thresholds: Thresholds = THRESHOLDS) -> str:
    """A small aligned table of the metrics with their thresholds and pass/fail."""
    rows = (
        ("IOI accuracy (IO > S)", metrics.ioi_accuracy, thresholds.ioi_accuracy, metrics.ioi_n),
        ("IOI mean logit diff", metrics.ioi_logit_diff, thresholds.ioi_logit_diff, metrics.ioi_n),
        ("IOI top-1 is IO", metrics.ioi_top1, None, metrics.ioi_n),
        ("induction accuracy", metrics.induction_accuracy, thresholds.induction_accuracy,
         metrics.induction_n),
        ("a/an accuracy", metrics.a_an_accuracy, thresholds.a_an_accuracy, metrics.a_an_n),
    )  # fmt: skip
    lines = [f"{'metric (' + metrics.split + ')':<28}{'value':>9}{'bar':>8}{'n':>8}  result"]
    for name, value, bar, n in rows:
        bar_text = "" if bar is None else f">={bar:g}"
        result = "" if bar is None else ("PASS" if value >= bar else "FAIL")
        lines.append(f"{name:<28}{value:>9.4f}{bar_text:>8}{n:>8}  {result}")
    return "\n".join(lines)


def _bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.bos_token_id is None:
        raise InvalidArgumentError("the tokenizer has no bos token; the toy tasks need one")
    return int(tokenizer.bos_token_id)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, each starting with the bos token."""
    bos = _bos_id(tokenizer)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [[bos, *ids] for ids in encoded]


@torch.no_grad()
def _forward_padded(
    model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int
) -> list[torch.Tensor]:
    """Logits of each sequence (its own length, float32), computed in right-padded batches."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(seq) for seq in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [batch, pos]
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, pos]
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits.float().cpu()  # [batch, pos, vocab]
        out.extend(logits[row, : len(seq)] for row, seq in enumerate(batch))
    return out


def _last_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int,
) -> torch.Tensor:
    sequences = encode_prompts(tokenizer, prompts)
    logits = _forward_padded(model, sequences, _bos_id(tokenizer), batch_size)
    return torch.stack([seq_logits[-1] for seq_logits in logits])  # [n, vocab]


def evaluate_ioi(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[corpus.IOIExample],
    batch_size: int = 64,
) -> tuple[float, float, float]:
    """(accuracy, mean logit difference, top-1 rate) of IO vs S at the end of each prompt."""
    logits = _last_logits(model, tokenizer, [ex.prompt for ex in examples], batch_size)
    io = torch.tensor([single_token_id(tokenizer, ex.io_name) for ex in examples])  # [n]
    s = torch.tensor([single_token_id(tokenizer, ex.s_name) for ex in examples])  # [n]
    rows = torch.arange(len(examples))
    diff = logits[rows, io] - logits[rows, s]  # [n]
    top1 = logits.argmax(dim=-1) == io  # [n]
    return (diff > 0).float().mean().item(), diff.mean().item(), top1.float().mean().item()


def evaluate_a_an(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[corpus.AAnExample],
    batch_size: int = 64,
) -> float:
    """Fraction of prompts where the right article's logit beats the other article's."""
    logits = _last_logits(model, tokenizer, [ex.prompt for ex in examples], batch_size)
    a_id = single_token_id(tokenizer, corpus.A)
    an_id = single_token_id(tokenizer, corpus.AN)
    an_minus_a = logits[:, an_id] - logits[:, a_id]  # [n]
    wants_an = torch.tensor([ex.article == corpus.AN for ex in examples])  # [n]
    correct = torch.where(wants_an, an_minus_a > 0, an_minus_a < 0)  # [n]
    return correct.float().mean().item()


def induction_sequence(
    tokenizer: PreTrainedTokenizerBase, example: corpus.InductionExample
) -> tuple[list[int], int]:
    """Token ids of an induction document and the index of the first token of the repeat."""
    prefix = tokenizer.encode(corpus.INDUCTION_PREFIX, add_special_tokens=False)
    words = [single_token_id(tokenizer, word) for word in example.words]
    ids = [_bos_id(tokenizer), *prefix, *words, *words]
    return ids, 1 + len(prefix) + len(words)


def evaluate_induction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[corpus.InductionExample],
    batch_size: int = 64,
) -> tuple[float, int]:
    """(top-1 accuracy, number of predictions) on the repeat, from its second word on."""
    encoded = [induction_sequence(tokenizer, ex) for ex in examples]
    logits = _forward_padded(model, [ids for ids, _ in encoded], _bos_id(tokenizer), batch_size)
    correct = 0
    total = 0
    for (ids, repeat_start), seq_logits in zip(encoded, logits, strict=True):
        targets = torch.tensor(ids[repeat_start + 1 :])  # [L-1]
        predicted = seq_logits[repeat_start:-1].argmax(dim=-1)  # [L-1]
        correct += int((predicted == targets).sum())
        total += len(targets)
    return correct / total, total


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    n: int = 500,
    seed: int = 0,
    split: corpus.Split = "heldout",
    batch_size: int = 64,
) -> ToyMetrics:
    """All task metrics on ``n`` examples per task drawn from ``split`` with ``seed``."""
    if n < 1:
        raise InvalidArgumentError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves PreTrainedModel.eval unannotated
    try:
        ioi = [
            ex for ex in corpus.generate_task("ioi", n, seed, split)
            if isinstance(ex, corpus.IOIExample)
        ]  # fmt: skip
        a_an = [
            ex for ex in corpus.generate_task("a_an", n, seed, split)
            if isinstance(ex, corpus.AAnExample)
        ]  # fmt: skip
        induction = [
            ex for ex in corpus.generate_task("induction", n, seed, split)
            if isinstance(ex, corpus.InductionExample)
        ]  # fmt: skip
        ioi_acc, ioi_diff, ioi_top1 = evaluate_ioi(model, tokenizer, ioi, batch_size)
        a_an_acc = evaluate_a_an(model, tokenizer, a_an, batch_size)
        ind_acc, ind_n = evaluate_induction(model, tokenizer, induction, batch_size)
    finally:
        model.train(was_training)
    return ToyMetrics(
        split=split,
        ioi_accuracy=ioi_acc,
        ioi_logit_diff=ioi_diff,
        ioi_top1=ioi_top1,
        ioi_n=n,
        induction_accuracy=ind_acc,
        induction_n=ind_n,
        a_an_accuracy=a_an_acc,
        a_an_n=n,
    )


# Prompts to try (the README lists them with the shipped model's answers): one per mechanism.
SHOWCASE: tuple[tuple[str, str], ...] = (
    ("IOI", "When Mary and John went to the store, John gave a drink to"),
    ("IOI", "After Alice and Bob arrived at the park, Bob handed the book to"),
    ("induction", "Random words: river cloud seven mirror castle river cloud seven mirror"),
    ("a/an", "Emma put the egg in the box. When I opened the box, I found"),
    ("a/an", "Tom put the kite in the box. When I opened the box, I found"),
)


@torch.no_grad()
def top_predictions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, k: int = 5
) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prompt`` with their probabilities."""
    if k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    was_training = model.training
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves PreTrainedModel.eval unannotated
    try:
        logits = _last_logits(model, tokenizer, [prompt], batch_size=1)[0]  # [vocab]
    finally:
        model.train(was_training)
    probs = torch.softmax(logits, dim=-1)  # [vocab]
    values, indices = probs.topk(min(k, probs.numel()))
    return [
        (str(tokenizer.decode([int(i)])), float(p)) for p, i in zip(values, indices, strict=True)
    ]
