"""Generate on the embedded toy model: steering, clamping, seeds, stop rules, captures, limits and
cancellation. (Token-for-token equality with HF generate on every architecture is in
tests/unit/adapters/test_generate_conformance.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from tdb_core import cancel, errors, specs
from tdb_core.ops import generate as G
from tdb_core.runner import Limits, ModelRunner

IOI = "When Mary and John went to the store, John gave a drink to"
FOX = "The quick brown fox"


@pytest.fixture(scope="module")
def toy() -> ModelRunner:
    import adapters
    from tdb_core.sae import load_sae
    from tdb_core.toy import TOY_MODEL_DIR, TOY_SAE_DIR, TOY_SAE_ID

    runner = ModelRunner(adapters.load_model("toy-gpt2", str(TOY_MODEL_DIR)))
    runner.saes.attach(TOY_SAE_ID, load_sae(str(TOY_SAE_DIR)), str(TOY_SAE_DIR))
    return runner


@pytest.fixture(scope="module")
def hf_toy() -> Any:
    from transformers import AutoModelForCausalLM

    from tdb_core.toy import TOY_MODEL_DIR

    return AutoModelForCausalLM.from_pretrained(TOY_MODEL_DIR, attn_implementation="eager").eval()


def _run(runner: ModelRunner, prompt: str = FOX, *sets: G.GenerateSet, **kw: Any) -> list[Any]:
    kw.setdefault("max_new_tokens", 12)
    return list(
        G.generate(runner, G.GenerateSpec(prompt=specs.Prompt(text=prompt), sets=sets, **kw))
    )


def _final(events: list[Any]) -> G.Finish:
    assert isinstance(events[-1], G.Finish)
    return events[-1]


def _set(name: str, *edits: Any, scope: G.Scope = G.Scope.ALL) -> G.GenerateSet:
    return G.GenerateSet(name, tuple(G.Edit(e, scope) for e in edits))


@contextmanager
def _block_hook(
    model: Any, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace row 1 of the residual entering block ``layer`` by ``fn(row)`` in every pass."""

    def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[1] = fn(x[1])
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    h = model.transformer.h[layer].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        h.remove()


def _hf_two_rows(hf: Any, ids: tuple[int, ...], n: int) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids, ids]), max_new_tokens=n, do_sample=False)
    return out[:, len(ids) :].tolist()


# -- steering ----------------------------------------------------------------------------------


def test_steering_toward_mary_makes_the_continuation_say_mary(toy: ModelRunner) -> None:
    """Adding 32 x the unembedding direction of ' Mary' to blocks.2.hook_resid_pre at every
    position makes an unrelated prompt's continuation contain ' Mary'; the baseline's does not."""
    mary = toy.tokens.single_token(" Mary")
    v = toy.adapter.W_U()[:, mary].detach()
    iv = specs.Intervention("blocks.2.hook_resid_pre", specs.AddVector(v, 32.0))
    base, steered = _final(_run(toy, FOX, _set("mary", iv))).rows
    assert " Mary" not in base.text
    assert " Mary" in steered.text
    assert mary in steered.token_ids and mary not in base.token_ids


def test_zeroing_a_layer0_head_changes_the_ioi_completion(toy: ModelRunner) -> None:
    """The toy model completes the IOI prompt with the indirect object ' Mary'; zeroing head 1 of
    layer 0 (its hook_z, in the prompt and every step) changes that first token, while zeroing
    head 0 does not."""
    z = "blocks.0.attn.hook_z"
    final = _final(
        _run(
            toy,
            IOI,
            _set("L0H0", specs.Intervention(z, specs.Zero(), units=(0,))),
            _set("L0H1", specs.Intervention(z, specs.Zero(), units=(1,))),
            max_new_tokens=3,
        )
    )
    base, h0, h1 = final.rows
    assert base.text.startswith(" Mary")
    assert h0.text.startswith(" Mary")
    assert not h1.text.startswith(" Mary")


def test_steer_latent_adds_the_decoder_direction(toy: ModelRunner, hf_toy: Any) -> None:
    """steer_latent(sae, latent, coeff) equals HF generate with coeff x the latent's decoder row
    added to the SAE's site (the residual entering block 2) by a plain hook."""
    att = toy.saes.get("toy-res")
    latent, coeff = 467, 48.0
    d = att.sae.decoder_directions()[latent]
    final = _final(_run(toy, FOX, _set("steer", G.SteerLatent("toy-res", latent, coeff))))
    ids = toy.tokens.encode(specs.Prompt(text=FOX))
    with _block_hook(hf_toy, 2, lambda x: x + coeff * d):
        want = _hf_two_rows(hf_toy, ids, 12)
    assert [list(r.token_ids) for r in final.rows] == want
    assert want[0] != want[1]


