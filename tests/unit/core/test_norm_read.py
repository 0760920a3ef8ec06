"""A norm's read of ``hook_scale`` and ``hook_normalized``: the fused kernels agree with the
formulas, and a torch without the fused RMS norm (or without a kernel for the device) falls back
to the formulas."""

from __future__ import annotations

import pytest
import torch

import tdb_core.adapter as adapter_mod
from tdb_core.adapter import Norm

KINDS = ("layernorm", "rmsnorm", "rmsnorm_offset")


@pytest.mark.parametrize("kind", KINDS)
def test_fused_read_equals_the_formulas(kind: str) -> None:
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(0)) * 4 + 1
    norm = Norm(kind, 1e-5, torch.randn(32), None)
    scale, normalized = norm.read(x)
    want_scale = norm.scale(x)
    assert scale.shape == want_scale.shape == (3, 7, 1)
    torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(normalized, norm.normalize(x, want_scale), rtol=1e-5, atol=1e-6)
    x64 = x.double()
    centred = x64 - x64.mean(-1, keepdim=True) if kind == "layernorm" else x64
    ref = centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(normalized.double(), ref, rtol=1e-5, atol=1e-6)


def _unavailable(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError("no kernel for this backend")


@pytest.mark.parametrize("fused", [None, _unavailable], ids=["absent", "no-kernel"])
def test_rms_read_falls_back_to_the_formulas(
    monkeypatch: pytest.MonkeyPatch, fused: object
) -> None:
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    norm = Norm("rmsnorm", 1e-6, None, None)
    fused_scale, fused_normalized = norm.read(x)
    monkeypatch.setattr(adapter_mod, "_FUSED_RMS_NORM", fused)
    scale, normalized = norm.read(x)
    assert torch.equal(scale, norm.scale(x))
    assert torch.equal(normalized, norm.normalize(x, norm.scale(x)))
    torch.testing.assert_close(scale, fused_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(normalized, fused_normalized, rtol=1e-5, atol=1e-6)
