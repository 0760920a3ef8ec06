"""Gradient captures on every architecture: d(loss)/d(site) equals autograd on an independent
computation of the same model.

The independent computation is the float64 reference forward of ``references.py`` (written from
the state dict and the architecture's published math, sharing nothing with the adapters or the hook
engine), run with the state dict's tensors requiring gradients so that every recorded site is a
tensor of its graph; ``torch.autograd.grad`` of the same loss with respect to each recorded site is
the expected gradient. Gradients from the served model (fp32) must match within 1e-5 relative to the
largest value of each site's gradient.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.errors import InvalidArgumentError
from tdb_core.ops import attribute as A
from tdb_core.ops.forward import forward
from tdb_core.schema import site_name
from tests.unit.adapters import references as R
from tests.unit.adapters.archs import ArchCase

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The quick brown fox"]
TARGET, DISTRACTOR = (5, 9), (7,)


def _grad_forward(
    runner: Any, loss: A.Loss, sites: list[str], *texts: str, freeze: bool = False
) -> specs.ForwardResult:
    return forward(
        runner,
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=t) for t in texts),
            captures=(specs.Capture("logits"),),
            loss=loss,
            grad_captures=tuple(specs.Capture(s) for s in sites),
            freeze_norm_scale=freeze,
        ),
    )


def _reference_grads(
    case: ArchCase,
    model: Any,
    ids: list[int],
    loss_of: Any,
    sites: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[float, dict[str, torch.Tensor]]:
    """The reference forward in float64 with a graph, and autograd of ``loss_of(acts)``."""
    with monkeypatch.context() as m:
        m.setattr(
            R,
            "_state",
            lambda mdl: {k: v.double().requires_grad_() for k, v in mdl.state_dict().items()},
        )
        acts = case.reference(model, ids)
    loss = loss_of(acts)
    got = torch.autograd.grad(loss, [acts[s] for s in sites], allow_unused=True)
    grads = {
        s: (g if g is not None else torch.zeros_like(acts[s])).detach()
        for s, g in zip(sites, got, strict=True)
    }
    for s in sites:  # what the gradient of a norm's scale is a sum of (see _assert_grad_close)
        if s.endswith(".hook_scale"):
            n = s.removesuffix("hook_scale") + "hook_normalized"
            normalized, scale = acts[n].detach(), acts[s].detach()
            grads[s + ".terms"] = (grads[n] * normalized).abs().sum(-1, keepdim=True) / scale
    return float(loss.detach()), grads


def _assert_grad_close(
    site: str, got: torch.Tensor, want: torch.Tensor, terms: torch.Tensor | None = None
) -> None:
    """Within 1e-5 of the largest |value| of the expected gradient (absolute 1e-9 floor).

    The gradient of a norm's scale is a sum over d_model of terms that cancel,
    ``-sum_i g_i normalized_i / scale`` (g the gradient at ``hook_normalized``); its rounding is
    relative to the size of those terms, ``terms``, which then set the scale.
    """
    assert got.shape == want.shape, f"{site}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = float(want.abs().max() if terms is None else terms.max())
    err = float((got.double() - want).abs().max())
    assert err <= 1e-5 * scale + 1e-9, f"{site}: max error {err:.3e} vs largest {scale:.3e}"


def _sites_up_to(runner: Any, reads: str) -> list[str]:
    at = runner.schema.location(reads)
    return [s.name for s in runner.schema.sites if runner.schema.location(s.name) <= at]


def _cases(n_layers: int, d_model: int) -> list[tuple[str, A.Loss, Any, str]]:
    """(name, loss, loss from reference acts (ids length T), site the loss reads)."""
    last = n_layers - 1
    vec = torch.randn(d_model, generator=torch.Generator().manual_seed(3))

    def logit_diff(acts: R.Acts) -> torch.Tensor:
        lg = acts["logits"][-1]
        return lg[list(TARGET)].mean() - lg[list(DISTRACTOR)].mean()

    def log_prob(acts: R.Acts) -> torch.Tensor:
        return acts["logits"][-2].log_softmax(-1)[list(TARGET)].logsumexp(-1)

    return [
        ("logit_diff", A.LogitDiffLoss(TARGET, DISTRACTOR), logit_diff, "logits"),
        ("log_prob", A.LogProbLoss(TARGET, position=-2), log_prob, "logits"),
        (
            "neuron",
            A.NeuronTrace(last, 3, position=-2),
            lambda acts: acts[site_name("mlp.hook_pre", last)][-2, 3],
            site_name("mlp.hook_pre", last),
        ),
        (
            "head_qk",
            A.HeadTrace(last, 2, query_position=-1, key_position=-3),  # inside sliding windows
            lambda acts: acts[site_name("attn.hook_attn_scores", last)][2, -1, -3],
            site_name("attn.hook_attn_scores", last),
        ),
        (
            "direction",
            A.DirectionLoss(site_name("hook_resid_pre", last), vec, position=4),
            lambda acts: acts[site_name("hook_resid_pre", last)][4] @ vec.double(),
            site_name("hook_resid_pre", last),
        ),
    ]


@pytest.mark.parametrize("which", ["logit_diff", "log_prob", "neuron", "head_qk", "direction"])
def test_gradient_of_every_site_matches_autograd_on_the_reference(
    which: str, arch_case: ArchCase, arch_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each loss, d(loss)/d(site) of every site up to the loss's node equals autograd on the
    float64 reference (1e-5 of the largest value), for both prompts of a padded batch; the loss
    values agree and the logits are bit-identical to a pass without gradients."""
    dims = arch_runner.schema.dims
    name, loss, loss_of, reads = next(
        c for c in _cases(dims.n_layers, dims.d_model) if c[0] == which
    )
    sites = _sites_up_to(arch_runner, reads)
    res = _grad_forward(arch_runner, loss, sites, *PROMPTS)
    plain = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=t) for t in PROMPTS),
            captures=(specs.Capture("logits"),),
        ),
    )
    assert torch.equal(res.captures[0].values, plain.captures[0].values)
    assert torch.equal(res.logits_at, plain.logits_at)
    by_site = {c.site: c for c in res.grad_captures}
    assert list(by_site) == sites
    for row, prompt in enumerate(res.prompts):
        ids = list(prompt.token_ids)
        n = len(ids)
        want_loss, want = _reference_grads(
            arch_case, arch_runner.adapter.model, ids, loss_of, sites, monkeypatch
        )
        assert abs(res.loss_values[row] - want_loss) <= 1e-5 * max(1.0, abs(want_loss)), name
        for s in sites:
            got = by_site[s].values[row]
            square = "attn_scores" in s or "pattern" in s
            got = got[:, :n, :n] if square else got[:n]
            _assert_grad_close(f"{name} {s} row {row}", got, want[s], want.get(s + ".terms"))


