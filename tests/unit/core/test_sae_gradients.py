"""Gradients at the sites of an attached SAE equal autograd on an independent splice.

The independent computation runs the HF model itself (a float64 copy) with a plain forward hook
at the SAE's site that splices the SAE in, written here from the SAE's own tensors (``W_enc``,
``b_enc``, ``W_dec``, ``b_dec``, and the input normalization's formula) without the project's SAE
code or hook engine:

    x       the site's value                           sae.ID.hook_sae_input
    pre     normalize(x) - b_dec) @ W_enc + b_enc      sae.ID.hook_sae_acts_pre
    z       ReLU(pre), or ReLU of the k largest pre    sae.ID.hook_sae_acts_post
    recon   unnormalize(z @ W_dec + b_dec)             sae.ID.hook_sae_recons
    error   x - recon                                  sae.ID.hook_sae_error
    the site's value becomes recon + error

The latents are their own node (README, "Latents are nodes"): ``pre`` and ``error`` are leaves
holding their values, so d(loss)/d(pre) = act'(pre) * d(loss)/d(z) and d(loss)/d(z) is the
decoder path's alone; d(loss)/d(recon) = d(loss)/d(error) = the gradient at the site. The
gradient at the SAE's input is that of the model without the SAE (upstream nodes keep their own
gradient), computed in a second pass whose hook only makes the site's value a leaf.

Gradients from the served model (fp32) must be within 1e-5 of the largest |value| of each site's
expected gradient (1e-9 floor), as in tests/unit/adapters/test_gradients.py.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tdb_core import specs
from tdb_core.ops import attribute as A
from tdb_core.ops.forward import forward
from tdb_core.runner import ModelRunner
from tdb_core.sae import InputNorm, ReluArch, SaeConfig, SparseAutoencoder, TopKArch, build_sae

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The quick brown fox"]
TARGET, DISTRACTOR = (5, 9), (7,)
HOOKS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts_post",
    "hook_sae_recons",
    "hook_sae_error",
)
LN_EPS = 1e-5  # the layer-norm input normalization's epsilon (OpenAI v5, SAELens layer_norm)


@dataclass(frozen=True)
class Case:
    """An SAE kind at a site of the tiny GPT-2, and the HF module whose input that site is."""

    name: str
    site: str
    d_in: int
    topk: int | None  # k of a TopK SAE, None for ReLU
    input_norm: InputNorm
    module: Callable[[Any], torch.nn.Module]  # HF model -> the module reading the site


CASES = {
    "relu": Case(
        "relu",
        "blocks.1.hook_resid_pre",
        64,
        None,
        InputNorm.NONE,
        lambda hf: hf.transformer.h[1],
    ),
    "topk": Case(
        "topk",
        "blocks.0.mlp.hook_post",
        256,
        8,
        InputNorm.NONE,
        lambda hf: hf.transformer.h[0].mlp.c_proj,
    ),
    "topk_ln": Case(  # OpenAI v5: TopK with a layer-normalized input
        "topk_ln",
        "blocks.1.hook_resid_pre",
        64,
        8,
        InputNorm.LAYER_NORM,
        lambda hf: hf.transformer.h[1],
    ),
}


def _make_sae(case: Case, d_sae: int = 96, seed: int = 0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    d_in = case.d_in
    arch = ReluArch() if case.topk is None else TopKArch(k=case.topk)
    cfg = SaeConfig(d_in=d_in, d_sae=d_sae, architecture=arch, input_norm=case.input_norm)
    return build_sae(
        cfg,
        {
            "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
            "b_enc": torch.randn(d_sae, generator=g) * 0.05,
            "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.1,
            "b_dec": torch.randn(d_in, generator=g) * 0.05,
        },
    )


@pytest.fixture(scope="module", params=list(CASES))
def sae_case(request: pytest.FixtureRequest, tiny_loaded: Any) -> Iterator[tuple[Case, Any]]:
    """A runner with one SAE attached as ``s`` (so every spliced SAE is the one under test)."""
    case = CASES[request.param]
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("s", _make_sae(case), "memory", site=case.site)
    yield case, runner


@pytest.fixture(scope="module")
def hf64(tiny_loaded: Any) -> Any:
    """A float64 copy of the HF model the runners serve (the reference computes in float64)."""
    return copy.deepcopy(tiny_loaded.adapter.model).double().eval()


# --------------------------------------------------------------------------------------------------
# The independent computation


class RefSae:
    """The SAE's math in plain torch from its own tensors (float64)."""

    def __init__(self, case: Case, sae: SparseAutoencoder) -> None:
        t = {k: v.detach().double() for k, v in sae.named_tensors().items()}
        self.W_enc, self.b_enc, self.W_dec, self.b_dec = (
            t["W_enc"],
            t["b_enc"],
            t["W_dec"],
            t["b_dec"],
        )
        self.case = case

    def stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.case.input_norm is InputNorm.NONE:
            return None
        mu = x.mean(-1, keepdim=True)
        return mu, (x - mu).std(-1, keepdim=True)  # unbiased, as OpenAI's and SAELens's LN

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        st = self.stats(x)
        x_n = x if st is None else (x - st[0]) / (st[1] + LN_EPS)
        return (x_n - self.b_dec) @ self.W_enc + self.b_enc

    def act(self, pre: torch.Tensor) -> torch.Tensor:
        if self.case.topk is None:
            return torch.relu(pre)
        keep = torch.zeros_like(pre, dtype=torch.bool)
        keep.scatter_(-1, pre.topk(self.case.topk, dim=-1).indices, True)
        return torch.relu(pre) * keep

    def decode(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = z @ self.W_dec + self.b_dec
        st = self.stats(x.detach())  # the input row's statistics, constants of the decode
        return out if st is None else out * st[1] + st[0]


Rec = dict[str, torch.Tensor]
LossOf = Callable[[torch.Tensor, Rec], torch.Tensor]  # (logits [T, vocab], recorded) -> scalar


def _hf_run(
    hf: Any, case: Case, ids: list[int], splice: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, Rec]:
    """One HF forward with ``splice`` replacing the site's value (the first argument of the
    module reading it), recording what the losses read: layer 1's c_fc output (mlp.hook_pre),
    its q and k (from c_attn) and block 1's output (hook_resid_post)."""
    rec: Rec = {}
    blk = hf.transformer.h[1]

    def pre_hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (splice(args[0]), *args[1:])

    def keep(name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, out: Any) -> None:
            rec[name] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [
        case.module(hf).register_forward_pre_hook(pre_hook),
        blk.mlp.c_fc.register_forward_hook(keep("mlp_pre")),
        blk.attn.c_attn.register_forward_hook(keep("qkv")),
        blk.register_forward_hook(keep("resid_post")),
    ]
    try:
        logits = hf(input_ids=torch.tensor([ids])).logits[0]
    finally:
        for h in handles:
            h.remove()
    return logits, {k: v[0] for k, v in rec.items()}


def reference_grads(
    hf: Any, case: Case, sae: SparseAutoencoder, ids: list[int], loss_of: LossOf, hooks: list[str]
) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and d(loss)/d(each SAE site in ``hooks``) by autograd on the HF model with the SAE
    spliced in by hand (see the module docstring). Values are [T, width] of one prompt."""
    ref = RefSae(case, sae)
    got: Rec = {}

    def splice(x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(*x.shape[:2], -1).detach().requires_grad_()  # hook_sae_input
        got["hook_sae_input"] = rows
        pre = ref.pre(rows).detach().requires_grad_()  # the latents' own node
        z = ref.act(pre)
        recon = ref.decode(z, rows)
        error = (rows - recon).detach().requires_grad_()  # held at its value
        got.update(hook_sae_acts_pre=pre, hook_sae_acts_post=z, hook_sae_recons=recon)
        got["hook_sae_error"] = error
        return (recon + error).reshape(x.shape)

    logits, rec = _hf_run(hf, case, ids, splice)
    rec["pre"] = got["hook_sae_acts_pre"][0]
    loss = loss_of(logits, rec)
    inner = [h for h in hooks if h != "hook_sae_input"]
    grads = torch.autograd.grad(loss, [got[h] for h in inner], allow_unused=True) if inner else ()
    out = {
        h: (g if g is not None else torch.zeros_like(got[h]))[0].detach()
        for h, g in zip(inner, grads, strict=True)
    }
    if "hook_sae_input" in hooks:  # upstream of the SAE: the model's own gradient at the site
        plain: Rec = {}

        def leaf(x: torch.Tensor) -> torch.Tensor:
            rows = x.reshape(*x.shape[:2], -1).detach().requires_grad_()
            plain["x"] = rows
            return rows.reshape(x.shape)

        logits0, rec0 = _hf_run(hf, case, ids, leaf)
        rec0["pre"] = ref.pre(plain["x"])[0]  # a latent trace reads the SAE on the plain input
        (g,) = torch.autograd.grad(loss_of(logits0, rec0), [plain["x"]])
        out["hook_sae_input"] = g[0].detach()
    return float(loss.detach()), out


# --------------------------------------------------------------------------------------------------
# Losses: the project's spec and the same loss on the reference's tensors


def _head_score(rec: Rec, head: int, q: int, k: int) -> torch.Tensor:
    """Layer 1's attention score of ``head`` (query ``q``, key ``k``) from c_attn's output."""
    d_model = rec["qkv"].shape[-1] // 3
    d_head = d_model // 4
    qs, ks = rec["qkv"][:, :d_model], rec["qkv"][:, d_model : 2 * d_model]
    sl = slice(head * d_head, (head + 1) * d_head)
    return (qs[q, sl] @ ks[k, sl]) / math.sqrt(d_head)


def _losses(sae_d: int) -> dict[str, tuple[A.Loss, LossOf, bool]]:
    """name -> (loss spec, the loss on reference tensors, whether it reads after every SAE
    site — a latent trace reads acts_pre, so only the SAE's input comes before it)."""
    vec = torch.randn(64, generator=torch.Generator().manual_seed(3)).double()
    latent = sae_d // 3
    return {
        "logit_diff": (
            A.LogitDiffLoss(TARGET, DISTRACTOR),
            lambda lg, r: lg[-1, list(TARGET)].mean() - lg[-1, list(DISTRACTOR)].mean(),
            True,
        ),
        "log_prob": (
            A.LogProbLoss(TARGET, position=-2),
            lambda lg, r: lg[-2].log_softmax(-1)[list(TARGET)].logsumexp(-1),
            True,
        ),
        "neuron": (A.NeuronTrace(1, 3, position=-2), lambda lg, r: r["mlp_pre"][-2, 3], True),
        "head_qk": (
            A.HeadTrace(1, 2, query_position=-1, key_position=-3),
            lambda lg, r: _head_score(r, 2, -1, -3),
            True,
        ),
        "direction": (
            A.DirectionLoss("blocks.1.hook_resid_post", vec.float(), position=4),
            lambda lg, r: r["resid_post"][4] @ vec,
            True,
        ),
        "latent": (
            A.LatentTrace("s", latent, position=-2),
            lambda lg, r: r["pre"][-2, latent],
            False,
        ),
    }


def _assert_close(what: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Within 1e-5 of the largest |value| of the expected gradient (1e-9 floor); returns the
    error relative to that largest value."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    scale = float(want.abs().max())
    err = float((got.double() - want).abs().max())
    assert err <= 1e-5 * scale + 1e-9, f"{what}: max error {err:.3e} vs largest {scale:.3e}"
    return err / max(scale, 1e-30)


def _grad_forward(runner: Any, loss: A.Loss, sites: list[str]) -> specs.ForwardResult:
    return forward(
        runner,
        specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=t) for t in PROMPTS),
            loss=loss,
            grad_captures=tuple(specs.Capture(s) for s in sites),
            freeze_norm_scale=False,  # plain autograd
        ),
    )


