"""Adapter conformance: every architecture computes, exposes and edits its sites correctly.

Each test runs on every architecture of ``archs.ARCHS`` (GPT-2, GPT-NeoX parallel and sequential,
Llama, Mistral, Qwen2, Gemma 2, Phi) through the ``arch_runner`` fixture. Sites are compared with
a hand-written float64 reference from the state dict (``references.py``) within 1e-5; logits with
the hook engine with those of HF's own eager model, bit for bit; interventions with the same edit
made by hand with a plain torch hook on the HF module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.errors import InvalidArgumentError, NotFoundError, OutOfRangeError
from tdb_core.ops.forward import forward
from tdb_core.ops.patch_sweep import PatchSweepSpec, SweepBy, patch_sweep
from tdb_core.schema import SITE_KINDS, site_name
from tests.unit.adapters.archs import GQA_ARCH_NAMES, MAX_DIFF, SDPA_ARCH_NAMES, ArchCase

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The quick brown fox"]
_LAYER_RE = re.compile(r"^blocks\.\d+\.")


def _forward(
    runner: Any,
    *texts: str,
    captures: tuple[specs.Capture, ...] = (),
    interventions: tuple[specs.Intervention, ...] = (),
    sources: tuple[specs.Prompt, ...] = (),
) -> specs.ForwardResult:
    prompts = tuple(specs.Prompt(text=t) for t in texts)
    return forward(
        runner,
        specs.ForwardSpec(
            prompts=prompts, captures=captures, interventions=interventions, sources=sources
        ),
    )


def _by_site(res: specs.ForwardResult, row: int = 0) -> dict[str, torch.Tensor]:
    return {c.site: c.values[row] for c in res.captures}


def _assert_site_close(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Equal within 1e-5 where finite, -inf in the same places; returns the max abs difference."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{name}: -inf entries differ"
    torch.testing.assert_close(got[finite], want[finite], atol=1e-5, rtol=1e-5, msg=name)
    return float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


@contextmanager
def _hand_hook(
    module: torch.nn.Module, fn: Callable[..., Any], pre: bool = False
) -> Iterator[None]:
    h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        h.remove()


def _hf_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The HF model run directly, without the engine (tdb attention computes HF's eager math)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


# --------------------------------------------------------------------------------------------------
# Sites and schema


def test_every_site_matches_reference(arch: str, arch_case: ArchCase, arch_runner: Any) -> None:
    """Each site of every layer equals the hand-written float64 reference within 1e-5 (fp32)."""
    res = _forward(arch_runner, PROMPTS[0], captures=(specs.Capture("*"),))
    ids = list(res.prompts[0].token_ids)
    ref = arch_case.reference(arch_runner.adapter.model, ids)
    got = _by_site(res)
    assert set(got) == set(ref), sorted(set(got) ^ set(ref))
    diffs = MAX_DIFF.setdefault(arch, {})
    for name, want in ref.items():
        kind = _LAYER_RE.sub("", name)
        diffs[kind] = max(diffs.get(kind, 0.0), _assert_site_close(name, got[name], want))


def test_schema_has_exactly_the_sites_of_the_architecture(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """The schema lists every site the architecture has; a lacking one is NOT_FOUND when named,
    a layer past the last OUT_OF_RANGE."""
    schema = arch_runner.schema
    assert {k.key for k in schema.kinds} == {k.key for k in SITE_KINDS} - arch_case.absent
    cfg = arch_runner.adapter.model.config
    kv = getattr(cfg, "num_key_value_heads", None) or schema.dims.n_heads
    assert schema.dims.n_kv_heads == kv
    for key in ("hook_attn_out", "mlp.hook_post"):  # kinds some adapters restate the meaning of
        with pytest.raises(OutOfRangeError):
            _forward(
                arch_runner,
                PROMPTS[1],
                captures=(specs.Capture(site_name(key, schema.dims.n_layers)),),
            )
    for key in sorted(arch_case.absent):
        name = site_name(key, 0)
        with pytest.raises(NotFoundError, match="does not exist in this model"):
            _forward(arch_runner, PROMPTS[1], captures=(specs.Capture(name),))
        with pytest.raises(NotFoundError):
            _forward(
                arch_runner, PROMPTS[1], interventions=(specs.Intervention(name, specs.Zero()),)
            )


def test_get_model_info_reports_the_real_schema(arch_case: ArchCase, arch_runner: Any) -> None:
    """GetModelInfo lists this model's sites with their (architecture-specific) meanings."""
    from services.convert import model_info_to_pb

    info = model_info_to_pb(arch_runner)
    schema = arch_runner.schema
    assert info.architecture == arch_case.architecture
    assert [s.name for s in info.sites] == [s.name for s in schema.sites]
    assert [s.meaning for s in info.sites] == [s.kind.meaning for s in schema.sites]
    assert not {s.kind for s in info.sites} & arch_case.absent
    assert info.n_kv_heads == schema.dims.n_kv_heads
    meaning = {s.kind: s.meaning for s in info.sites}
    if "hook_resid_mid" in arch_case.absent:
        assert "parallel" in meaning["hook_attn_out"]
    if "mlp.hook_pre_linear" not in arch_case.absent:
        assert "act(hook_pre) * hook_pre_linear" in meaning["mlp.hook_post"]
    for key in ("ln1.hook_normalized", "ln2.hook_normalized", "ln_final.hook_normalized"):
        if key not in arch_case.absent:  # TransformerLens's meaning: before the gain and bias
            assert "normalized, before" in meaning[key] and "gain" in meaning[key], key


