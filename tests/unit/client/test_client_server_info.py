"""ServerInfo.model(name): a model the server lacks is a KeyError that names the ones it has."""

from __future__ import annotations

import pytest

from tdb_client import ServerInfo, UnknownModelError
from tdb_client.types import ModelCapabilities


def _info() -> ServerInfo:
    fields = dict.fromkeys(ModelCapabilities.__dataclass_fields__)
    model = ModelCapabilities(**(fields | {"name": "toy-gpt2"}))
    return ServerInfo("0", {}, (model,), "toy-gpt2", {}, {}, {})


def test_unknown_model_lists_models_and_suggests():
    """`info.model("gpt2")` on the default server: the message lists toy-gpt2 and suggests it;
    it is still a KeyError."""
    with pytest.raises(KeyError) as caught:
        _info().model("gpt2")
    assert isinstance(caught.value, UnknownModelError)
    assert str(caught.value) == (
        "the server has no model 'gpt2'; did you mean 'toy-gpt2'? (models: toy-gpt2)"
    )
    assert _info().model().name == _info().model("toy-gpt2").name == "toy-gpt2"
