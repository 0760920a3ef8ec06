"""SaeService over a real channel: list, encode, decode, load at runtime, bad files."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from tdb_client import TdbClient, TdbClientError, losses
from tdb_client import interventions as iv
from tdb_core import specs
from tdb_core.ops.attribute import LogitDiffLoss
from tdb_core.ops.forward import forward
from tdb_core.runner import ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, build_sae, save_sae

PROMPT = "When Mary and John went to the store, John gave a drink to"


def make_sae(d_in=64, d_sae=80, site="blocks.1.hook_resid_pre", seed=0):
    g = torch.Generator().manual_seed(seed)
    return build_sae(
        SaeConfig(d_in=d_in, d_sae=d_sae, architecture=ReluArch(), site=site),
        {
            "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3,
            "b_enc": torch.zeros(d_sae),
            "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.1,
            "b_dec": torch.zeros(d_in),
        },
    )


@pytest.fixture(scope="module")
def sae_service(tiny_loaded, tmp_path_factory):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    root = tmp_path_factory.mktemp("saes")
    save_sae(make_sae(seed=3), root / "good")
    (root / "bad").mkdir()
    (root / "bad" / "cfg.json").write_text("{not json")
    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("res1", make_sae(), "memory")
    svc = build_server(Settings(port=0, sae_root=str(root)), ModelRegistry([runner]))
    yield svc, runner
    svc.stop(0)


@pytest.fixture()
def sclient(sae_service):
    with TdbClient(f"127.0.0.1:{sae_service[0].port}") as c:
        yield c


def test_list_and_model_info_report_saes(sclient):
    """ListSaes and GetModelInfo report the SAE, its site and the sites it adds."""
    (info,) = sclient.list_saes()
    assert (info.id, info.site, info.kind, info.d_in, info.d_sae) == (
        "res1",
        "blocks.1.hook_resid_pre",
        "relu",
        64,
        80,
    )
    mi = sclient.model_info()
    assert mi.saes[0].id == "res1" and mi.site("sae.res1.hook_sae_acts_post").sizes == (-1, 80)


def test_encode_prompts_and_activations(sclient, sae_service):
    """Encode of prompts equals encode() of the captured site; activations in give the same."""
    _, runner = sae_service
    out = sclient.forward(PROMPT, capture=["blocks.1.hook_resid_pre"])
    x = out.activations["blocks.1.hook_resid_pre"][0]
    z = runner.saes.get("res1").sae.encode(torch.tensor(x)).numpy()
    enc = sclient.encode("res1", PROMPT, top_k=5, dense=True)
    np.testing.assert_allclose(enc.dense[0], z, atol=1e-6)
    np.testing.assert_allclose(enc.top_values[0], np.sort(z, -1)[:, ::-1][:, :5], atol=1e-6)
    np.testing.assert_array_equal(enc.l0[0], (z > 0).sum(-1))
    raw = sclient.encode("res1", activations=x, top_k=5)
    np.testing.assert_allclose(raw.top_values[0], enc.top_values[0], atol=1e-5)
    assert 0 < enc.mean_l0 <= 80 and enc.explained_variance <= 1


def test_decode_and_latent_interventions(sclient, sae_service):
    """Decode is b_dec + z W_dec; Forward can zero a latent through the splice."""
    _, runner = sae_service
    z = np.zeros((2, 80), np.float32)
    z[0, 3] = 2.0
    vec = sclient.decode("res1", z)
    np.testing.assert_allclose(
        vec[0], 2.0 * runner.saes.get("res1").sae.W_dec[3].detach().numpy(), atol=1e-6
    )
    out = sclient.forward(
        PROMPT,
        capture=["sae.res1.hook_sae_acts_post"],
        interventions=[iv.zero("sae.res1.hook_sae_acts_post[pos=-1]")],
    )
    assert np.all(out.activations["sae.res1.hook_sae_acts_post"][0, -1] == 0)


def test_gradients_at_sae_sites_over_the_wire(sclient, sae_service):
    """Forward's gradient captures at an SAE's sites come back as computed in process (which
    tests/unit/core/test_sae_gradients.py checks against an independent splice)."""
    runner = sae_service[1]
    sites = [f"sae.res1.{h}" for h in ("hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_error")]
    got = sclient.forward(PROMPT, loss=losses.logit_diff(" Mary", " John"), grad=sites)
    t, d = (runner.tokens.single_token(w) for w in (" Mary", " John"))
    want = forward(
        runner,
        specs.ForwardSpec(
            prompts=(specs.Prompt(text=PROMPT),),
            loss=LogitDiffLoss((t,), (d,)),
            grad_captures=tuple(specs.Capture(s) for s in sites),
        ),
    )
    assert got.loss_values == pytest.approx(list(want.loss_values), abs=1e-6)
    for c in want.grad_captures:
        assert float(c.values.abs().max()) > 0, c.site
        np.testing.assert_array_equal(got.grads[c.site], c.values.numpy())


def test_load_sae_at_runtime_and_bad_files(sclient):
    """LoadSae attaches an SAE under --sae-root; bad files and paths get clear errors and the
    server keeps serving."""
    info = sclient.load_sae("res2", "good", site="blocks.0.hook_resid_post")
    assert info.site == "blocks.0.hook_resid_post"
    cases = [
        ("bad", None, grpc.StatusCode.INVALID_ARGUMENT, "cfg.json"),
        ("missing", None, grpc.StatusCode.NOT_FOUND, "no SAE"),
        ("../../etc", None, grpc.StatusCode.INVALID_ARGUMENT, "outside"),
        ("good", "blocks.0.mlp.hook_post", grpc.StatusCode.INVALID_ARGUMENT, "d_in=64"),
    ]
    for path, site, code, text in cases:
        with pytest.raises(TdbClientError) as e:
            sclient.load_sae("x", path, site=site)
        assert e.value.code == code and text in e.value.details, e.value
    assert [s.id for s in sclient.list_saes()] == ["res1", "res2"]
    with pytest.raises(TdbClientError) as e:
        sclient.encode("nope", PROMPT)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_load_sae_disabled_without_root(client):
    """Without --sae-root, LoadSae is FAILED_PRECONDITION."""
    with pytest.raises(TdbClientError) as e:
        client.load_sae("x", "anything")
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_latent_trace_with_integrated_gradients(tiny_loaded):
    """Integrated gradients of a latent trace when a second SAE reads the same site after the
    traced one: its latents do not reach the trace, so they get zero attribution instead of an
    internal error (found by the fuzzer)."""
    from tdb_core import specs
    from tdb_core.ops.attribute import AttributeSpec, LatentTrace, attribute

    runner = ModelRunner(tiny_loaded)
    runner.saes.attach("res1", make_sae(), "memory")
    runner.saes.attach("res2", make_sae(seed=5), "memory")
    res = attribute(
        runner,
        AttributeSpec(
            specs.Prompt(token_ids=(1, 2, 3, 4, 5)), LatentTrace("res1", 4), top_k=3, ig_steps=1
        ),
    )
    assert res.rows