def _check(
    runner: Any,
    hf: Any,
    case: Case,
    loss: A.Loss,
    loss_of: LossOf,
    hooks: list[str],
    what: str,
) -> None:
    """The project's gradients at ``hooks`` of SAE ``s`` for both prompts of a padded batch (and
    the loss values) equal the reference's; each expected gradient is non-zero."""
    sae = runner.saes.get("s").sae
    res = _grad_forward(runner, loss, [f"sae.s.{h}" for h in hooks])
    by_site = {c.site: c for c in res.grad_captures}
    for row, prompt in enumerate(res.prompts):
        ids = list(prompt.token_ids)
        want_loss, want = reference_grads(hf, case, sae, ids, loss_of, hooks)
        assert res.loss_values[row] == pytest.approx(want_loss, abs=1e-5 * max(1, abs(want_loss)))
        for h in hooks:
            assert float(want[h].abs().max()) > 1e-4, f"{what} {h}: the expected gradient is 0"
            got = by_site[f"sae.s.{h}"].values[row][: len(ids)]
            _assert_close(f"{what} {h} row {row}", got, want[h])


# --------------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize(
    "which", ["logit_diff", "log_prob", "neuron", "head_qk", "direction", "latent"]
)
def test_gradients_at_every_sae_site_match_an_independent_splice(
    which: str, sae_case: tuple[Case, Any], hf64: Any
) -> None:
    """For each loss, d(loss)/d(every SAE site before the loss's node), all asked in one pass,
    equals autograd on the HF model with the SAE spliced in by hand."""
    case, runner = sae_case
    loss, loss_of, after_all = _losses(runner.saes.get("s").sae.d_sae)[which]
    hooks = list(HOOKS) if after_all else ["hook_sae_input"]
    _check(runner, hf64, case, loss, loss_of, hooks, f"{case.name} {which}")


