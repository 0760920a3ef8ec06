"""Train the toy GPT-2 from scratch on CPU, reproducibly.

The pipeline: train the tokenizer on a fixed sample of the training split, build a
``GPT2LMHeadModel`` from a config, then stream training documents (deterministic for a seed),
pack whole documents into ``n_positions``-token windows, and optimise with AdamW (linear warmup,
cosine decay). Every window starts with ``<|endoftext|>`` followed by the beginning of a document,
and documents are separated by ``<|endoftext|>``, so position 0 and every document start look the
way they do when a user's prompt is tokenized. Padding at a window's end is excluded from the loss.

Same seed, same thread count, same machine: the same weights. The output directory is an ordinary
``save_pretrained`` directory (config, safetensors, tokenizer) plus ``training_info.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tdb_core.errors import InvalidArgumentError
from tdb_core.toy import corpus
from tdb_core.toy.config import TrainConfig
from tdb_core.toy.evaluate import ToyMetrics, evaluate
from tdb_core.toy.tokenizer import train_tokenizer


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out_dir: str
    steps_done: int
    stopped_early: bool
    train_seconds: float  # the optimisation loop, including periodic evaluation
    total_seconds: float  # tokenizer, data, loop, final evaluation and saving
    steps_per_second: float
    final_loss: float  # mean training loss over the last 50 steps
    n_params: int
    vocab_size: int
    metrics: ToyMetrics


def _validate(config: TrainConfig) -> None:
    positive = {
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_positions": config.n_positions,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "long_batch_size": config.long_batch_size,
        "threads": config.threads,
        "final_eval_n": config.final_eval_n,
        "tokenizer_docs": config.tokenizer_docs,
    }
    for name, value in positive.items():
        if value < 1:
            raise InvalidArgumentError(f"{name} must be >= 1, got {value}")
    if config.n_embd % config.n_head != 0:
        raise InvalidArgumentError(
            f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})"
        )
    if config.n_positions < 64:
        raise InvalidArgumentError(
            f"n_positions must be >= 64 so every toy document fits, got {config.n_positions}"
        )
    if not config.lr > 0 or not 0 <= config.min_lr_ratio <= 1:
        raise InvalidArgumentError(
            f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {config.lr} and {config.min_lr_ratio}"
        )
    if not 0 <= config.offset_fraction <= 1:
        raise InvalidArgumentError(
            f"offset_fraction must be in [0, 1], got {config.offset_fraction}"
        )
    if not 0 <= config.long_context_fraction <= 1:
        raise InvalidArgumentError(
            f"long_context_fraction must be in [0, 1], got {config.long_context_fraction}"
        )
    if config.warmup_steps < 0 or config.eval_every < 0 or config.eval_n < 1:
        raise InvalidArgumentError("warmup_steps and eval_every must be >= 0 and eval_n >= 1")
    if config.max_minutes is not None and config.max_minutes <= 0:
        raise InvalidArgumentError(f"max_minutes must be > 0, got {config.max_minutes}")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine down to the floor."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + 0.5 * (config.lr - floor) * (1.0 + math.cos(math.pi * progress))


def build_model(config: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 sized by ``config`` for ``tokenizer`` (seed set by caller)."""
    eos = tokenizer.eos_token_id
    model_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.n_positions,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",
        # No dropout: the data is endless and never repeats a window, so there is nothing to
        # regularise against, and dropout would only slow a CPU-budgeted run down.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )
    model = GPT2LMHeadModel(model_config)
    if config.position_init == "sinusoidal":
        with torch.no_grad():
            table = sinusoidal_positions(config.n_positions, config.n_embd)  # [pos, d_model]
            model.transformer.wpe.weight.copy_(
                table * (model_config.initializer_range / table.std())
            )
    # transformers infers the loss from the class name, which "GPT2LMHeadModel" does not match;
    # name it so the standard shifted cross-entropy is used without a warning on every step.
    model.loss_type = "ForCausalLM"
    return model


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """The sinusoidal position table of "Attention Is All You Need": [n_positions, d_model].

    Used only to *initialise* GPT-2's learned position embeddings. Nearby positions start with
    similar vectors and a fixed offset is a fixed rotation, so heads that attend to the previous
    token (which induction and IOI circuits are built on) are easy to learn early; from random
    vectors they take several times longer to appear.
    """
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # [pos, 1]
    rate = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model)
    )  # [d_model / 2]
    table = torch.zeros(n_positions, d_model)  # [pos, d_model]
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: d_model // 2])
    return table


def pack_windows(
    documents: Iterator[list[int]], n_positions: int, pad_id: int
) -> Iterator[tuple[list[int], int]]:
    """Greedily pack whole documents into windows: yields (ids padded to n_positions, n_real).

    Each document's ids must start with its separator token; a document longer than a window is
    cut to fit (toy documents never are). An unfinished last window is dropped: in training the
    stream of documents never ends.
    """
    window: list[int] = []
    for full in documents:
        doc = full[:n_positions]
        if len(window) + len(doc) > n_positions:
            yield window + [pad_id] * (n_positions - len(window)), len(window)
            window = []
        window.extend(doc)


def _documents(
    tokenizer: PreTrainedTokenizerFast, config: TrainConfig, chunk: int = 2048
) -> Iterator[list[int]]:
    """Token ids of training documents (each starting with <|endoftext|>), endlessly."""
    examples = corpus.stream(config.seed, "train", config.mix)
    while True:
        texts = [next(examples).text for _ in range(chunk)]
        yield from tokenizer(texts)["input_ids"]