def test_clamp_latent_splices_the_sae_with_its_error_term(toy: ModelRunner, hf_toy: Any) -> None:
    """clamp_latent sets the latent in the SAE splice: the site becomes decode(z') + (x -
    decode(z)), z' = z with the latent clamped. Equals HF generate with that splice by hand."""
    sae = toy.saes.get("toy-res").sae
    latent, value = 467, 60.0

    def splice(x: torch.Tensor) -> torch.Tensor:
        _, z, stats = sae.encode_with_stats(x)
        z2 = z.clone()
        z2[..., latent] = value
        return sae.decode(z2, stats) + (x - sae.decode(z, stats))

    final = _final(_run(toy, FOX, _set("clamp", G.ClampLatent("toy-res", latent, value))))
    ids = toy.tokens.encode(specs.Prompt(text=FOX))
    with _block_hook(hf_toy, 2, splice):
        want = _hf_two_rows(hf_toy, ids, 12)
    assert [list(r.token_ids) for r in final.rows] == want
    assert want[0] != want[1]


# -- sampling and stopping ---------------------------------------------------------------------


def test_same_seed_same_tokens_and_the_seed_is_reported(toy: ModelRunner) -> None:
    """With a seed the same request gives the same tokens; another seed gives others; without
    one a seed is drawn and reported, and replaying it reproduces the tokens."""
    s = G.Sampling(temperature=1.0, top_p=0.95, seed=7)
    a = _final(_run(toy, FOX, max_new_tokens=16, sampling=s))
    b = _final(_run(toy, FOX, max_new_tokens=16, sampling=s))
    c = _final(_run(toy, FOX, max_new_tokens=16, sampling=G.Sampling(temperature=1.0, seed=8)))
    assert a.rows[0].token_ids == b.rows[0].token_ids
    assert a.rows[0].token_ids != c.rows[0].token_ids
    events = _run(toy, FOX, max_new_tokens=16, sampling=G.Sampling(temperature=1.0))
    start = events[0]
    assert isinstance(start, G.Start) and start.seed is not None
    again = _run(toy, FOX, max_new_tokens=16, sampling=G.Sampling(temperature=1.0, seed=start.seed))
    assert _final(events).rows[0].token_ids == _final(again).rows[0].token_ids


def test_greedy_reports_no_seed_and_model_logprobs(toy: ModelRunner) -> None:
    """Each step carries the token, its log-probability under the model's distribution and the
    top alternatives (best first; greedy picks the first)."""
    events = _run(toy, FOX, max_new_tokens=4, top_k=3)
    assert isinstance(events[0], G.Start) and events[0].seed is None
    steps = [e for e in events if isinstance(e, G.Step)]
    P = len(toy.tokens.encode(specs.Prompt(text=FOX)))
    assert [s.position for s in steps] == [P + i for i in range(4)]
    for s in steps:
        row = s.rows[0]
        assert row is not None and len(row.top) == 3
        assert row.token.token_id == row.top[0].token_id
        assert row.token.logprob == pytest.approx(row.top[0].logprob)
        assert row.top[0].logprob >= row.top[1].logprob >= row.top[2].logprob
        assert row.token.logprob <= 0


def test_stop_string_cuts_the_text(toy: ModelRunner) -> None:
    """A stop string ends a row at the token that completes it; the text stops before it."""
    full = _final(_run(toy, FOX, max_new_tokens=12)).rows[0]
    stop = " brown"
    assert stop in full.text
    got = _final(_run(toy, FOX, max_new_tokens=12, stop_strings=(stop,))).rows[0]
    assert got.stop_reason is G.StopReason.STOP_STRING
    assert got.text == full.text[: full.text.index(stop)]
    assert full.token_ids[: len(got.token_ids)] == got.token_ids
    assert len(got.token_ids) < len(full.token_ids)


def test_stop_token_and_max_new_tokens(toy: ModelRunner) -> None:
    full = _final(_run(toy, FOX, max_new_tokens=8)).rows[0]
    assert full.stop_reason is G.StopReason.MAX_NEW_TOKENS and len(full.token_ids) == 8
    tok = full.token_ids[3]
    got = _final(_run(toy, FOX, max_new_tokens=8, stop_token_ids=(tok,))).rows[0]
    assert got.stop_reason is G.StopReason.STOP_TOKEN
    assert got.token_ids == full.token_ids[: full.token_ids.index(tok) + 1]


