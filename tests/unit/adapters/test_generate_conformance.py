"""Generate conformance: on every architecture, tokens equal Hugging Face ``generate`` exactly.

The reference is HF's own eager model loaded from the same directory, decoding with its own KV
cache. With no interventions, greedy and seeded sampling give the same tokens; with an
intervention set, the set's row equals HF ``generate`` on the same two-row batch with a plain
torch hook making the same edit on the HF module (in the prompt pass, the cached steps, or at
one absolute position), and the baseline row is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.ops import generate as G
from tests.unit.adapters.archs import ArchCase

PROMPT = "When Mary and John went to the store, John gave a drink to"
N_NEW = 12


def _hf(arch_dir: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(arch_dir, attn_implementation="eager").eval()


def _ids(runner: Any) -> list[int]:
    return list(runner.tokens.encode(specs.Prompt(text=PROMPT)))


def _hf_rows(model: Any, ids: list[int], rows: int, **kw: Any) -> list[list[int]]:
    """HF generate on ``rows`` copies of the prompt; each row cut after its EOS."""
    x = torch.tensor([ids] * rows)
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=N_NEW, **kw)[:, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    return [r[: r.index(eos) + 1] if eos in r else r for r in out]


def _ours(runner: Any, *sets: G.GenerateSet, sampling: G.Sampling | None = None) -> G.Finish:
    spec = G.GenerateSpec(
        prompt=specs.Prompt(text=PROMPT),
        sets=sets,
        max_new_tokens=N_NEW,
        sampling=sampling or G.Sampling(),
    )
    events = list(G.generate(runner, spec))
    final = events[-1]
    assert isinstance(final, G.Finish)
    return final


@contextmanager
def _hook(module: torch.nn.Module, fn: Callable[[torch.Tensor, int], None]) -> Iterator[None]:
    """A forward pre-hook that edits row 1 of the module's first input in place; ``fn(x, call)``
    gets the input ``[B, T, d]`` and the call number (0 is the prompt pass)."""
    calls = [0]

    def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
        x = args[0] if args else kwargs["hidden_states"]
        x = x.clone()
        fn(x, calls[0])
        calls[0] += 1
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": x}

    h = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


def test_greedy_equals_hf_generate(arch_runner: Any, arch_dir: Any) -> None:
    """No interventions, greedy: the tokens are HF generate's, token for token."""
    hf = _hf(arch_dir)
    want = _hf_rows(hf, _ids(arch_runner), 1, do_sample=False)[0]
    got = _ours(arch_runner).rows[0]
    assert list(got.token_ids) == want
    assert len(want) == N_NEW or want[-1] == hf.generation_config.eos_token_id


def test_seeded_sampling_equals_hf_generate(arch_runner: Any, arch_dir: Any) -> None:
    """Temperature, top-k, top-p and the repetition penalty are HF's, applied in HF's order: with
    the same seed the sampled tokens are HF generate's (HF draws from the global generator)."""
    hf = _hf(arch_dir)
    s = G.Sampling(temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=1234)
    torch.manual_seed(1234)
    want = _hf_rows(
        hf,
        _ids(arch_runner),
        1,
        do_sample=True,
        temperature=0.9,
        top_k=40,
        top_p=0.9,
        repetition_penalty=1.3,
    )[0]
    got = _ours(arch_runner, sampling=s).rows[0]
    assert list(got.token_ids) == want


def _add_set(scope: G.Scope, positions: tuple[int, ...] | None = None) -> G.GenerateSet:
    d = 64
    v = torch.linspace(-3.0, 3.0, d)
    iv = specs.Intervention("blocks.1.hook_resid_pre", specs.AddVector(v, 2.0), positions=positions)
    return G.GenerateSet("add", (G.Edit(iv, scope),))


@pytest.mark.parametrize(
    ("scope", "positions", "when"),
    [
        (G.Scope.ALL, None, lambda call, n: [slice(None)]),
        (G.Scope.PROMPT, None, lambda call, n: [slice(None)] if call == 0 else []),
        (G.Scope.GENERATED, None, lambda call, n: [slice(None)] if call > 0 else []),
        # absolute positions: 3 in the prompt pass; P + 2 in the step that computes it
        (G.Scope.ALL, (3, "P+2"), lambda call, n: [3] if call == 0 else ([0] if call == 3 else [])),
        (G.Scope.GENERATED, (2,), lambda call, n: [0] if call == 3 else []),
    ],
    ids=["all", "prompt", "generated", "absolute", "generated-index"],
)
def test_add_equals_hf_generate_with_a_hook(
    arch_runner: Any, arch_dir: Any, arch_case: ArchCase, scope: G.Scope, positions: Any, when: Any
) -> None:
    """Adding a vector to blocks.1.hook_resid_pre in one set gives exactly HF generate's tokens
    with a pre-hook adding it on block 1 (at the same positions of the prompt pass and cached
    steps), and the baseline row is HF's plain generation."""
    ids = _ids(arch_runner)
    P = len(ids)
    pos = None if positions is None else tuple(P + 2 if p == "P+2" else p for p in positions)
    final = _ours(arch_runner, _add_set(scope, pos))
    hf = _hf(arch_dir)
    v = 2.0 * torch.linspace(-3.0, 3.0, 64)

    def edit(x: torch.Tensor, call: int) -> None:
        for where in when(call, x.shape[1]):
            x[1, where] += v

    with _hook(hf.get_submodule(arch_case.block.format(L=1)), edit):
        want = _hf_rows(hf, ids, 2, do_sample=False)
    plain = _hf_rows(hf, ids, 1, do_sample=False)[0]
    assert [list(r.token_ids) for r in final.rows] == want
    assert list(final.rows[0].token_ids) == plain
    if scope is G.Scope.ALL and positions is None:
        assert want[1] != want[0], "the steering vector should change the continuation"


def test_zero_head_equals_hf_generate_with_a_hook(
    arch_runner: Any, arch_dir: Any, arch_case: ArchCase
) -> None:
    """Zeroing head 1 of layer 0 (hook_z) in one set gives exactly HF generate's tokens with the
    head's slice of the output projection's input zeroed in every pass."""
    d_head = arch_runner.schema.dims.d_head
    iv = specs.Intervention("blocks.0.attn.hook_z", specs.Zero(), units=(1,))
    final = _ours(arch_runner, G.GenerateSet("zero", (G.Edit(iv),)))
    hf = _hf(arch_dir)

    def edit(x: torch.Tensor, call: int) -> None:
        x[1, :, d_head : 2 * d_head] = 0

    with _hook(hf.get_submodule(arch_case.o_proj.format(L=0)), edit):
        want = _hf_rows(hf, _ids(arch_runner), 2, do_sample=False)
    assert [list(r.token_ids) for r in final.rows] == want