# --------------------------------------------------------------------------------------------------
# Logits


def test_capture_leaves_logits_bit_identical(arch_runner: Any) -> None:
    """Logits with every site captured are bit-identical to logits with no capture at all."""
    plain = _forward(arch_runner, *PROMPTS, captures=(specs.Capture("logits"),))
    hooked = _forward(arch_runner, *PROMPTS, captures=(specs.Capture("*"), specs.Capture("logits")))
    assert torch.equal(plain.captures[0].values, hooked.captures[-1].values)
    assert torch.equal(plain.logits_at, hooked.logits_at)


def test_logits_equal_hf_eager_model(arch_runner: Any, arch_dir: Any) -> None:
    """The served model computes bit for bit what HF's own eager implementation computes."""
    from transformers import AutoModelForCausalLM

    res = _forward(arch_runner, PROMPTS[0], captures=(specs.Capture("logits"),))
    hf = AutoModelForCausalLM.from_pretrained(arch_dir, attn_implementation="eager").eval()
    assert torch.equal(res.captures[0].values[0], _hf_logits(hf, list(res.prompts[0].token_ids)))


@pytest.mark.parametrize("arch", SDPA_ARCH_NAMES, indirect=True)
def test_logits_match_hf_sdpa_model(arch_runner: Any, arch_dir: Any) -> None:
    """HF's sdpa attention gives the same logits within 1e-5 (fused kernels reorder the sums)."""
    from transformers import AutoModelForCausalLM

    res = _forward(arch_runner, PROMPTS[0], captures=(specs.Capture("logits"),))
    hf = AutoModelForCausalLM.from_pretrained(arch_dir, attn_implementation="sdpa").eval()
    assert hf.config._attn_implementation == "sdpa"
    _close("logits", res.captures[0].values[0], _hf_logits(hf, list(res.prompts[0].token_ids)))


def test_batch_of_different_lengths_matches_single_prompts(arch_runner: Any) -> None:
    """Right-padded batching gives each prompt the values it gets alone (1e-5), padding filled."""
    both = _forward(arch_runner, *PROMPTS, captures=(specs.Capture("*"),))
    lengths = [len(p.token_ids) for p in both.prompts]
    assert lengths[0] != lengths[1]
    for i, text in enumerate(PROMPTS):
        alone = _forward(arch_runner, text, captures=(specs.Capture("*"),))
        n = lengths[i]
        for cb, ca in zip(both.captures, alone.captures, strict=True):
            got, want = cb.values[i], ca.values[0]
            square = "attn_scores" in cb.site or "pattern" in cb.site
            _assert_site_close(cb.site, got[:, :n, :n] if square else got[:n], want)
            pad = got[:, n:, :] if square else got[n:]
            fill = float("-inf") if "attn_scores" in cb.site else 0.0
            assert bool((pad == fill).all()), f"{cb.site}: padding not filled with {fill}"
        assert both.top_logits[i][0].token_ids == alone.top_logits[0][0].token_ids


