"""SAEs on a CUDA device: same numbers as on CPU, and training runs there. Skipped without CUDA."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tdb_core.sae import SaeConfig, SaeKind, TopKArch, TrainConfig, build_sae, train_sae

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_encode_on_cuda_matches_cpu(saelens_tensors: Any, inputs: torch.Tensor) -> None:
    """A TopK SAE moved to CUDA gives the CPU latents and reconstruction (fp32, 1e-5)."""
    config = SaeConfig(d_in=12, d_sae=40, architecture=TopKArch(k=5))
    cpu = build_sae(config, saelens_tensors("topk"))
    z_cpu, recon_cpu = cpu(inputs)
    gpu = build_sae(config, saelens_tensors("topk")).to("cuda")
    z_gpu, recon_gpu = gpu(inputs.to("cuda"))
    assert z_gpu.device.type == "cuda"
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon_gpu.cpu(), recon_cpu, atol=1e-5, rtol=1e-5)


def test_training_on_cuda() -> None:
    """train_sae with device="cuda" trains there and returns a CUDA SAE with unit decoder rows."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 16, generator=g) * 2 + 1 for _ in range(20)]
    config = TrainConfig(
        kind=SaeKind.RELU,
        d_sae=32,
        steps=10,
        batch_size=64,
        init_rows=256,
        eval_rows=128,
        resample_every=5,
        dead_tokens_threshold=64,
        device="cuda",
    )
    result = train_sae(config, batches, progress=False)
    assert result.sae.device.type == "cuda"
    norms = result.sae.decoder_directions().norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
