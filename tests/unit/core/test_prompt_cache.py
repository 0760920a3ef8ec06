"""The prompt cache: a Forward answered from a recorded pass equals an uncached run bit for bit;
what cannot be cut from the recording runs a pass; weight changes invalidate; memory stays within
the budget, least recently used first."""

from __future__ import annotations

import pytest
import torch

from tdb_core import specs
from tdb_core.cache import PromptCache, Recorded
from tdb_core.ops.forward import forward

PROMPTS = (specs.Prompt(text="When Mary and John went to the store"), specs.Prompt(text="Hi"))


@pytest.fixture()
def cached(tiny_runner):
    """The tiny runner with a fresh prompt cache (removed afterwards)."""
    cache = PromptCache(64 * 2**20)
    tiny_runner.cache = cache
    try:
        yield tiny_runner, cache
    finally:
        tiny_runner.cache = None


def _uncached(runner, spec):
    cache, runner.cache = runner.cache, None
    try:
        return forward(runner, spec)
    finally:
        runner.cache = cache


def _assert_same(a: specs.ForwardResult, b: specs.ForwardResult) -> None:
    assert a.prompts == b.prompts and a.top_logits == b.top_logits
    assert a.logits_at.dtype == b.logits_at.dtype and torch.equal(a.logits_at, b.logits_at)
    assert len(a.captures) == len(b.captures)
    for x, y in zip(a.captures, b.captures, strict=True):
        assert (x.site, x.dims, x.units) == (y.site, y.dims, y.units)
        assert x.values.dtype == y.values.dtype and torch.equal(x.values, y.values), x.site
        assert torch.equal(x.positions, y.positions)
        assert (x.indices is None) == (y.indices is None)
        if x.indices is not None:
            assert torch.equal(x.indices, y.indices)


CAPTURES = (
    specs.Capture("blocks.1.hook_resid_post"),
    specs.Capture("blocks.0.mlp.hook_post", positions=(0, -1), top_k=specs.TopK(5)),
    specs.Capture("blocks.1.attn.hook_attn_scores"),
    specs.Capture("blocks.0.attn.hook_pattern", units=(1, 3)),
    specs.Capture("blocks.0.attn.hook_result"),
)


def test_a_repeated_forward_is_served_from_the_cache_and_equals_an_uncached_run(cached):
    """The second identical Forward is a hit, and its result (captures with padding, masks,
    top-k and unit selections; top logits; logits) equals an uncached run exactly."""
    runner, cache = cached
    spec = specs.ForwardSpec(PROMPTS, CAPTURES, logit_positions=(-1, 0), top_k=4)
    want = _uncached(runner, spec)
    passes = runner.stats["passes"]
    first = forward(runner, spec)
    assert (cache.stats().hits, cache.stats().misses) == (0, 1)
    second = forward(runner, spec)
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)
    assert runner.stats["passes"] == passes + 1  # the hit ran no pass
    _assert_same(first, want)
    _assert_same(second, want)


def test_other_reductions_of_recorded_sites_are_hits_and_equal_uncached_runs(cached):
    """Captures cut differently from recorded sites (positions, units, top-k modes, dtype, a
    prefix of the logit positions) are answered from the recording, exactly."""
    runner, cache = cached
    forward(runner, specs.ForwardSpec(PROMPTS, CAPTURES, logit_positions=(-1, 0)))
    others = [
        specs.ForwardSpec(
            PROMPTS,
            (
                specs.Capture("blocks.1.hook_resid_post", positions=(-1,), dtype=torch.float16),
                specs.Capture("blocks.0.mlp.hook_post", units=(3, 7, 9)),
                specs.Capture("blocks.1.attn.hook_attn_scores", positions=(1,), units=(0,)),
                specs.Capture("blocks.0.mlp.hook_post", top_k=specs.TopK(3, specs.TopKMode.ABS)),
            ),
            logit_positions=(0,),
            top_k=2,
        ),
        specs.ForwardSpec(PROMPTS, (specs.Capture("blocks.0.attn.hook_result"),)),
    ]
    for spec in others:
        hits = cache.stats().hits
        got = forward(runner, spec)
        assert cache.stats().hits == hits + 1
        _assert_same(got, _uncached(runner, spec))