@pytest.mark.parametrize("arch", GQA_ARCH_NAMES, indirect=True)
def test_grouped_query_keys_and_values_keep_their_kv_heads(arch_runner: Any) -> None:
    """hook_k/hook_v (and hook_rot_k) have num_key_value_heads heads, as TransformerLens serves
    them; queries keep one per query head."""
    cfg = arch_runner.adapter.model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    assert n_kv < n_heads
    schema = arch_runner.schema
    assert schema.dims.n_kv_heads == n_kv
    res = _forward(arch_runner, PROMPTS[0], captures=(specs.Capture("blocks.*.attn.hook_*"),))
    for c in res.captures:
        site = schema.get(c.site)
        if site.kind.key in ("attn.hook_k", "attn.hook_v", "attn.hook_rot_k"):
            assert site.kind.dims == ("pos", "kv_head", "d_head")
            assert c.values.shape[2] == n_kv == schema.unit_count(site), c.site
        elif site.kind.key in ("attn.hook_q", "attn.hook_rot_q", "attn.hook_z"):
            assert c.values.shape[2] == n_heads == schema.unit_count(site), c.site
    with pytest.raises(OutOfRangeError, match="kv head"):
        _forward(
            arch_runner,
            PROMPTS[1],
            interventions=(
                specs.Intervention("blocks.0.attn.hook_k", specs.Zero(), units=(n_kv,)),
            ),
        )
    ids = arch_runner.tokens.encode(specs.Prompt(text=PROMPTS[1]))
    other = [*ids[:-1], (ids[-1] + 1) % cfg.vocab_size]  # the same prompt, last token changed
    sweep = patch_sweep(
        arch_runner,
        PatchSweepSpec(
            specs.Prompt(token_ids=ids),
            specs.Prompt(token_ids=other),
            "attn.hook_v",
            (ids[-1],),
            (other[-1],),
            by=SweepBy.HEAD,
        ),
    )
    assert sweep.recovered.shape == (cfg.num_hidden_layers, n_kv)  # one column per kv head


# --------------------------------------------------------------------------------------------------
# Weights in schema layout