@pytest.mark.parametrize("hook", HOOKS)
def test_each_sae_site_alone_has_its_gradient(
    hook: str, sae_case: tuple[Case, Any], hf64: Any
) -> None:
    """A gradient capture of one SAE site, asked alone, is that site's gradient too (the splice
    must not depend on the latents being asked for as well)."""
    case, runner = sae_case
    loss, loss_of, _ = _losses(runner.saes.get("s").sae.d_sae)["logit_diff"]
    _check(runner, hf64, case, loss, loss_of, [hook], f"{case.name} alone")


def test_sae_gradients_leave_logits_bit_identical(sae_case: tuple[Case, Any]) -> None:
    """Differentiating SAE sites splices the SAE in, yet the logits stay those of the model
    without it to within one rounding (recon + error = x), and the gradient pass's logits are
    bit-identical whichever SAE site is differentiated."""
    runner = sae_case[1]

    def logits(*grad: str) -> torch.Tensor:
        spec = specs.ForwardSpec(
            prompts=tuple(specs.Prompt(text=t) for t in PROMPTS),
            captures=(specs.Capture("logits"),),
            loss=A.LogitDiffLoss(TARGET, DISTRACTOR) if grad else None,
            grad_captures=tuple(specs.Capture(f"sae.s.{h}") for h in grad),
        )
        return forward(runner, spec).captures[0].values

    plain = logits()
    first = logits(HOOKS[0])
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=0)
    for h in HOOKS[1:]:
        assert torch.equal(logits(h), first), h