def test_rows_stop_independently(toy: ModelRunner) -> None:
    """A row that stops gets no more tokens (None in later steps) while the others go on."""
    mary = toy.tokens.single_token(" Mary")
    v = toy.adapter.W_U()[:, mary].detach()
    iv = specs.Intervention("blocks.2.hook_resid_pre", specs.AddVector(v, 32.0))
    events = _run(toy, FOX, _set("mary", iv), max_new_tokens=12, stop_strings=(" Mary",))
    final = _final(events)
    assert final.rows[1].stop_reason is G.StopReason.STOP_STRING
    assert final.rows[0].stop_reason is G.StopReason.MAX_NEW_TOKENS
    steps = [e for e in events if isinstance(e, G.Step)]
    n1 = len(final.rows[1].token_ids)
    assert all(s.rows[1] is None for s in steps[n1:])
    assert all(s.rows[0] is not None for s in steps)


# -- captures ----------------------------------------------------------------------------------


def test_captures_stream_the_position_that_produced_each_token(toy: ModelRunner) -> None:
    """A capture (SAE latents, top-k) comes with each token, read at the position whose output
    is the token; its values equal a Forward pass over prompt + generated tokens."""
    from tdb_core.ops.forward import forward

    cap = specs.Capture("sae.toy-res.hook_sae_acts_post", top_k=specs.TopK(4))
    events = _run(toy, FOX, max_new_tokens=5, captures=(cap,))
    final = _final(events)
    ids = toy.tokens.encode(specs.Prompt(text=FOX)) + final.rows[0].token_ids
    ref = forward(toy, specs.ForwardSpec(prompts=(specs.Prompt(token_ids=ids),), captures=(cap,)))
    want_v, want_i = ref.captures[0].values[0], ref.captures[0].indices
    assert want_i is not None
    for s in (e for e in events if isinstance(e, G.Step)):
        row = s.rows[0]
        assert row is not None
        (c,) = row.captures
        assert c.positions.tolist() == [[s.position - 1]]
        assert c.values.shape == (1, 1, 4)
        torch.testing.assert_close(c.values[0, 0], want_v[s.position - 1], atol=1e-4, rtol=1e-4)
        assert c.indices is not None
        assert c.indices[0, 0].tolist() == want_i[0, s.position - 1].tolist()


# -- refusals and limits, before any work --------------------------------------------------------


def _refused(runner: ModelRunner, exc: type[Exception], match: str, *sets: Any, **kw: Any) -> None:
    before = runner.stats.get("generate_passes", 0)
    with pytest.raises(exc, match=match):
        G.generate(runner, G.GenerateSpec(prompt=specs.Prompt(text=FOX), sets=sets, **kw))
    assert runner.stats.get("generate_passes", 0) == before


@pytest.mark.parametrize(
    ("exc", "match", "sets", "kw"),
    [
        (errors.InvalidArgumentError, "at least 1", (), {"max_new_tokens": 0}),
        (errors.InvalidArgumentError, "at least 1", (), {"max_new_tokens": -5}),
        (errors.ResourceExhaustedError, "new tokens", (), {"max_new_tokens": 5000}),
        (errors.OutOfRangeError, "context of 128", (), {"max_new_tokens": 126}),
        (errors.InvalidArgumentError, "temperature", (), {"sampling": G.Sampling(-1.0)}),
        (errors.InvalidArgumentError, "top_p", (), {"sampling": G.Sampling(1.0, top_p=0.0)}),
        (
            errors.InvalidArgumentError,
            "finite",
            (),
            {"sampling": G.Sampling(float("nan"))},
        ),
        (errors.OutOfRangeError, "token id", (), {"stop_token_ids": (99999,)}),
        (errors.InvalidArgumentError, "empty", (), {"stop_strings": ("",)}),
        (errors.NotFoundError, "SAE 'nope'", (_set("s", G.SteerLatent("nope", 0, 1.0)),), {}),
        (
            errors.OutOfRangeError,
            "latent 5000",
            (_set("s", G.SteerLatent("toy-res", 5000, 1.0)),),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "finite",
            (_set("s", G.SteerLatent("toy-res", 3, float("nan"))),),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "does not broadcast",
            (
                _set(
                    "s",
                    specs.Intervention("blocks.0.hook_resid_pre", specs.AddVector(torch.ones(7))),
                ),
            ),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "NaN",
            (
                _set(
                    "s",
                    specs.Intervention(
                        "blocks.0.hook_resid_pre", specs.AddVector(torch.full((128,), float("nan")))
                    ),
                ),
            ),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "patch reads a source prompt",
            (_set("s", specs.Intervention("blocks.0.hook_resid_pre", specs.PatchFrom(0))),),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "mean_over_reference is not defined",
            (_set("s", specs.Intervention("blocks.0.hook_resid_pre", specs.MeanOverReference())),),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "key positions",
            (
                _set(
                    "s",
                    specs.Intervention(
                        "blocks.0.attn.hook_pattern", specs.Zero(), units=(0,), key_positions=(1,)
                    ),
                ),
            ),
            {},
        ),
        (
            errors.OutOfRangeError,
            "generated position 12",
            (
                _set(
                    "s",
                    specs.Intervention("blocks.0.hook_resid_pre", specs.Zero(), positions=(12,)),
                    scope=G.Scope.GENERATED,
                ),
            ),
            {"max_new_tokens": 12},
        ),
        (
            errors.OutOfRangeError,
            "position 50 is out of range for the prompt's 7 tokens",
            (
                _set(
                    "s",
                    specs.Intervention("blocks.0.hook_resid_pre", specs.Zero(), positions=(50,)),
                    scope=G.Scope.PROMPT,
                ),
            ),
            {},
        ),
        (
            errors.InvalidArgumentError,
            "used twice",
            (_set("a"), _set("a")),
            {},
        ),
    ],
)
def test_bad_requests_are_refused_before_any_pass(
    toy: ModelRunner, exc: type[Exception], match: str, sets: Any, kw: Any
) -> None:
    _refused(toy, exc, match, *sets, **kw)