def test_weight_accessors_reproduce_the_sites(arch_case: ArchCase, arch_runner: Any) -> None:
    """W_E, W_O/b_O, W_in, W_out/b_out, the norms, W_U/b_U and the soft-cap recompute the sites."""
    a = arch_runner.adapter
    d = a.dims
    res = _forward(arch_runner, PROMPTS[0], captures=(specs.Capture("*"),))
    s = _by_site(res)
    ids = list(res.prompts[0].token_ids)
    assert a.W_E().shape == (d.d_vocab, d.d_model) and a.W_U().shape == (d.d_model, d.d_vocab)
    _close("hook_embed", a.W_E()[ids], s["hook_embed"])
    assert a.parallel_blocks == ("hook_resid_mid" in arch_case.absent)

    def through(norm: Any, x: torch.Tensor) -> torch.Tensor:
        return x if norm is None else norm.apply(x, norm.scale(x))

    for L in range(d.n_layers):
        p = f"blocks.{L}."
        w_o, b_o = a.W_O(L), a.b_O(L)
        assert w_o.shape == (d.n_heads, d.d_head, d.d_model)
        attn = torch.einsum("thd,hdm->tm", s[p + "attn.hook_z"], w_o)
        attn = attn if b_o is None else attn + b_o
        _close(p + "hook_attn_out", through(a.post_attn_norm(L), attn), s[p + "hook_attn_out"])
        w_out, b_out = a.W_out(L), a.b_out(L)
        assert w_out.shape == (d.d_mlp, d.d_model)
        mlp = s[p + "mlp.hook_post"] @ w_out
        mlp = mlp if b_out is None else mlp + b_out
        _close(p + "hook_mlp_out", through(a.post_mlp_norm(L), mlp), s[p + "hook_mlp_out"])
        x = s[p + "hook_resid_pre"]
        norm, read = a.mlp_in_norm(L), x if a.parallel_blocks else s[p + "hook_resid_mid"]
        ln = p + ("ln1" if "ln2.hook_normalized" in arch_case.absent else "ln2")
        _close(ln + ".hook_scale", norm.scale(read), s[ln + ".hook_scale"])
        _close(
            ln + ".hook_normalized",
            norm.normalize(read, norm.scale(read)),
            s[ln + ".hook_normalized"],
        )
        normed = norm.affine(s[ln + ".hook_normalized"])  # the MLP input
        _close("mlp input", norm.apply(read, norm.scale(read)), normed)
        bias = s[p + "mlp.hook_pre"] - normed @ a.W_in(L)  # [pos, d_mlp]: the bias at every pos
        _close(p + "mlp.hook_pre", bias, bias[:1].expand_as(bias))
        if a.parallel_blocks:
            _close(
                p + "hook_resid_post",
                x + s[p + "hook_attn_out"] + s[p + "hook_mlp_out"],
                s[p + "hook_resid_post"],
            )
        else:
            _close(p + "hook_resid_mid", x + s[p + "hook_attn_out"], s[p + "hook_resid_mid"])
            _close(
                p + "hook_resid_post",
                s[p + "hook_resid_mid"] + s[p + "hook_mlp_out"],
                s[p + "hook_resid_post"],
            )
    fn = a.final_norm()
    last = s[f"blocks.{d.n_layers - 1}.hook_resid_post"]
    _close("ln_final.hook_scale", fn.scale(last), s["ln_final.hook_scale"])
    _close(
        "ln_final.hook_normalized",
        fn.normalize(last, fn.scale(last)),
        s["ln_final.hook_normalized"],
    )
    u = fn.affine(s["ln_final.hook_normalized"]) @ a.W_U()
    u = u if a.b_U() is None else u + a.b_U()
    cap = a.logit_softcap()
    _close("logits", u if cap is None else cap * torch.tanh(u / cap), s["logits"])


def test_gradients_equal_plain_autograd_through_the_hf_model(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """d logit / d blocks.1.hook_resid_pre through the engine is bit-identical to plain autograd."""
    batch = arch_runner.tokens.make_batch([specs.Prompt(text=PROMPTS[0])])
    planner = arch_runner.planner(batch)
    site = "blocks.1.hook_resid_pre"
    planner.plan.grad_sites.add(site)
    out = arch_runner.run(batch, planner.plan, grad=True)
    top = int(out.logits[0, -1].argmax())
    (got,) = torch.autograd.grad(out.logits[0, -1, top], out.ctx.graph[site])

    model = arch_runner.adapter.model
    leaf: dict[str, torch.Tensor] = {}

    def make_leaf(mod: Any, args: tuple) -> tuple:
        leaf["x"] = args[0].detach().requires_grad_()
        return (leaf["x"], *args[1:])

    with (
        torch.enable_grad(),
        _hand_hook(model.get_submodule(arch_case.block.format(L=1)), make_leaf, pre=True),
    ):
        logits = model(input_ids=torch.tensor([batch.rows[0]])).logits
        (want,) = torch.autograd.grad(logits[0, -1, top], leaf["x"])
    assert got.abs().sum() > 0
    assert torch.equal(got, want)


# --------------------------------------------------------------------------------------------------
# Interventions


def test_zeroing_a_head_via_hook_z_equals_the_hand_edit(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """Zeroing head 1's z at layer 1 equals zeroing its slice of the output projection's input."""
    d = arch_runner.adapter.dims
    model = arch_runner.adapter.model
    res = _forward(
        arch_runner,
        PROMPTS[0],
        captures=(specs.Capture("logits"),),
        interventions=(specs.Intervention("blocks.1.attn.hook_z", specs.Zero(), units=(1,)),),
    )
    ids = list(res.prompts[0].token_ids)

    def zero_head(mod: Any, args: tuple) -> tuple:
        z = args[0].clone()  # [B, T, H * d_head]
        z[..., d.d_head : 2 * d.d_head] = 0
        return (z,)

    with _hand_hook(model.get_submodule(arch_case.o_proj.format(L=1)), zero_head, pre=True):
        want = _hf_logits(model, ids)
    assert torch.equal(res.captures[0].values[0], want)
    assert not torch.equal(want, _hf_logits(model, ids))


def test_patching_resid_pre_reproduces_the_source_logits(arch_runner: Any) -> None:
    """Patching all of blocks.0.hook_resid_pre from a source gives the source's logits exactly."""
    a = arch_runner.tokens.encode(specs.Prompt(text=PROMPTS[0]))[:8]
    b = arch_runner.tokens.encode(specs.Prompt(text=PROMPTS[1] + " jumps over the lazy dog"))[:8]
    assert a != b and len(a) == len(b) == 8
    target, source = specs.Prompt(token_ids=a), specs.Prompt(token_ids=b)
    cap = (specs.Capture("logits"),)
    patched = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(target,),
            sources=(source,),
            captures=cap,
            interventions=(specs.Intervention("blocks.0.hook_resid_pre", specs.PatchFrom(0)),),
        ),
    )
    src = forward(
        arch_runner, specs.ForwardSpec(prompts=(source,), sources=(source,), captures=cap)
    )
    plain = forward(arch_runner, specs.ForwardSpec(prompts=(target,), captures=cap))
    assert torch.equal(patched.captures[0].values, src.captures[0].values)
    assert not torch.equal(patched.captures[0].values, plain.captures[0].values)


