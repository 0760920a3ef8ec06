"""Misspelled names get a "did you mean" from the server: sites (SAE sites included), models and
SAEs; a capture written as a bracketed selector is told how captures select."""

from __future__ import annotations

import pytest
import torch

from tdb_core import checks
from tdb_core.errors import NotFoundError
from tdb_core.runner import ModelRunner
from tdb_core.sae import ReluArch, SaeConfig, build_sae


@pytest.fixture(scope="module")
def schema(tiny_loaded):
    runner = ModelRunner(tiny_loaded)
    g = torch.Generator().manual_seed(0)
    sae = build_sae(
        SaeConfig(d_in=64, d_sae=32, architecture=ReluArch(), site="blocks.1.hook_resid_pre"),
        {
            "W_enc": torch.randn(64, 32, generator=g),
            "b_enc": torch.zeros(32),
            "W_dec": torch.randn(32, 64, generator=g),
            "b_dec": torch.zeros(64),
        },
    )
    runner.saes.attach("res1", sae, "memory")
    return runner.saes.schema


def _message(fn, *args) -> str:
    with pytest.raises(NotFoundError) as caught:
        fn(*args)
    return str(caught.value)


def test_misspelled_site_suggests_the_closest(schema):
    """`blocks.0.mlp.hook_pots` -> did you mean 'blocks.0.mlp.hook_post'; the list of site
    patterns includes the attached SAE's sites."""
    msg = _message(schema.resolve, "blocks.0.mlp.hook_pots")
    assert (
        "unknown hook site 'blocks.0.mlp.hook_pots'; did you mean 'blocks.0.mlp.hook_post'?" in msg
    )
    assert "sae.res1.hook_sae_acts_post" in msg


def test_misspelled_sae_site_suggests_it(schema):
    """A misspelled SAE site is suggested from the model's own sites."""
    msg = _message(schema.resolve, "sae.res1.hook_sae_acts_pots")
    assert "did you mean 'sae.res1.hook_sae_acts_post'?" in msg


def test_capture_with_brackets_says_captures_take_units_and_positions(schema):
    """A selector passed as a capture names the site and says how captures select."""
    msg = _message(schema.resolve, "blocks.0.attn.hook_z[head=0]")
    assert "matches no site of this model" in msg
    assert "'blocks.0.attn.hook_z'" in msg and "`units` and `positions`" in msg


def test_glob_that_matches_nothing_still_points_to_the_list(schema):
    msg = _message(schema.resolve, "blocks.*.nothing_like_it")
    assert msg.endswith("GetModelInfo lists the sites")


def test_lookup_suggests_models_and_saes():
    """checks.lookup (models, SAEs, datasets): available names, then the closest one."""
    with pytest.raises(NotFoundError) as caught:
        checks.lookup({"toy-gpt2": 1}, "gpt2", "model", "loaded")
    assert str(caught.value) == (
        "model 'gpt2' is not loaded; available: toy-gpt2; did you mean 'toy-gpt2'?"
    )
    with pytest.raises(NotFoundError) as caught:
        checks.lookup({"toy-gpt2": 1}, "nope", "model", "loaded")
    assert str(caught.value) == "model 'nope' is not loaded; available: toy-gpt2"
