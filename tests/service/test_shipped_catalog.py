"""The toy model's shipped explanations join the catalog only when that model is served."""

from __future__ import annotations

import adapters
from services.registry import ModelRegistry
from services.server import build_explain_setup
from services.settings import Settings
from tdb_core.runner import ModelRunner
from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME


def test_shipped_explanations_only_with_the_toy_model(tmp_path, tiny_runner) -> None:
    settings = Settings(explanations_db=str(tmp_path / "e.sqlite"))
    toy = ModelRunner(adapters.load_model(TOY_MODEL_NAME, str(TOY_MODEL_DIR)))
    with_toy = build_explain_setup(settings, ModelRegistry([toy])).catalog
    listed = with_toy.list(model=TOY_MODEL_NAME, node_key_prefix="blocks.0.mlp.hook_post")
    assert listed and all(e.model == TOY_MODEL_NAME and e.method == "baseline" for e in listed)
    assert with_toy.list(model=TOY_MODEL_NAME, node_key_prefix="sae.toy-res.")
    without = build_explain_setup(settings, ModelRegistry([tiny_runner])).catalog
    assert without.list() == []