def test_steering_resid_post_adds_the_vector(arch_case: ArchCase, arch_runner: Any) -> None:
    """AddVector on blocks.0.hook_resid_post adds coeff * v everywhere and equals the hand edit."""
    d = arch_runner.adapter.dims
    model = arch_runner.adapter.model
    v = torch.randn(d.d_model, generator=torch.Generator().manual_seed(1))
    caps = (
        specs.Capture("blocks.0.hook_resid_post"),
        specs.Capture("blocks.1.hook_resid_pre"),
        specs.Capture("logits"),
    )
    plain = _by_site(_forward(arch_runner, PROMPTS[0], captures=caps))
    res = _forward(
        arch_runner,
        PROMPTS[0],
        captures=caps,
        interventions=(
            specs.Intervention("blocks.0.hook_resid_post", specs.AddVector(v, coeff=2.0)),
        ),
    )
    steered = _by_site(res)
    assert torch.equal(
        steered["blocks.0.hook_resid_post"], plain["blocks.0.hook_resid_post"] + 2.0 * v
    )
    assert torch.equal(steered["blocks.1.hook_resid_pre"], steered["blocks.0.hook_resid_post"])

    def add(mod: Any, args: tuple, out: Any) -> Any:
        h = out[0] if isinstance(out, tuple) else out
        h = h + 2.0 * v
        return (h, *out[1:]) if isinstance(out, tuple) else h

    with _hand_hook(model.get_submodule(arch_case.block.format(L=0)), add):
        want = _hf_logits(model, list(res.prompts[0].token_ids))
    assert torch.equal(steered["logits"], want)
    assert not torch.equal(steered["logits"], plain["logits"])


# --------------------------------------------------------------------------------------------------
# Norm sites: hook_normalized is before the gain and bias (TransformerLens's meaning)


def _gain_bias(arch_case: ArchCase, module: torch.nn.Module) -> tuple[torch.Tensor, Any]:
    """The norm's elementwise gain (``1 + w`` for offset norms) and bias, read off the HF module."""
    w = module.weight.detach()
    return (1.0 + w if arch_case.offset_norms else w), getattr(module, "bias", None)


