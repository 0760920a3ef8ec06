"""TransformerLens's rotary sites: ``hook_q``/``hook_k`` before the rotary embedding,
``hook_rot_q``/``hook_rot_k`` after it, for every rotary architecture of ``archs.ARCHS``.

The values themselves are compared with the float64 references in ``test_conformance`` (which
compute the projections and their rotation from the state dict); here the rotation is checked
site against site with the references' own rotary function, and edits at each of the four sites
are checked to act where TransformerLens's would: an edit of ``hook_k`` is rotated into
``hook_rot_k``, an edit of ``hook_rot_k`` reaches the scores of exactly its query heads.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.ops.forward import forward
from tests.unit.adapters import references as R
from tests.unit.adapters.archs import ROTARY_ARCH_NAMES

PROMPT = "When Mary and John went to the store, John gave a drink to"
LAYER = 1


pytestmark = pytest.mark.parametrize("arch", ROTARY_ARCH_NAMES, indirect=True)


def _run(runner: Any, *captures: str, interventions: tuple[specs.Intervention, ...] = ()) -> Any:
    spec = specs.ForwardSpec(
        prompts=(specs.Prompt(text=PROMPT),),
        captures=tuple(specs.Capture(c) for c in captures),
        interventions=interventions,
    )
    return forward(runner, spec)


def _values(res: Any) -> dict[str, torch.Tensor]:
    return {c.site: c.values[0].double() for c in res.captures}


def _rotate(config: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's rotary embedding of ``x`` ``[pos, heads, d_head]`` (positions from 0), written
    from the config (rope_theta, the partial rotary fraction), not from the HF modules."""
    rope = config.rope_parameters
    d_head = x.shape[-1]
    rot = int(d_head * rope.get("partial_rotary_factor", 1.0))
    return R.rotary(x.double(), rot, rope["rope_theta"])


def _site(key: str) -> str:
    return f"blocks.{LAYER}.attn.{key}"


def test_rot_sites_are_the_rotated_projections(arch_runner: Any) -> None:
    """hook_rot_q / hook_rot_k equal hook_q / hook_k rotated by position (1e-5), and hook_k,
    hook_rot_k carry the kv heads."""
    cfg = arch_runner.adapter.model.config
    s = _values(_run(arch_runner, "blocks.*.attn.hook_*"))
    for L in range(cfg.num_hidden_layers):
        p = f"blocks.{L}.attn."
        for pre, post in (("hook_q", "hook_rot_q"), ("hook_k", "hook_rot_k")):
            want = _rotate(cfg, s[p + pre])
            torch.testing.assert_close(s[p + post], want, atol=1e-5, rtol=1e-5, msg=p + post)
            # position 0 is not rotated; later positions are
            torch.testing.assert_close(s[p + post][0], s[p + pre][0], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(s[p + post][1:], s[p + pre][1:], atol=1e-3)
        assert s[p + "hook_k"].shape[1] == arch_runner.schema.dims.n_kv_heads


def test_logits_are_bit_identical_with_the_rotary_sites_hooked(arch_runner: Any) -> None:
    """Reading (and differentiating-ready hooking of) the four sites leaves logits unchanged."""
    plain = _run(arch_runner, "logits")
    hooked = _run(
        arch_runner, "blocks.*.attn.hook_q", "blocks.*.attn.hook_rot_k", "blocks.*.attn.hook_k"
    )
    assert torch.equal(plain.logits_at, hooked.logits_at)
    both = _run(arch_runner, "blocks.*.attn.hook_*", "logits")
    assert torch.equal(plain.captures[0].values, both.captures[-1].values)


def test_editing_hook_k_is_rotated_into_hook_rot_k(arch_runner: Any) -> None:
    """Adding u to kv head 0 of hook_k (before rotary) adds R_pos u to hook_rot_k at every
    position: the edit goes through the model's rotary embedding, and changes the logits."""
    cfg = arch_runner.adapter.model.config
    d = arch_runner.schema.dims
    u = torch.linspace(-1.0, 1.0, d.d_head)
    edit = specs.Intervention(_site("hook_k"), specs.AddVector(u), units=(0,))
    sites = (_site("hook_k"), _site("hook_rot_k"), "logits")
    plain = _values(_run(arch_runner, *sites))
    edited = _values(_run(arch_runner, *sites, interventions=(edit,)))
    n = plain[_site("hook_k")].shape[0]
    delta = edited[_site("hook_rot_k")] - plain[_site("hook_rot_k")]  # [pos, kv_head, d_head]
    want = _rotate(cfg, u.double().expand(n, 1, d.d_head))[:, 0]  # R_pos u, [pos, d_head]
    torch.testing.assert_close(delta[:, 0], want, atol=1e-5, rtol=1e-5)
    assert bool((delta[:, 1:] == 0).all())  # other kv heads untouched
    assert not torch.allclose(delta[1, 0], delta[2, 0])  # the rotation depends on position
    assert not torch.equal(edited["logits"], plain["logits"])


def test_editing_hook_rot_k_reaches_the_scores_of_its_query_heads(arch_runner: Any) -> None:
    """Zeroing kv head 0 of hook_rot_k zeroes the (finite) scores of the query heads that read it
    (soft-capping maps 0 to 0); the other heads' scores, and hook_k itself, are unchanged."""
    d = arch_runner.schema.dims
    group = d.n_heads // d.n_kv_heads
    edit = specs.Intervention(_site("hook_rot_k"), specs.Zero(), units=(0,))
    sites = (_site("hook_k"), _site("hook_attn_scores"))
    plain = _values(_run(arch_runner, *sites))
    edited = _values(_run(arch_runner, *sites, interventions=(edit,)))
    scores, before = edited[_site("hook_attn_scores")], plain[_site("hook_attn_scores")]
    finite = torch.isfinite(before)
    assert torch.equal(finite, torch.isfinite(scores))
    assert bool((scores[:group][finite[:group]] == 0).all())
    assert bool((before[:group][finite[:group]] != 0).any())
    assert torch.equal(scores[group:], before[group:])
    assert torch.equal(edited[_site("hook_k")], plain[_site("hook_k")])


def test_editing_hook_q_is_rotated_into_hook_rot_q(arch_runner: Any) -> None:
    """Scaling query head 1 of hook_q by 2 doubles hook_rot_q's head 1 (rotation is linear) and
    nothing else of it."""
    edit = specs.Intervention(_site("hook_q"), specs.Scale(2.0), units=(1,))
    plain = _values(_run(arch_runner, _site("hook_rot_q")))[_site("hook_rot_q")]
    edited = _values(_run(arch_runner, _site("hook_rot_q"), interventions=(edit,)))
    got = edited[_site("hook_rot_q")]
    torch.testing.assert_close(got[:, 1], 2 * plain[:, 1], atol=1e-5, rtol=1e-5)
    assert torch.equal(
        torch.cat([got[:, :1], got[:, 2:]], 1), torch.cat([plain[:, :1], plain[:, 2:]], 1)
    )
