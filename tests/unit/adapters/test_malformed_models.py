"""A model the adapter cannot wire (a customized HF class, a half-converted checkpoint) is refused
with FAILED_PRECONDITION naming the module and what is missing, not an AttributeError."""

from __future__ import annotations

import pytest
import torch

import adapters
from benchmarks.common import ByteTokenizer
from tdb_core.errors import FailedPreconditionError
from tests.tiny import tiny_gpt2


def test_blocks_that_are_not_a_module_list_are_refused() -> None:
    model = tiny_gpt2(256)
    model.transformer.h = torch.nn.Sequential(*model.transformer.h)
    with pytest.raises(FailedPreconditionError, match=r"Sequential module at 'transformer\.h'"):
        adapters.wrap_model("odd", model, ByteTokenizer())


def test_a_missing_weight_is_refused_when_it_is_read() -> None:
    model = tiny_gpt2(256)
    loaded = adapters.wrap_model("half", model, ByteTokenizer())
    c_proj = model.transformer.h[1].mlp.c_proj
    del c_proj.weight  # a parameter the checkpoint never filled
    c_proj.weight = None
    assert torch.equal(loaded.adapter.W_out(0), model.transformer.h[0].mlp.c_proj.weight)
    with pytest.raises(FailedPreconditionError, match=r"Conv1D module has no tensor 'weight'"):
        loaded.adapter.W_out(1)


def test_a_bias_that_is_not_a_tensor_is_refused() -> None:
    from adapters.base import module_bias

    layer = torch.nn.Linear(4, 4)
    assert module_bias(layer) is layer.bias
    assert module_bias(torch.nn.Linear(4, 4, bias=False)) is None
    del layer.bias
    layer.bias = 0.5  # what a hand-edited module might hold
    with pytest.raises(FailedPreconditionError, match="'bias' that is not a tensor"):
        module_bias(layer)
