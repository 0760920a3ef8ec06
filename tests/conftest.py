"""Shared fixtures: tiny models built locally, loaded through the ordinary adapter path."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# servers and CLIs under test keep their explanation catalogs out of the user's home
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="tdb-test-data-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny import save_tiny_gpt2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny GPT-2 (2 layers, d_model 64, 4 heads) saved with save_pretrained."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_gpt2_dir):
    import adapters

    return adapters.load_model("tiny", str(tiny_gpt2_dir))


@pytest.fixture(scope="session")
def tiny_runner(tiny_loaded):
    from tdb_core.runner import ModelRunner

    return ModelRunner(tiny_loaded)


@pytest.fixture(scope="session")
def toy_runner():
    """A ModelRunner serving the shipped toy model (tdb_core/toy), as `tdb serve` does."""
    import adapters
    from tdb_core.runner import ModelRunner
    from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME

    return ModelRunner(adapters.load_model(TOY_MODEL_NAME, str(TOY_MODEL_DIR)))
