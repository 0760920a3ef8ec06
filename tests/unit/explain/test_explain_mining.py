"""Mining: records, top-k, random sample and statistics agree with a brute-force pass; bad input is clear."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from tdb_core.datasets import PlainTextSplit
from tdb_core.errors import (
    CancelledError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tdb_core.explain.mining import (
    MiningConfig,
    NodeRef,
    TextTokenizer,
    as_text_tokenizer,
    mine_head_records,
    mine_records,
    tokenize_windows,
)
from tdb_core.explain.records import RecordKind, n_token_pairs

if TYPE_CHECKING:
    from tests.unit.explain.conftest import TinyLM, WordData

Fn = Callable[[torch.Tensor], torch.Tensor]


def make_random_causal_fn(n_words: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A causal function of (previous, current) token: ids [B, T] -> [B, T, 4] (id n_words = BOS)."""
    table = torch.randn(n_words + 1, 4, generator=torch.Generator().manual_seed(5))  # [V + BOS, N]

    def fn(ids: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.full_like(ids[:, :1], n_words), ids[:, :-1]], dim=1)  # [B, T]
        return table[ids] + 0.5 * table[prev]  # [B, T, 4]

    return fn


@pytest.fixture(scope="module")
def random_causal_fn(word_data: WordData) -> Fn:
    """The random causal function over the synthetic vocabulary."""
    return make_random_causal_fn(len(word_data.words))