def test_editing_hook_normalized_adds_through_the_gain(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """Adding v to blocks.1.ln1.hook_normalized changes the norm's output by gain * v: the edited
    pre-gain value gets the gain and bias. Equals the hand edit on the HF module (1e-5)."""
    d = arch_runner.adapter.dims
    model = arch_runner.adapter.model
    v = torch.randn(d.d_model, generator=torch.Generator().manual_seed(2))
    site = "blocks.1.ln1.hook_normalized"
    caps = (specs.Capture(site), specs.Capture("logits"))
    plain = _by_site(_forward(arch_runner, PROMPTS[0], captures=caps))
    res = _forward(
        arch_runner,
        PROMPTS[0],
        captures=caps,
        interventions=(specs.Intervention(site, specs.AddVector(v)),),
    )
    edited = _by_site(res)
    _close(site, edited[site], plain[site] + v)
    ln1 = model.get_submodule(arch_case.ln1.format(L=1))
    gain, _ = _gain_bias(arch_case, ln1)
    with _hand_hook(ln1, lambda mod, args, out: out + gain * v):
        want = _hf_logits(model, list(res.prompts[0].token_ids))
    _close("logits", edited["logits"], want)
    assert not torch.allclose(edited["logits"], plain["logits"], atol=1e-3)


def test_zeroing_ln_final_normalized_leaves_the_bias(arch_case: ArchCase, arch_runner: Any) -> None:
    """Zeroing ln_final.hook_normalized makes the final norm output its bias (0 without one): the
    unembedding then reads only the bias. Equals the hand edit on the HF module (1e-5)."""
    model = arch_runner.adapter.model
    res = _forward(
        arch_runner,
        PROMPTS[0],
        captures=(specs.Capture("logits"),),
        interventions=(specs.Intervention("ln_final.hook_normalized", specs.Zero()),),
    )
    ln_f = model.get_submodule(arch_case.ln_final)
    _, bias = _gain_bias(arch_case, ln_f)

    def to_bias(mod: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out) if bias is None else bias.detach().expand_as(out)

    with _hand_hook(ln_f, to_bias):
        want = _hf_logits(model, list(res.prompts[0].token_ids))
    _close("logits", res.captures[0].values[0], want)


def test_scaling_hook_scale_rescales_the_normalized_value(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """Doubling ln_final.hook_scale halves hook_normalized; the output is (out - bias) / 2 + bias."""
    model = arch_runner.adapter.model
    caps = (specs.Capture("ln_final.hook_normalized"), specs.Capture("logits"))
    plain = _by_site(_forward(arch_runner, PROMPTS[0], captures=caps))
    res = _forward(
        arch_runner,
        PROMPTS[0],
        captures=caps,
        interventions=(specs.Intervention("ln_final.hook_scale", specs.Scale(2.0)),),
    )
    edited = _by_site(res)
    _close(
        "ln_final.hook_normalized",
        edited["ln_final.hook_normalized"],
        plain["ln_final.hook_normalized"] / 2,
    )
    ln_f = model.get_submodule(arch_case.ln_final)
    _, bias = _gain_bias(arch_case, ln_f)

    def halve(mod: Any, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out / 2 if bias is None else (out - bias) / 2 + bias

    with _hand_hook(ln_f, halve):
        want = _hf_logits(model, list(res.prompts[0].token_ids))
    _close("logits", edited["logits"], want)


def test_gradient_at_hook_normalized_leaves_logits_bit_identical(
    arch_case: ArchCase, arch_runner: Any
) -> None:
    """Differentiating with respect to ln_final.hook_normalized (no edit) keeps the logits bit for
    bit those of the HF model, and the gradient is the gain times d logit / d norm output."""
    batch = arch_runner.tokens.make_batch([specs.Prompt(text=PROMPTS[0])])
    planner = arch_runner.planner(batch)
    site = "ln_final.hook_normalized"
    planner.plan.grad_sites.add(site)
    out = arch_runner.run(batch, planner.plan, grad=True)
    model = arch_runner.adapter.model
    ids = batch.rows[0]
    assert torch.equal(out.logits[0].detach(), _hf_logits(model, ids))
    top = int(out.logits[0, -1].argmax())
    (got,) = torch.autograd.grad(out.logits[0, -1, top], out.ctx.graph[site])

    ln_f = model.get_submodule(arch_case.ln_final)
    gain, _ = _gain_bias(arch_case, ln_f)
    leaf: dict[str, torch.Tensor] = {}

    def make_leaf(mod: Any, args: tuple, o: torch.Tensor) -> torch.Tensor:
        leaf["y"] = o.detach().requires_grad_()
        return leaf["y"]

    with torch.enable_grad(), _hand_hook(ln_f, make_leaf):
        logits = model(input_ids=torch.tensor([ids])).logits
        (d_out,) = torch.autograd.grad(logits[0, -1, top], leaf["y"])
    assert got.abs().sum() > 0
    _close("d logit / d ln_final.hook_normalized", got, d_out * gain)


def test_backward_edit_of_hook_normalized_leaves_the_forward_bit_identical(
    arch_runner: Any,
) -> None:
    """A backward-pass Scale(2) on ln_final.hook_normalized doubles d logit / d hook_embed (every
    path to the logits crosses it) and leaves the logits bit for bit as they were."""
    batch = arch_runner.tokens.make_batch([specs.Prompt(text=PROMPTS[0])])

    def run(*ivs: specs.Intervention) -> tuple[torch.Tensor, torch.Tensor]:
        planner = arch_runner.planner(batch)
        for iv in ivs:
            planner.add_intervention(iv, [0])
        planner.plan.grad_sites.add("hook_embed")
        out = arch_runner.run(batch, planner.plan, grad=True)
        (g,) = torch.autograd.grad(out.logits[0, -1, 5], [out.ctx.graph["hook_embed"]])
        return out.logits.detach(), g

    logits, g = run()
    iv = specs.Intervention("ln_final.hook_normalized", specs.Scale(2.0), pass_=specs.Pass.BACKWARD)
    logits2, g2 = run(iv)
    assert torch.equal(logits, logits2)
    assert g.abs().max() > 1e-2
    # g flows through the HF norm module, g2 through the derived sites: fp32 rounding apart
    torch.testing.assert_close(g2, 2 * g, atol=1e-5, rtol=1e-4)


def test_sae_on_hook_normalized_reads_the_pre_gain_value(arch_loaded: Any) -> None:
    """An SAE on blocks.0.ln1.hook_normalized reads the pre-gain value; reading its latents leaves
    logits bit-identical, and a splice (reconstruction + error) moves them by <= 1e-5."""
    from tdb_core.runner import ModelRunner
    from tdb_core.sae import ReluArch, SaeConfig, build_sae

    runner = ModelRunner(arch_loaded)
    d_model = runner.schema.dims.d_model
    g = torch.Generator().manual_seed(0)
    site = "blocks.0.ln1.hook_normalized"
    sae = build_sae(
        SaeConfig(d_in=d_model, d_sae=48, architecture=ReluArch(), site=site),
        {
            "W_enc": torch.randn(d_model, 48, generator=g),
            "b_enc": torch.zeros(48),
            "W_dec": torch.randn(48, d_model, generator=g) * 0.1,
            "b_dec": torch.zeros(d_model),
        },
    )
    runner.saes.attach("n", sae, "memory")

    def run(*ivs: specs.Intervention, caps: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        return _by_site(
            _forward(
                runner,
                PROMPTS[0],
                captures=(specs.Capture("logits"), *(specs.Capture(c) for c in caps)),
                interventions=ivs,
            )
        )

    plain = run(caps=(site,))
    read = run(caps=("sae.n.hook_sae_input", "sae.n.hook_sae_acts_post"))
    assert torch.equal(read["logits"], plain["logits"])
    assert torch.equal(read["sae.n.hook_sae_input"], plain[site])
    spliced = run(specs.Intervention("sae.n.hook_sae_acts_post", specs.Scale(1.0)))
    torch.testing.assert_close(spliced["logits"], plain["logits"], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Unsupported architectures


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_unsupported_architecture_is_refused_naming_the_supported_ones(
    family: str, tmp_path: Any
) -> None:
    """A model whose architecture has no adapter is refused before loading, listing the adapters."""
    from transformers import BertConfig, T5Config

    import adapters

    if family == "bert":
        cfg = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            architectures=["BertForMaskedLM"],
        )
    else:
        cfg = T5Config(
            vocab_size=50,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            architectures=["T5ForConditionalGeneration"],
        )
    cfg.save_pretrained(tmp_path)
    with pytest.raises(InvalidArgumentError) as err:
        adapters.load_model("x", str(tmp_path))
    message = str(err.value)
    assert cfg.architectures[0] in message and "not supported" in message
    for name in (
        "GPT2LMHeadModel",
        "GPTNeoXForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Gemma2ForCausalLM",
        "PhiForCausalLM",
    ):
        assert name in message
    assert adapters.supported_architectures() == sorted(adapters.supported_architectures())
