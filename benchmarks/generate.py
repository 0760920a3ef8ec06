"""Generate: tokens/s of the Generate RPC (a baseline plus one `add` steering set) against HF
``generate`` of the same two sequences in-process, on a GPT-2-small-shaped random model.

    python -m benchmarks generate [--new-tokens 64] [--size small|tiny] [--repeats 3]

HF's reference is the same weights loaded with eager attention (the math the hook engine runs,
so the tokens must be equal, and are checked), generating both rows in one batch with a plain
torch pre-hook adding the steering vector to row 1: the same work. The JSON reports tokens/s of
the RPC (over gRPC, server in this process), of the operation in-process, and of HF eager and
HF sdpa; ``ratio`` is RPC / HF eager (target >= 0.85), ``ratio_vs_sdpa`` RPC / HF sdpa.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from benchmarks.common import ByteTokenizer, emit, gpt2_config, interleaved_medians, random_model
from benchmarks.service import BIG_LIMITS, serving

TARGET = 0.85
PROMPT = "When Mary and John went to the store, John gave a drink to"
LAYER = 6


def _hf_generate(model: Any, ids: list[int], n: int, vector: torch.Tensor) -> list[list[int]]:
    """HF generate on [prompt, prompt], adding ``vector`` to row 1's residual entering block
    LAYER in every pass (what the steering set does)."""
    block = model.transformer.h[min(LAYER, len(model.transformer.h) - 1)]

    def pre(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[1] += vector
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    h = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids, ids]), max_new_tokens=n, do_sample=False)
    finally:
        h.remove()
    rows: list[list[int]] = out[:, len(ids) :].tolist()
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks generate")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--size", default="small", choices=("small", "tiny"))
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import adapters
    from tdb_client import TdbClient
    from tdb_client import interventions as iv
    from tdb_core import specs
    from tdb_core.ops import generate as G
    from tdb_core.runner import Limits, ModelRunner

    vocab = 50257 if args.size == "small" else 512

    def model(attn: str | None) -> Any:
        """The same weights (same seed) with a config of its own (attention is set per config)."""
        m: Any = random_model(gpt2_config(args.size, vocab=vocab))
        if attn is not None:
            m.set_attn_implementation(attn)
        return m

    config = gpt2_config(args.size, vocab=vocab)
    tok = ByteTokenizer()
    runner = ModelRunner(adapters.wrap_model("gpt2", model(None), tok), Limits(**BIG_LIMITS))
    eager = model("eager")  # HF's own eager attention: the math the hook engine runs
    sdpa = model("sdpa")
    for m in (eager, sdpa):  # n tokens every time, as Generate with stop_at_eos=False
        m.generation_config.eos_token_id = None
    layer = min(LAYER, config.n_layer - 1)
    d = config.n_embd
    vector = torch.linspace(-2.0, 2.0, d)
    ids = tok(PROMPT)["input_ids"]
    n = args.new_tokens
    site = f"blocks.{layer}.hook_resid_pre"
    spec = G.GenerateSpec(
        prompt=specs.Prompt(token_ids=tuple(ids)),
        sets=(
            G.GenerateSet("steer", (G.Edit(specs.Intervention(site, specs.AddVector(vector))),)),
        ),
        max_new_tokens=n,
        stop_at_eos=False,
    )
    got: dict[str, list[list[int]]] = {}

    def op() -> None:
        final = list(G.generate(runner, spec))[-1]
        assert isinstance(final, G.Finish)
        got["op"] = [list(r.token_ids) for r in final.rows]

    with serving(runner) as svc, TdbClient(f"127.0.0.1:{svc.port}", timeout=600) as c:

        def rpc() -> None:
            finish = c.generate(
                ids,
                {"steer": [iv.add(site, vector.numpy().astype(np.float32))]},
                max_new_tokens=n,
                stop_at_eos=False,
            ).result()
            got["rpc"] = [r.token_ids for r in finish.rows.values()]

        def hf_eager() -> None:
            got["hf"] = _hf_generate(eager, ids, n, vector)

        def hf_sdpa() -> None:
            _hf_generate(sdpa, ids, n, vector)

        times = interleaved_medians(
            {"rpc": rpc, "op": op, "hf_eager": hf_eager, "hf_sdpa": hf_sdpa},
            repeats=args.repeats,
            warmup=1,
        )
    tokens = 2 * n
    tps = {k: tokens / v for k, v in times.items()}
    emit(
        {
            "benchmark": "generate",
            "model": f"gpt2-{args.size} (random init)",
            "device": str(runner.device),
            "rows": 2,
            "new_tokens": n,
            "rpc_tokens_per_s": round(tps["rpc"], 1),
            "op_tokens_per_s": round(tps["op"], 1),
            "hf_eager_tokens_per_s": round(tps["hf_eager"], 1),
            "hf_sdpa_tokens_per_s": round(tps["hf_sdpa"], 1),
            "ratio": round(tps["rpc"] / tps["hf_eager"], 3),
            "ratio_op": round(tps["op"] / tps["hf_eager"], 3),
            "ratio_vs_sdpa": round(tps["rpc"] / tps["hf_sdpa"], 3),
            "target_ratio": TARGET,
            "attention": runner.adapter.model.config._attn_implementation,  # type: ignore[union-attr]
            "same_tokens_as_hf": got["rpc"] == got["hf"] == got["op"],
            "steering_changed_tokens": got["hf"][0] != got["hf"][1],
        }
    )
    return 0