def test_what_the_recording_lacks_runs_a_pass_and_joins_the_entry(cached):
    """A site not recorded, a new logit position, a part of a derived site (computed only for
    what it keeps) or other prompts are misses; their passes are recorded and later hits."""
    runner, cache = cached
    forward(runner, specs.ForwardSpec(PROMPTS, CAPTURES[:1]))
    misses = [
        specs.ForwardSpec(PROMPTS, (specs.Capture("blocks.0.hook_resid_mid"),)),
        specs.ForwardSpec(PROMPTS, CAPTURES[:1], logit_positions=(1,)),
        specs.ForwardSpec(PROMPTS, (specs.Capture("blocks.0.attn.hook_result", units=(2,)),)),
        specs.ForwardSpec(PROMPTS[:1], CAPTURES[:1]),
        specs.ForwardSpec(PROMPTS, CAPTURES[:1], prepend_bos=True),
    ]
    for spec in misses:
        before = cache.stats()
        got = forward(runner, spec)
        assert cache.stats().misses == before.misses + 1, spec
        _assert_same(got, _uncached(runner, spec))
    both = specs.ForwardSpec(
        PROMPTS, (specs.Capture("blocks.0.hook_resid_mid"), CAPTURES[0]), logit_positions=(1,)
    )
    hits = cache.stats().hits
    _assert_same(forward(runner, both), _uncached(runner, both))
    assert cache.stats().hits == hits + 1


def test_interventions_are_never_served_from_the_cache(cached):
    """A Forward with interventions runs its pass: its result is not the clean pass's."""
    runner, cache = cached
    spec = specs.ForwardSpec(PROMPTS, CAPTURES[:1])
    clean = forward(runner, spec)
    edited = specs.ForwardSpec(
        PROMPTS,
        CAPTURES[:1],
        interventions=(specs.Intervention("blocks.0.mlp.hook_post", specs.Zero()),),
    )
    got = forward(runner, edited)
    assert cache.stats().hits == 0
    assert not torch.equal(got.captures[0].values, clean.captures[0].values)
    _assert_same(got, _uncached(runner, edited))


def test_changing_the_weights_invalidates_the_entries(cached):
    """Weights changed in place give a new stamp: the model's entries are dropped and the next
    Forward runs the changed model."""
    runner, cache = cached
    spec = specs.ForwardSpec(PROMPTS, CAPTURES[:1])
    forward(runner, spec)
    weight = runner.adapter.model.get_input_embeddings().weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(0.5)
        got = forward(runner, spec)
        st = cache.stats()
        assert (st.hits, st.misses, st.invalidations, st.entries) == (0, 2, 1, 1)
        _assert_same(got, _uncached(runner, spec))
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_memory_stays_within_the_budget_least_recently_used_first():
    """Entries are evicted least recently used first until the bytes fit; an entry larger than
    the whole budget is not kept; merging into an entry counts its new tensors once."""
    mb = 2**20
    cache = PromptCache(3 * mb)

    def site(n_mb: float) -> dict[str, Recorded]:
        return {"s": Recorded(torch.zeros(int(n_mb * mb) // 4))}

    for name in "abc":
        cache.add(name, site(1), {})
    assert cache.stats().bytes == 3 * mb and cache.stats().entries == 3
    assert cache.get("a") is not None  # a is now the most recently used
    cache.add("d", site(1), {})
    assert cache.get("b") is None and cache.get("a") is not None
    assert cache.stats().bytes <= 3 * mb and cache.stats().evictions == 1
    cache.add("a", {"t": Recorded(torch.zeros(mb // 4))}, {(0, 1): torch.zeros(10)})
    st = cache.stats()
    assert st.bytes <= 3 * mb and cache.get("a") is not None
    assert sum(e.nbytes for e in cache._entries.values()) == st.bytes
    cache.add("huge", site(4), {})
    assert cache.get("huge") is None and cache.stats().bytes <= 3 * mb
    off = PromptCache(0)
    off.add("a", site(0.1), {})
    assert off.get("a") is None and off.stats().entries == 0
