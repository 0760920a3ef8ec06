"""The fused encoder (what Encode runs) equals the reference dense path for every kind:
``encode`` -> top-k of the dense latents -> L0 -> ``decode``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core.sae import InputNorm, TopKArch

from .test_sae_model import ARCHS, D_SAE, K, make

KINDS = [
    ("relu", None),
    ("topk", None),
    ("topk", TopKArch(k=K, rescale_acts_by_decoder_norm=True)),
    ("jumprelu", None),
    ("gated", None),
]


@pytest.mark.parametrize(
    ("kind", "arch"), KINDS, ids=["relu", "topk", "topk-rescale", "jumprelu", "gated"]
)
@pytest.mark.parametrize("norm", list(InputNorm))
@pytest.mark.parametrize("k", [0, 1, 3, K, K + 4, D_SAE])
def test_fused_encode_equals_the_dense_reference(
    kind: str, arch: Any, norm: InputNorm, k: int, saelens_tensors: Any, inputs: torch.Tensor
) -> None:
    sae, _ = make(kind, saelens_tensors, arch=arch or ARCHS[kind], input_norm=norm)
    z = sae.encode(inputs)  # [3, 7, d_sae], the reference
    want_v, want_i = z.topk(k, dim=-1)
    stats = sae.input_stats(inputs)
    code = sae.encode_sparse(inputs, k)
    assert code.values.shape == want_v.shape and code.indices.dtype == torch.int64
    assert torch.equal(code.values, want_v)  # the same numbers, bit for bit
    assert torch.equal(code.l0, (z != 0).sum(-1))
    active = want_v != 0  # where the value is 0 any latent with z == 0 is a right answer
    assert torch.equal(code.indices[active], want_i[active])
    assert torch.all(z.gather(-1, code.indices) == code.values)
    assert all(len(set(row.tolist())) == k for row in code.indices.flatten(0, -2))
    torch.testing.assert_close(code.reconstruction, sae.decode(z, stats), atol=1e-5, rtol=1e-5)


def test_decode_sparse_equals_decode_of_the_dense_latents(saelens_tensors: Any) -> None:
    """decode_sparse(values, indices) == decode(z) with z zero except at those latents."""
    sae, _ = make("relu", saelens_tensors, input_norm=InputNorm.LAYER_NORM)
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(D_SAE, generator=g)[:6] for _ in range(10)])  # [10, 6]
    vals = torch.randn(10, 6, generator=g)
    z = torch.zeros(10, D_SAE).scatter(-1, idx, vals)
    stats = sae.input_stats(torch.randn(10, 12, generator=g))
    torch.testing.assert_close(sae.decode_sparse(vals, idx, stats), sae.decode(z, stats))
    empty = sae.decode_sparse(vals[:, :0], idx[:, :0])
    assert torch.equal(empty, sae.b_dec.expand(10, -1))