def test_frozen_final_norm_gradient_is_the_analytic_one(arch_runner: Any) -> None:
    """With the final norm's scale held constant, d(logit diff)/d(final residual) at the loss
    position is gain * u / scale (u centred over d_model for LayerNorm), u the target-minus-
    distractor unembedding direction (through the soft-cap's derivative where there is one)."""
    adapter = arch_runner.adapter
    last = site_name("hook_resid_post", arch_runner.schema.dims.n_layers - 1)
    res = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[0]),),
            captures=(specs.Capture("ln_final.hook_scale", positions=(-1,)),),
            loss=A.LogitDiffLoss(TARGET, DISTRACTOR),
            grad_captures=(specs.Capture(last),),
            freeze_norm_scale=True,
        ),
    )
    w_u = adapter.W_U().double()  # [d_model, vocab]
    weights = torch.zeros(w_u.shape[1], dtype=torch.float64)
    weights[list(TARGET)] += 1 / len(TARGET)
    weights[list(DISTRACTOR)] -= 1 / len(DISTRACTOR)
    cap = adapter.logit_softcap()
    if cap is not None:  # d(cap tanh(u / cap))/du = 1 - (logit / cap)^2
        weights = weights * (1 - (res.logits_at[0, -1].double() / cap) ** 2)
    norm = adapter.final_norm()
    u = (w_u @ weights) * norm.gain().double()
    if norm.kind == "layernorm":
        u = u - u.mean()
    scale = float(res.captures[0].values[0, 0, 0])
    g = res.grad_captures[0].values[0]
    _assert_grad_close("frozen ln_final", g[-1], u / scale)
    assert bool((g[:-1] == 0).all())


def test_every_loss_reads_what_attribute_reads(arch_runner: Any) -> None:
    """A Forward loss equals Attribute's loss value for each loss spec (same definitions)."""
    L = arch_runner.schema.dims.n_layers - 1
    d = arch_runner.schema.dims.d_model
    losses: list[A.Loss] = [
        A.LogitDiffLoss(TARGET, DISTRACTOR),
        A.LogProbLoss(TARGET),
        A.NeuronTrace(L, 3, -2),
        A.HeadTrace(L, 1, -1, -2, A.Through.QK),
        A.HeadTrace(L, 1, -1, None, A.Through.V),
        A.HeadTrace(L, 1, -1, -2, A.Through.V),
        A.DirectionLoss(site_name("hook_resid_post", 0), torch.ones(d), 3),
    ]
    for loss in losses:
        fw = _grad_forward(arch_runner, loss, [], PROMPTS[0], freeze=True)
        at = A.attribute(
            arch_runner,
            A.AttributeSpec(specs.Prompt(text=PROMPTS[0]), loss, top_k=1, node_tokens=0),
        )
        assert abs(fw.loss_values[0] - at.loss_values[0]) <= 1e-5 * max(1, abs(at.loss_values[0]))


