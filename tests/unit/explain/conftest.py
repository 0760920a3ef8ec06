"""Fixtures for the explanation pipeline tests.

* A synthetic word-level dataset and tokenizer (one token per word, GPT-2-style leading space)
  with *planted* nodes whose activations are exact known functions of the tokens.
* A tiny random-init GPT-2 with a byte-level BPE tokenizer trained here on prompt-like text (no
  downloads), for the local-HF LLM path.
* A fake OpenAI-compatible HTTP server (``http.server`` in a thread) speaking OpenAI's wire format
  for ``/v1/chat/completions`` and ``/v1/completions`` (with echo + logprobs), with modes that
  drop logprobs, drop the completions route, merge the tab into the value token, or garble answers.
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from tdb_core.explain.mining import (
    MiningConfig,
    NodeRef,
    TextTokenizer,
    mine_head_records,
    mine_records,
)
from tdb_core.explain.records import NodeRecords

# ------------------------------------------------------------------------------------------------
# Synthetic word dataset with planted nodes

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "red",
    "blue",
    "big",
    "small",
    "and",
    "then",
    "house",
    "tree",
    "bird",
    "sky",
    "was",
    "is",
    "very",
    "quiet",
    "green",
    "old",
]
WORD_ID = {w: i for i, w in enumerate(WORDS)}


@dataclass(frozen=True)
class WordData:
    """The synthetic dataset, its tokenizer, and the planted activation functions."""

    texts: list[str]
    tokenizer: TextTokenizer
    words: tuple[str, ...]
    word_id: dict[str, int]
    planted: Callable[[torch.Tensor], torch.Tensor]
    planted_pairs: Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(scope="session")
def word_data() -> WordData:
    """300 documents of 12-40 random words (seeded); the tokenizer maps each word to one id."""
    rng = random.Random(1234)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 40))) for _ in range(300)]
    tokenizer = TextTokenizer(
        encode=lambda text: [WORD_ID[w] for w in text.split()], token_str=lambda i: f" {WORDS[i]}"
    )
    return WordData(
        texts=texts,
        tokenizer=tokenizer,
        words=tuple(WORDS),
        word_id=dict(WORD_ID),
        planted=planted_activations,
        planted_pairs=planted_pair_activations,
    )


def planted_activations(ids: torch.Tensor) -> torch.Tensor:
    """Planted nodes over word ids [B, T] -> [B, T, 3].

    node 0: 3.0 on " cat", -0.1 elsewhere (a token detector with GELU-like negative rest values)
    node 1: 4.0 on " sat" right after " cat", 1.0 on " sat" elsewhere, 0 else (context detector)
    node 2: always 0 (a dead node)
    """
    cat, sat = WORD_ID["cat"], WORD_ID["sat"]
    prev = torch.cat([torch.full_like(ids[:, :1], -1), ids[:, :-1]], dim=1)  # [B, T]
    node0 = torch.where(ids == cat, 3.0, -0.1)  # [B, T]
    node1 = torch.where(ids == sat, torch.where(prev == cat, 4.0, 1.0), 0.0)  # [B, T]
    node2 = torch.zeros_like(node0)  # [B, T]
    return torch.stack([node0, node1, node2], dim=-1)  # [B, T, 3]


def planted_pair_activations(ids: torch.Tensor) -> torch.Tensor:
    """Planted heads over word ids [B, T] -> [B, 2, T, T] (query, key).

    head 0: previous-token head, 1.0 on (q, q-1), 0.2 on (0, 0), 0 else
    head 1: attends from any later token to earlier " dog" tokens (1.0), 0 else
    """
    b, t = ids.shape
    q = torch.arange(t)[:, None]  # [T, 1]
    k = torch.arange(t)[None, :]  # [1, T]
    prev = ((q - k) == 1).float()  # [T, T]
    prev[0, 0] = 0.2
    head0 = prev.expand(b, t, t)  # [B, T, T]
    is_dog = (ids == WORD_ID["dog"]).float()  # [B, T]
    head1 = is_dog[:, None, :] * (k < q).float()[None]  # [B, T, T]
    return torch.stack([head0, head1], dim=1)  # [B, 2, T, T]


# ------------------------------------------------------------------------------------------------
# Tiny HF causal LM with a locally trained tokenizer


@dataclass(frozen=True)
class TinyLM:
    """A random-init 2-layer GPT-2 and its tokenizer."""

    model: Any
    tokenizer: Any


@pytest.fixture(scope="session")
def tiny_lm(word_data: WordData) -> TinyLM:
    """GPT-2 config (d 32, 2 layers, 2 heads, 2048 positions), BPE trained on prompt-like text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tdb_core.explain.prompts import (
        EXPLAINER_SYSTEM_MESSAGE,
        HEAD_JUDGE_SYSTEM_MESSAGE,
        LOGPROB_FREE_SYSTEM_MESSAGE,
        SIMULATOR_SYSTEM_MESSAGE,
    )

    corpus = [
        EXPLAINER_SYSTEM_MESSAGE,
        SIMULATOR_SYSTEM_MESSAGE,
        LOGPROB_FREE_SYSTEM_MESSAGE,
        HEAD_JUDGE_SYSTEM_MESSAGE,
    ]
    corpus += word_data.texts[:100]
    corpus += [
        "\n".join(f" {w}\t{v}" for v in range(11) for w in ("cat", "dog", "unknown"))
        for _ in range(5)
    ]
    corpus += [
        "Neuron 1\nActivations:\n<start>\n the\tunknown\n<end>\nExplanation of neuron 1 behavior:"
    ] * 5
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=2048,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # randomize LayerNorms and biases so indexing mistakes show
        for name, param in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.2)
    return TinyLM(model=model, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------
# Fake OpenAI-compatible server

_PIECES = re.compile(r"\t|\n|[^\t\n]+")
_MERGED_PIECES = re.compile(r"\tunknown|\t|\n|[^\t\n]+")


def _explained_words(text: str, prefix: str) -> set[str]:
    at = text.rfind(prefix)
    if at < 0:
        return set()
    line = text[at + len(prefix) :].split("\n", 1)[0]
    return set(re.findall(r"[a-z]+", line.lower())) - {"the", "word", "token", "a"}


@dataclass
class FakeOpenAI:
    """Handle on a running fake server: its base URL, recorded requests, and mode switch."""

    base_url: str
    port: int
    mode: str = "logprobs"
    requests: list[dict[str, Any]] = field(default_factory=list)


def _completions(server: FakeOpenAI, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from tdb_core.explain.prompts import EXPLANATION_PREFIX

    if server.mode == "chat_only":
        return 404, {
            "error": {"message": "This server has no /v1/completions route", "type": "not_found"}
        }
    prompt: str = body["prompt"]
    generated = "x"
    text = (prompt if body.get("echo") else "") + generated
    if server.mode in ("no_logprobs", "garbled") or body.get("logprobs") is None:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": "length"}
    else:
        words = _explained_words(prompt, f"{EXPLANATION_PREFIX} ")
        pieces = (
            (_MERGED_PIECES if server.mode == "merged" else _PIECES).findall(prompt)
            if body.get("echo")
            else []
        )
        if server.mode == "merged_dog":  # only the slot after " dog" is merged with its tab
            for i in range(len(pieces) - 2, 0, -1):
                if pieces[i] == "\t" and pieces[i + 1] == "unknown" and pieces[i - 1] == " dog":
                    pieces[i : i + 2] = ["\tunknown"]
        tokens: list[str] = []
        offsets: list[int] = []
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        position = 0
        for i, piece in enumerate(pieces):
            tokens.append(piece)
            offsets.append(position)
            position += len(piece)
            if i == 0:
                token_lps.append(None)
                tops.append(None)
            elif piece == "unknown" and pieces[i - 1] == "\t":
                line_token = pieces[i - 2].strip().lower() if i >= 2 else ""
                if line_token in words:
                    dist = {"10": 0.8, "0": 0.15, "1": 0.04, "unknown": 0.01}
                else:
                    dist = {"0": 0.9, "1": 0.07, "2": 0.02, "unknown": 0.01}
                token_lps.append(math.log(dist["unknown"]))
                tops.append({k: math.log(v) for k, v in dist.items()})
            else:
                token_lps.append(-0.5)
                tops.append({piece: -0.5, "\n": -2.0})
        tokens.append(generated)
        offsets.append(len(prompt))
        token_lps.append(-0.1)
        tops.append({generated: -0.1})
        logprobs = {
            "tokens": tokens,
            "token_logprobs": token_lps,
            "top_logprobs": tops,
            "text_offset": offsets,
        }
        choice = {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": "length"}
    return 200, {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": body["model"],
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chat_answer(
    server: FakeOpenAI, messages: list[dict[str, str]]
) -> tuple[str, dict[str, float] | None]:
    """The fake model's answer and, for judge prompts, its top logprobs over "0"/"1"."""
    from tdb_core.explain.prompts import (
        EXPLANATION_PREFIX,
        HEAD_EXPLAINER_SYSTEM_MESSAGE,
        HEAD_JUDGE_SYSTEM_MESSAGE,
        LOGPROB_FREE_SYSTEM_MESSAGE,
    )

    system, last = messages[0]["content"], messages[-1]["content"]
    if server.mode == "garbled":
        return "I am not sure what you mean.", None
    if system == LOGPROB_FREE_SYSTEM_MESSAGE:
        words = _explained_words(last, f"{EXPLANATION_PREFIX} ")
        block = last.split("Tokens without Activations:\n", 1)[1].split("\n\n", 1)[0]
        lines = [ln[: -len("\t༗")] for ln in block.split("\n") if ln]
        return "".join(f"{t}\t{10 if t.strip().lower() in words else 0}༗\n" for t in lines), None
    if system == HEAD_JUDGE_SYSTEM_MESSAGE:
        adjacent = re.search(r"\*\*[^*]*\*\*\[\[", last.split("Sequence:\n", 1)[1]) is not None
        p1 = 0.9 if adjacent else 0.2
        return ("1" if adjacent else "0"), {"1": math.log(p1), "0": math.log(1 - p1)}
    if system == HEAD_EXPLAINER_SYSTEM_MESSAGE:
        return " attends to the previous token from every token.", None
    # Neuron explanation: name the token with the highest value in the target's records.
    block = last.split("Activations:", 1)[1].split("\nExplanation of neuron", 1)[0]
    best = max(
        (ln.rsplit("\t", 1) for ln in block.split("\n") if "\t" in ln),
        key=lambda parts: int(parts[1]) if parts[1].isdigit() else -1,
    )
    return f" the word {best[0].strip()}.", None


def _chat(server: FakeOpenAI, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer, top = _chat_answer(server, body["messages"])
    logprobs = None
    if body.get("logprobs") and server.mode == "logprobs" and top is not None:
        entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]
        logprobs = {
            "content": [
                {
                    "token": answer,
                    "logprob": top[answer],
                    "bytes": list(answer.encode()),
                    "top_logprobs": entries,
                }
            ],
            "refusal": None,
        }
    return 200, {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture()
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on 127.0.0.1 (free port); set ``.mode`` to change behaviour.

    Modes: ``logprobs`` (default), ``no_logprobs`` (never returns logprobs), ``chat_only`` (404 on
    /v1/completions), ``merged`` (the tokenizer merges every tab into ``unknown``), ``merged_dog``
    (only after " dog"), ``garbled`` (answers nonsense, no logprobs), ``error_500``, ``error_401``.
    """
    state = FakeOpenAI(base_url="", port=0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append(
                {
                    "path": self.path,
                    "body": body,
                    "authorization": self.headers.get("Authorization"),
                }
            )
            if state.mode == "error_500":
                status, payload = 500, {"error": {"message": "boom", "type": "server_error"}}
            elif state.mode == "error_401":
                status, payload = (
                    401,
                    {"error": {"message": "bad key", "type": "invalid_request_error"}},
                )
            elif self.path == "/v1/completions":
                status, payload = _completions(state, body)
            elif self.path == "/v1/chat/completions":
                status, payload = _chat(state, body)
            else:
                status, payload = 404, {"error": {"message": f"no route {self.path}"}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    state.base_url = f"http://127.0.0.1:{state.port}/v1"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def closed_port() -> int:
    """A local port with nothing listening on it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# Mined records of the planted nodes (shared: mining is deterministic)

WORD_MINING = MiningConfig(window_len=16, batch_size=32, top_k=20, n_random=15, seed=7)


@pytest.fixture(scope="session")
def word_nodes(word_data: WordData) -> list[NodeRecords]:
    """Records of the three planted neurons (keys ``planted:0:{0,1,2}``)."""
    refs = [NodeRef(key=f"planted:0:{j}", layer_index=0, index=j) for j in range(3)]
    return mine_records(
        word_data.texts, word_data.tokenizer, planted_activations, refs, WORD_MINING, progress=False
    )


@pytest.fixture(scope="session")
def head_nodes(word_data: WordData) -> list[NodeRecords]:
    """Records of the two planted heads (keys ``head:0:{0,1}``)."""
    refs = [NodeRef(key=f"head:0:{j}", layer_index=0, index=j) for j in range(2)]
    return mine_head_records(
        word_data.texts,
        word_data.tokenizer,
        planted_pair_activations,
        refs,
        WORD_MINING,
        progress=False,
    )
