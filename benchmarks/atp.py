"""Attribution patching vs exact patching on the toy model's IOI prompts: time and ranking.

    python -m benchmarks atp [--n 10] [--sites hook_resid_pre:position,attn.hook_z:head,...]

For each held-out IOI prompt of the toy model (corrupted by naming the indirect object in the
subject's second mention, so the logit difference IO - S flips), every site's sweep runs exactly
(one patched pass per cell) and by attribution patching (one clean forward, one corrupted forward
and backward). Reports the time ratio exact / attribution and Spearman's rank correlation between
the two grids, per prompt (mean, min) and pooled over prompts.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from benchmarks.common import emit
from tdb_core import specs
from tdb_core.ops.patch_sweep import Method, PatchSweepSpec, SweepBy, patch_sweep
from tdb_core.runner import ModelRunner


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation, ties given their average rank."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        x = x.double().flatten()
        order = torch.argsort(x)
        r = torch.empty_like(x)
        sx = x[order]
        i = 0
        while i < len(x):
            j = i
            while j + 1 < len(x) and sx[j + 1] == sx[i]:
                j += 1
            r[order[i : j + 1]] = (i + j) / 2
            i = j + 1
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks atp")
    p.add_argument("--n", type=int, default=10, help="held-out IOI prompts")
    p.add_argument(
        "--sites",
        default="hook_resid_pre:position,attn.hook_z:head,hook_attn_out:position,"
        "hook_mlp_out:position",
    )
    args = p.parse_args(argv)
    import adapters
    from tdb_core.toy import TOY_MODEL_DIR, TOY_MODEL_NAME, corpus

    runner = ModelRunner(adapters.load_model(TOY_MODEL_NAME, str(TOY_MODEL_DIR)))
    examples = [
        e
        for e in corpus.generate_task("ioi", args.n, seed=123, split="heldout")
        if isinstance(e, corpus.IOIExample)
    ]
    out: dict[str, object] = {"benchmark": "atp", "model": TOY_MODEL_NAME, "prompts": len(examples)}
    total = {"exact": 0.0, "attribution": 0.0}
    pooled_all: list[float] = []
    for item in args.sites.split(","):
        site, by = item.split(":")
        rhos, exact_all, atp_all = [], [], []
        for e in examples:
            k = e.prompt.rfind(e.s_name)
            corrupt = e.prompt[:k] + e.io_name + e.prompt[k + len(e.s_name) :]
            spec = PatchSweepSpec(
                specs.Prompt(text=e.prompt),
                specs.Prompt(text=corrupt),
                site,
                (runner.tokens.single_token(" " + e.io_name, "target"),),
                (runner.tokens.single_token(" " + e.s_name, "distractor"),),
                by=SweepBy(by),
            )
            start = time.perf_counter()
            exact = patch_sweep(runner, spec)
            total["exact"] += time.perf_counter() - start
            start = time.perf_counter()
            atp = patch_sweep(runner, replace(spec, method=Method.ATTRIBUTION))
            total["attribution"] += time.perf_counter() - start
            rhos.append(spearman(exact.recovered, atp.recovered))
            exact_all.append(exact.recovered.flatten())
            atp_all.append(atp.recovered.flatten())
        pooled = spearman(torch.cat(exact_all), torch.cat(atp_all))
        pooled_all.append(pooled)
        out[f"{site}:{by}"] = {
            "cells_per_prompt": int(exact_all[0].numel()),
            "spearman_pooled": round(pooled, 3),
            "spearman_mean": round(sum(rhos) / len(rhos), 3),
            "spearman_min": round(min(rhos), 3),
        }
    out["exact_s"] = round(total["exact"], 3)
    out["attribution_s"] = round(total["attribution"], 3)
    out["ratio_exact_vs_attribution"] = round(total["exact"] / total["attribution"], 2)
    out["spearman_pooled_min_over_sites"] = round(min(pooled_all), 3)
    emit(out)
    return 0