def test_query_trace_cuts_the_key_side(arch_runner: Any) -> None:
    """Tracing a score through Q cuts the key side: upstream of the layer the gradient at the key
    position vanishes (the query side reads only the query position), while the QK trace's does
    not; the gradient at the queries is the QK trace's. A key outside a sliding window is refused.
    """
    L = arch_runner.schema.dims.n_layers - 1
    q, resid = site_name("attn.hook_q", L), site_name("hook_resid_pre", L)
    qk = _grad_forward(arch_runner, A.HeadTrace(L, 0, -1, -2, A.Through.QK), [q, resid], PROMPTS[0])
    only_q = _grad_forward(
        arch_runner, A.HeadTrace(L, 0, -1, -2, A.Through.Q), [q, resid], PROMPTS[0]
    )
    assert float(qk.grad_captures[1].values[0, -2].abs().max()) > 0
    assert bool((only_q.grad_captures[1].values[0, :-1] == 0).all())
    assert torch.equal(only_q.grad_captures[0].values, qk.grad_captures[0].values)
    scores = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[0]),),
            captures=(specs.Capture("blocks.*.attn.hook_attn_scores", positions=(-1,)),),
        ),
    )
    for layer, c in enumerate(scores.captures):
        if bool(torch.isinf(c.values[0, 0, 0, 0])):  # key 0 is outside this layer's window
            with pytest.raises(InvalidArgumentError, match="sliding window"):
                _grad_forward(arch_runner, A.HeadTrace(layer, 0, -1, 0), [], PROMPTS[0])


def test_grad_capture_reductions_are_those_of_captures(arch_runner: Any) -> None:
    """Positions, units, top-k and dtype reduce a gradient exactly as they reduce an activation."""
    site = site_name("mlp.hook_post", 0)
    loss = A.LogitDiffLoss(TARGET, DISTRACTOR)
    full = _grad_forward(arch_runner, loss, [site], PROMPTS[0]).grad_captures[0]
    res = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[0]),),
            loss=loss,
            freeze_norm_scale=False,
            grad_captures=(
                specs.Capture(site, positions=(2, -1), units=(1, 4, 6)),
                specs.Capture(site, top_k=specs.TopK(3, specs.TopKMode.ABS)),
                specs.Capture(site, dtype=torch.float16),
            ),
        ),
    )
    sel, top, half = res.grad_captures
    n = full.values.shape[1]
    assert torch.equal(sel.values[0], full.values[0][[2, n - 1]][:, [1, 4, 6]])
    assert sel.positions.tolist() == [[2, n - 1]]
    _, idx = full.values[0].abs().topk(3, dim=-1)
    assert torch.equal(top.indices[0], idx)
    assert torch.equal(top.values[0], full.values[0].gather(-1, idx))
    assert half.values.dtype == torch.float16
    assert torch.equal(half.values, full.values.half())


def test_bad_gradient_requests_are_refused(arch_runner: Any) -> None:
    """Gradients without a loss, sites or positions after the loss (zero by causality) and bad
    losses are clear errors, before any work."""
    L = arch_runner.schema.dims.n_layers - 1
    neuron = A.NeuronTrace(0, 1, position=3)
    with pytest.raises(InvalidArgumentError, match="need a loss"):
        forward(
            arch_runner,
            specs.ForwardSpec(
                prompts=(specs.Prompt(text=PROMPTS[1]),),
                grad_captures=(specs.Capture("blocks.0.hook_resid_pre"),),
            ),
        )
    with pytest.raises(InvalidArgumentError, match="zero by causality"):
        _grad_forward(arch_runner, neuron, [site_name("hook_resid_post", L)], PROMPTS[1])
    with pytest.raises(InvalidArgumentError, match="zero by causality"):
        forward(
            arch_runner,
            specs.ForwardSpec(
                prompts=(specs.Prompt(text=PROMPTS[1]),),
                loss=neuron,
                grad_captures=(specs.Capture("blocks.0.hook_resid_pre", positions=(4,)),),
            ),
        )
    with pytest.raises(InvalidArgumentError, match="target and one distractor"):
        _grad_forward(arch_runner, A.LogitDiffLoss((), ()), [], PROMPTS[1])


def test_norm_sites_read_the_same_bits_when_differentiated(arch_runner: Any) -> None:
    """``hook_scale`` and ``hook_normalized`` come from one fused kernel when only read; when
    they are differentiated (free or frozen scale) their values must be those same bits, with
    gradients through the formulas (checked against autograd by the test above)."""
    sites = ["blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized", "ln_final.hook_normalized"]
    read = forward(
        arch_runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPTS[0]),),
            captures=tuple(specs.Capture(s) for s in sites),
        ),
    )
    for freeze in (False, True):
        res = forward(
            arch_runner,
            specs.ForwardSpec(
                prompts=(specs.Prompt(text=PROMPTS[0]),),
                captures=tuple(specs.Capture(s) for s in sites),
                loss=A.LogitDiffLoss(TARGET, DISTRACTOR),
                grad_captures=tuple(specs.Capture(s) for s in sites),
                freeze_norm_scale=freeze,
            ),
        )
        assert torch.equal(res.logits_at, read.logits_at)
        for a, b in zip(res.captures, read.captures, strict=True):
            assert torch.equal(a.values, b.values), (a.site, freeze)
        assert all(float(g.values.abs().max()) > 0 for g in res.grad_captures)