def ids_of(word_data: WordData, tokens: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([[word_data.word_id[t.strip()] for t in tokens]])  # [1, T]


REFS = [NodeRef(key=f"n{j}", layer_index=2, index=j) for j in range(4)]
CONFIG = MiningConfig(window_len=10, batch_size=16, top_k=6, n_random=5, seed=3)


def test_windows_cover_every_document_in_order(word_data: WordData) -> None:
    """Each document's windows concatenate back to its tokens; windows are at most window_len long."""
    texts = word_data.texts[:20]
    windows = tokenize_windows(texts, word_data.tokenizer, CONFIG)
    rebuilt: list[int] = [i for w in windows for i in w]
    assert rebuilt == [i for t in texts for i in word_data.tokenizer.encode(t)]
    assert max(len(w) for w in windows) == CONFIG.window_len
    limited = tokenize_windows(
        texts, word_data.tokenizer, MiningConfig(window_len=10, max_windows=7)
    )
    assert limited == windows[:7]


def test_records_and_statistics_match_brute_force(
    word_data: WordData, random_causal_fn: Fn
) -> None:
    """Top-k windows by max, each record's activations, the random sample, density, max and moments."""
    texts = word_data.texts[:60]
    nodes = mine_records(texts, word_data.tokenizer, random_causal_fn, REFS, CONFIG, progress=False)
    windows = tokenize_windows(texts, word_data.tokenizer, CONFIG)
    per_window = [random_causal_fn(torch.tensor([w]))[0] for w in windows]  # each [T_w, 4]
    everything = torch.cat(per_window).double().numpy()  # [total tokens, 4]
    for j, node in enumerate(nodes):
        assert node.node_key == f"n{j}" and node.kind is RecordKind.TOKEN
        assert node.record.neuron_id.layer_index == 2 and node.record.neuron_id.neuron_index == j
        maxima = sorted((float(a[:, j].max()) for a in per_window), reverse=True)
        tops = node.record.most_positive_activation_records
        assert [max(r.activations) for r in tops] == pytest.approx(maxima[: CONFIG.top_k], abs=1e-6)
        for record in tops + node.record.random_sample:
            recomputed = random_causal_fn(ids_of(word_data, record.tokens))[0, :, j]
            assert list(record.activations) == pytest.approx(recomputed.tolist(), abs=1e-6)
        assert len(node.record.random_sample) == CONFIG.n_random
        column = everything[:, j]
        mean, var = column.mean(), column.var()
        assert node.n_positions == column.size
        assert node.density == pytest.approx(float((column > 0).mean()), abs=1e-12)
        assert node.max_activation == pytest.approx(float(column.max()), abs=1e-6)
        assert node.record.mean == pytest.approx(mean, abs=1e-6)  # fp32 activations
        assert node.record.variance == pytest.approx(var, rel=1e-5)
        assert node.record.skewness == pytest.approx(
            ((column - mean) ** 3).mean() / var**1.5, rel=1e-5, abs=1e-6
        )
        assert node.record.kurtosis == pytest.approx(
            ((column - mean) ** 4).mean() / var**2 - 3, rel=1e-5, abs=1e-6
        )


def test_batch_size_does_not_change_the_records(word_data: WordData, random_causal_fn: Fn) -> None:
    """Right padding and batching are invisible: batch 1 and batch 64 give the same records."""
    texts = word_data.texts[:40]
    one = mine_records(
        texts,
        word_data.tokenizer,
        random_causal_fn,
        REFS,
        MiningConfig(window_len=10, batch_size=1, top_k=6, n_random=5),
        progress=False,
    )
    many = mine_records(
        texts,
        word_data.tokenizer,
        random_causal_fn,
        REFS,
        MiningConfig(window_len=10, batch_size=64, top_k=6, n_random=5),
        progress=False,
    )
    for a, b in zip(one, many):
        assert (
            a.record.most_positive_activation_records == b.record.most_positive_activation_records
        )
        assert a.record.random_sample == b.record.random_sample
        assert a.density == b.density and a.record.mean == pytest.approx(b.record.mean, abs=1e-6)


def test_moments_survive_a_large_offset(word_data: WordData, random_causal_fn: Fn) -> None:
    """Activations around 1000 with unit spread: variance still matches (no E[x^2] - E[x]^2 cancellation)."""
    texts = word_data.texts[:30]
    (node,) = mine_records(
        texts,
        word_data.tokenizer,
        lambda ids: 1000.0 + random_causal_fn(ids)[..., :1],
        REFS[:1],
        CONFIG,
        progress=False,
    )
    windows = tokenize_windows(texts, word_data.tokenizer, CONFIG)
    column = torch.cat(
        [1000.0 + random_causal_fn(torch.tensor([w]))[0, :, 0] for w in windows]
    ).double()
    assert node.record.mean == pytest.approx(float(column.mean()), rel=1e-9)
    assert node.record.variance == pytest.approx(float(column.var(unbiased=False)), rel=1e-5)


def test_bos_is_fed_to_the_model_but_left_out_of_records(
    word_data: WordData, random_causal_fn: Fn
) -> None:
    """With bos_id, every window starts with BOS in the model input; records and stats exclude it."""
    bos = len(word_data.words)
    seen_first_columns: list[torch.Tensor] = []

    def fn(ids: torch.Tensor) -> torch.Tensor:
        seen_first_columns.append(ids[:, 0].clone())
        return torch.where(ids == bos, 100.0, random_causal_fn(ids)[..., 0].clamp(max=50.0))[
            ..., None
        ]  # [B, T, 1]

    texts = word_data.texts[:10]
    config = MiningConfig(window_len=8, top_k=4, n_random=3, bos_id=bos)
    (node,) = mine_records(
        texts, word_data.tokenizer, fn, [NodeRef("n", 0, 0)], config, progress=False
    )
    assert all(bool((c == bos).all()) for c in seen_first_columns)
    assert node.max_activation < 100.0
    for record in node.record.most_positive_activation_records:
        assert all(t.strip() in word_data.word_id for t in record.tokens)  # no BOS token string
        assert len(record.tokens) <= 8
    total_tokens = sum(len(word_data.tokenizer.encode(t)) for t in texts)
    assert node.n_positions == total_tokens


def test_head_records_flatten_the_lower_triangle(word_data: WordData) -> None:
    """Head records hold T(T+1)/2 values equal to the pair function at (q, k<=q), row by row."""
    texts = word_data.texts[:30]
    refs = [NodeRef("h0", 1, 0), NodeRef("h1", 1, 1)]
    nodes = mine_head_records(
        texts, word_data.tokenizer, word_data.planted_pairs, refs, CONFIG, progress=False
    )
    for j, node in enumerate(nodes):
        assert node.kind is RecordKind.TOKEN_PAIR
        for record in node.record.most_positive_activation_records + node.record.random_sample:
            t = len(record.tokens)
            full = word_data.planted_pairs(ids_of(word_data, record.tokens))[0, j]  # [T, T]
            expected = [float(full[q, k]) for q in range(t) for k in range(q + 1)]
            assert len(record.activations) == n_token_pairs(t)
            assert list(record.activations) == pytest.approx(expected)
    assert nodes[0].max_activation == 1.0


def test_dataset_files_jsonl_lines_and_paragraphs(tmp_path: Path, word_data: WordData) -> None:
    """Mining reads JSONL "text" fields, and plain text by paragraph (blank lines) or by line."""
    tok, config = word_data.tokenizer, MiningConfig(window_len=3)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        json.dumps({"text": "cat sat"}) + "\n\n" + json.dumps({"text": "dog", "meta": 1}) + "\n"
    )
    assert tokenize_windows(jsonl, tok, config) == [tok.encode("cat sat"), tok.encode("dog")]
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("cat sat\non mat\n\n\ndog ran\n")
    assert tokenize_windows(paragraphs, tok, config) == [
        tok.encode("cat sat on"),
        tok.encode("mat"),
        tok.encode("dog ran"),
    ]
    by_line = MiningConfig(window_len=3, plain_text_split=PlainTextSplit.LINE)
    assert tokenize_windows(paragraphs, tok, by_line) == [
        tok.encode(t) for t in ("cat sat", "on mat", "dog ran")
    ]