def test_limits_on_sets_and_total_tokens(toy: ModelRunner) -> None:
    """Rows (baseline + sets), new tokens and prompt + new tokens are bounded by the limits."""
    limits = Limits(max_prompts=3, max_tokens_per_prompt=20, max_new_tokens=16)
    small = ModelRunner(toy.loaded, limits)
    _refused(small, errors.ResourceExhaustedError, "4 rows", _set("a"), _set("b"), _set("c"))
    _refused(small, errors.ResourceExhaustedError, "23 tokens", max_new_tokens=16)
    _refused(small, errors.ResourceExhaustedError, "17 new tokens", max_new_tokens=17)
    assert _final(_run(small, FOX, _set("a"), _set("b"), max_new_tokens=13)).steps == 13


def test_one_pass_per_token_and_only_the_new_position(toy: ModelRunner) -> None:
    """The prompt is computed once; every later pass feeds one token per row (KV cache)."""
    seen: list[tuple[int, ...]] = []
    h = toy.adapter.model.transformer.wte.register_forward_hook(
        lambda mod, args, out: seen.append(tuple(args[0].shape))
    )
    try:
        final = _final(_run(toy, FOX, _set("a"), max_new_tokens=6))
    finally:
        h.remove()
    P = len(toy.tokens.encode(specs.Prompt(text=FOX)))
    assert seen == [(2, P)] + [(2, 1)] * 5
    assert final.steps == 6


def test_cancellation_stops_at_the_next_step(toy: ModelRunner) -> None:
    """Once the request is cancelled no further pass runs: the generator raises CancelledError
    and the model's pass counter stays where it was."""
    stop = [False]

    def check() -> None:
        if stop[0]:
            raise errors.CancelledError("the client cancelled the request")

    with cancel.scope(check):
        it = G.generate(toy, G.GenerateSpec(prompt=specs.Prompt(text=FOX), max_new_tokens=50))
        next(it)  # Start
        next(it)  # step 0
        next(it)  # step 1
        passes = toy.stats["generate_passes"]
        stop[0] = True
        with pytest.raises(errors.CancelledError):
            next(it)
    assert toy.stats["generate_passes"] == passes
    assert toy.queue_depth == 0


def test_set_tensor_with_a_position_axis_acts_at_each_absolute_position(
    toy: ModelRunner, hf_toy: Any
) -> None:
    """An operand with one row per selected position is cut per pass: row j lands on position
    positions[j], in the prompt pass or in the step that computes it (HF hook by hand)."""
    ids = toy.tokens.encode(specs.Prompt(text=FOX))
    P = len(ids)
    values = torch.stack([torch.full((128,), 3.0), torch.linspace(-5, 5, 128)])  # [2, d_model]
    iv = specs.Intervention(
        "blocks.1.hook_resid_pre", specs.SetTensor(values), positions=(2, P + 1)
    )
    final = _final(_run(toy, FOX, _set("set", iv), max_new_tokens=8))
    calls = [0]

    def pre(mod: Any, args: tuple, kwargs: dict) -> Any:
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        if calls[0] == 0:
            x[1, 2] = values[0]
        elif calls[0] == 2:  # the pass computing position P + 1
            x[1, 0] = values[1]
        calls[0] += 1
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    h = hf_toy.transformer.h[1].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        want = _hf_two_rows(hf_toy, ids, 8)
    finally:
        h.remove()
    assert [list(r.token_ids) for r in final.rows] == want
    assert want[0] != want[1]