@dataclass(frozen=True)
class Batch:
    """One optimisation step's data, each tensor [batch, pos]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # 1 on document tokens, 0 on padding
    labels: torch.Tensor  # input_ids, with -100 on padding (no loss there)
    position_ids: torch.Tensor  # arange(pos) plus each row's offset, capped at n_positions - 1


def _pad(
    rows: list[tuple[list[int], int, int]], width: int, pad_id: int, n_positions: int
) -> Batch:
    """Right-pad (ids, n_real, offset) rows to ``width``; mask padding out of attention and loss."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [batch, pos]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [batch, pos]
    offsets = torch.tensor([offset for _, _, offset in rows], dtype=torch.long)  # [batch]
    for row, (tokens, n_real, _) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :n_real] = 1
    labels = ids.masked_fill(mask == 0, -100)  # [batch, pos]
    positions = torch.arange(width)[None, :] + offsets[:, None]  # [batch, pos]
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        position_ids=positions.clamp(max=n_positions - 1),  # only padding is ever capped
    )


def document_batches(
    documents: Iterator[list[int]], config: TrainConfig, pad_id: int, rng: random.Random
) -> Iterator[Batch]:
    """Endless batches of ``batch_size`` single documents, padded to the longest one.

    A share ``offset_fraction`` of the rows is placed at a random offset in the context (through
    the position ids, so no extra compute): position 0 stays the common case, as it is for a
    prompt, while later positions of the context get some training too.
    """
    while True:
        rows = []
        for _ in range(config.batch_size):
            doc = next(documents)[: config.n_positions]
            room = config.n_positions - len(doc)
            shift = rng.random() < config.offset_fraction
            offset = rng.randint(1, room) if shift and room > 0 else 0
            rows.append((doc, len(doc), offset))
        yield _pad(rows, max(n for _, n, _ in rows), pad_id, config.n_positions)


def window_batches(
    documents: Iterator[list[int]], config: TrainConfig, pad_id: int
) -> Iterator[Batch]:
    """Endless batches of ``long_batch_size`` packed windows of ``n_positions`` tokens."""
    windows = pack_windows(documents, config.n_positions, pad_id)
    while True:
        rows = [(*next(windows), 0) for _ in range(config.long_batch_size)]
        yield _pad(rows, config.n_positions, pad_id, config.n_positions)


def batches(tokenizer: PreTrainedTokenizerFast, config: TrainConfig) -> Iterator[Batch]:
    """The whole run's data, deterministic for ``config.seed``.

    The first ``1 - long_context_fraction`` of the steps see one document per row: short contexts
    make the attention circuits (induction, IOI) form several times faster per token. The rest see
    packed ``n_positions``-token windows, so every position of the context is trained and the model
    learns to read past earlier documents.
    """
    pad_id = int(tokenizer.pad_token_id)
    documents = _documents(tokenizer, config)
    short_steps = config.steps - round(config.steps * config.long_context_fraction)
    short = document_batches(documents, config, pad_id, random.Random(f"offsets:{config.seed}"))
    for _ in range(short_steps):
        yield next(short)
    yield from window_batches(documents, config, pad_id)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True) -> TrainResult:
    """Train a toy model with ``config`` and save it to ``out_dir`` (created if missing)."""
    _validate(config)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.set_num_threads(config.threads)
    _seed_everything(config.seed)

    tokenizer_docs = corpus.generate(config.tokenizer_docs, config.seed, mix=config.mix)
    tokenizer_texts = corpus.iter_texts(tokenizer_docs)
    tokenizer = train_tokenizer(tokenizer_texts, config.vocab_size, config.n_positions)
    device = torch.device(config.device)
    model = build_model(config, tokenizer).to(device)  # type: ignore[arg-type]  # transformers' decorator on .to hides self
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = _optimizer(model, config)
    data = batches(tokenizer, config)
    log = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else (lambda line: None)
    log(
        f"toy model: {n_params:,} parameters, vocab {len(tokenizer)}, "
        f"{config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd}"
    )

    model.train()
    losses: list[float] = []
    stopped_early = False
    t_loop = time.perf_counter()
    bar = tqdm(total=config.steps, desc="toy train", file=sys.stderr, disable=not progress)
    step = 0
    try:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            batch = next(data)
            loss = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                labels=batch.labels.to(device),
                position_ids=batch.position_ids.to(device),
            ).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr_at(step, config):.1e}")
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                m = evaluate(model, tokenizer, n=config.eval_n, seed=1)
                log(
                    f"step {done}: loss {np.mean(losses[-50:]):.3f} | IOI acc "
                    f"{m.ioi_accuracy:.3f} diff {m.ioi_logit_diff:.2f} | induction "
                    f"{m.induction_accuracy:.3f} | a/an {m.a_an_accuracy:.3f}"
                )
            minutes = (time.perf_counter() - t_loop) / 60
            if config.max_minutes is not None and minutes >= config.max_minutes:
                stopped_early = done < config.steps
                if stopped_early:
                    log(f"stopping early after {done} steps: max_minutes={config.max_minutes}")
                break
    finally:
        bar.close()
    steps_done = step + 1
    train_seconds = time.perf_counter() - t_loop

    model.eval()
    metrics = evaluate(model, tokenizer, n=config.final_eval_n, seed=0)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    total_seconds = time.perf_counter() - t_start
    result = TrainResult(
        out_dir=str(out),
        steps_done=steps_done,
        stopped_early=stopped_early,
        train_seconds=train_seconds,
        total_seconds=total_seconds,
        steps_per_second=steps_done / train_seconds,
        final_loss=float(np.mean(losses[-50:])),
        n_params=n_params,
        vocab_size=len(tokenizer),
        metrics=metrics,
    )
    info = {
        "config": dataclasses.asdict(config),
        "result": {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"},
        "torch": torch.__version__,
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return result