def test_bad_datasets_give_clear_errors(
    tmp_path: Path, word_data: WordData, random_causal_fn: Fn
) -> None:
    """Missing file -> NotFound; bad JSONL line -> InvalidArgument with its line; empty -> InvalidArgument."""
    tok = word_data.tokenizer
    with pytest.raises(NotFoundError, match="does not exist"):
        mine_records(
            tmp_path / "missing.jsonl", tok, random_causal_fn, REFS, CONFIG, progress=False
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "cat"}\n{"body": "dog"}\n')
    with pytest.raises(InvalidArgumentError, match=r"bad.jsonl:2 .*\"text\""):
        mine_records(bad, tok, random_causal_fn, REFS, CONFIG, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InvalidArgumentError, match="no tokens"):
        mine_records(empty, tok, random_causal_fn, REFS, CONFIG, progress=False)
    with pytest.raises(InvalidArgumentError, match="no tokens"):
        mine_records([], tok, random_causal_fn, REFS, CONFIG, progress=False)


def test_bad_activation_functions_and_nodes_give_clear_errors(
    word_data: WordData, random_causal_fn: Fn
) -> None:
    """Wrong output shape, NaN outputs, no nodes and duplicate keys are reported precisely."""
    texts = word_data.texts[:5]
    with pytest.raises(InvalidArgumentError, match=r"expected \[batch, tokens, nodes\]"):
        mine_records(
            texts,
            word_data.tokenizer,
            lambda ids: random_causal_fn(ids)[..., :2],
            REFS,
            CONFIG,
            progress=False,
        )
    with pytest.raises(FailedPreconditionError, match="NaN"):
        mine_records(
            texts,
            word_data.tokenizer,
            lambda ids: random_causal_fn(ids) * float("nan"),
            REFS,
            CONFIG,
            progress=False,
        )
    with pytest.raises(InvalidArgumentError, match="no nodes"):
        mine_records(texts, word_data.tokenizer, random_causal_fn, [], CONFIG, progress=False)
    with pytest.raises(InvalidArgumentError, match="repeated"):
        mine_records(
            texts, word_data.tokenizer, random_causal_fn, [REFS[0], REFS[0]], CONFIG, progress=False
        )
    with pytest.raises(InvalidArgumentError, match="window_len"):
        mine_records(
            texts,
            word_data.tokenizer,
            random_causal_fn,
            REFS,
            MiningConfig(window_len=0),
            progress=False,
        )
    with pytest.raises(InvalidArgumentError, match=r"\[batch, heads, query, key\]"):
        mine_head_records(
            texts,
            word_data.tokenizer,
            lambda ids: word_data.planted_pairs(ids)[:, :1],
            REFS[:2],
            CONFIG,
            progress=False,
        )


def test_progress_bar_goes_to_stderr_and_can_be_disabled(
    word_data: WordData, capsys: pytest.CaptureFixture[str], random_causal_fn: Fn
) -> None:
    """progress=True draws a tqdm bar on stderr; progress=False prints nothing."""
    mine_records(
        word_data.texts[:5], word_data.tokenizer, random_causal_fn, REFS, CONFIG, progress=True
    )
    assert "mining records" in capsys.readouterr().err
    mine_records(
        word_data.texts[:5], word_data.tokenizer, random_causal_fn, REFS, CONFIG, progress=False
    )
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_hugging_face_tokenizers_are_accepted(tiny_lm: TinyLM) -> None:
    """An HF tokenizer is wrapped (no special tokens added); token strings keep their leading space."""
    tok = as_text_tokenizer(tiny_lm.tokenizer)
    ids = tok.encode(" cat sat")
    assert "".join(tok.token_str(i) for i in ids) == " cat sat"
    with pytest.raises(InvalidArgumentError, match="cannot tokenize"):
        as_text_tokenizer(object())
    own = TextTokenizer(encode=lambda s: [1], token_str=str)
    assert as_text_tokenizer(own) is own


def test_on_batch_reports_progress_and_can_cancel(
    word_data: WordData, random_causal_fn: Fn
) -> None:
    """on_batch gets (windows done, total) after each batch; raising from it stops mining."""
    calls: list[tuple[int, int]] = []
    texts = word_data.texts[:12]
    config = MiningConfig(window_len=10, batch_size=4, top_k=2, n_random=2)
    total = len(tokenize_windows(texts, word_data.tokenizer, config))
    mine_records(
        texts,
        word_data.tokenizer,
        random_causal_fn,
        REFS,
        config,
        progress=False,
        on_batch=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(min(d, total), total) for d in range(4, total + 4, 4)]

    def cancel(done: int, total: int) -> None:
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        mine_records(
            texts,
            word_data.tokenizer,
            random_causal_fn,
            REFS,
            config,
            progress=False,
            on_batch=cancel,
        )