def test_latent_total_effect_column_matches_the_independent_splice(
    sae_case: tuple[Case, Any], hf64: Any
) -> None:
    """Attribute's total_effect of each SAE latent at each position (activation x gradient, the
    node table's column) equals z * d(loss)/d(z) of the independent splice, and the table's rows
    carry those values."""
    case, runner = sae_case
    loss, loss_of, _ = _losses(runner.saes.get("s").sae.d_sae)["logit_diff"]
    spec = A.AttributeSpec(
        prompt=specs.Prompt(text=PROMPTS[0]),
        loss=loss,
        freeze_norm_scale=False,
        families=("sae_latent",),
        top_k=5,
    )
    cols = A.compute_columns(runner, spec)
    fam = cols.family("sae_latent")
    table = A.attribute(runner, spec)
    ids = list(table.prompts[0].token_ids)
    sae = runner.saes.get("s").sae
    _, want = reference_grads(hf64, case, sae, ids, loss_of, ["hook_sae_acts_post"])
    ref = RefSae(case, sae)
    z = ref.act(ref.pre(_site_values(hf64, case, ids)))
    expected = z * want["hook_sae_acts_post"]
    assert float(expected.abs().max()) > 1e-4
    _assert_close(f"{case.name} total_effect", fam.columns["total_effect"][0], expected)
    _assert_close(f"{case.name} activation", fam.columns["activation"][0], z)
    assert table.rows
    for r in table.rows:
        assert r.node.kind == "sae_latent"
        p, i = r.node.position, r.node.unit
        assert p is not None and i is not None
        assert r.values[0]["total_effect"] == pytest.approx(
            float(expected[p, i]), abs=1e-5 * float(expected.abs().max()) + 1e-9
        )


def _site_values(hf: Any, case: Case, ids: list[int]) -> torch.Tensor:
    """The SAE site's values [T, d_in] for one prompt, read by a hook on the HF model."""
    seen: Rec = {}

    def read(x: torch.Tensor) -> torch.Tensor:
        seen["x"] = x.detach().reshape(*x.shape[:2], -1)[0]
        return x

    _hf_run(hf, case, ids, read)
    return seen["x"]
