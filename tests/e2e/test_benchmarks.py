"""Benchmarks run end to end at toy sizes and print one JSON object last (figures not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_explain_benchmark_mines_the_same_records_in_one_pass() -> None:
    """Many nodes in one pass give exactly the records of one node per pass."""
    res = _run("explain", "--nodes", "3", "--docs", "24")
    assert res["benchmark"] == "explain" and res["nodes"] == 3 and res["same_records"] is True
    assert res["one_pass_s"] > 0 and res["one_node_per_pass_s"] > 0


def test_unknown_benchmark_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "usage: python -m benchmarks" in out.stderr


def test_grpcweb_benchmark_compares_both_paths() -> None:
    """The gRPC-Web benchmark runs both paths on the same capture (values checked equal inside)
    and reports their throughputs and ratios."""
    res = _run("grpcweb", "--mib", "1", "--repeats", "1")
    assert res["benchmark"] == "grpcweb" and res["mib"] == 1.0 and res["target_ratio"] == 0.5
    assert res["native_mb_s"] > 0 and res["grpcweb_mb_s"] > 0 and res["ratio"] > 0


def test_gpu_benchmark_says_it_skipped_without_cuda() -> None:
    """Without CUDA the GPU benchmark measures nothing: it exits 0 with a JSON saying it
    skipped and why (this project's test machines have no GPU)."""
    import torch

    if torch.cuda.is_available():
        return  # the real run is `python -m benchmarks gpu` itself
    res = _run("gpu")
    assert res["benchmark"] == "gpu" and res["skipped"] is True and "CUDA" in res["reason"]


@pytest.mark.slow
def test_gpu_benchmark_code_runs_on_the_cpu() -> None:
    """The GPU benchmark's measuring code, run on the CPU at the tiny shape, reports every
    figure for each dtype asked."""
    res = _run(
        "gpu",
        "--device",
        "cpu",
        "--size",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "8",
        "--table-seq",
        "8",
        "--dtypes",
        "float32,bfloat16",
        "--repeats",
        "1",
    )
    assert res["skipped"] is False and set(res["results"]) == {"float32", "bfloat16"}
    for r in res["results"].values():
        assert r["plain_tokens_per_s"] > 0 and r["capture_tokens_per_s"] > 0
        assert r["table_ratio_seq8"] > 0 and r["peak_capture_mib"] is None


@pytest.mark.slow
def test_latency_benchmark_drives_the_click_path_and_the_cache() -> None:
    """The interactive-latency benchmark serves the toy model, times each kind of click, and
    measures a cached Forward against an uncached one (the warm-up call a miss, the next a hit)."""
    res = _run("latency", "--clicks", "2", "--cache-seq", "8", "--cache-repeats", "1")
    assert res["benchmark"] == "latency" and res["clicks"] == 2
    for k in ("node_table", "ablation", "node_page"):
        assert 0 < res[f"{k}_p50_ms"] <= res[f"{k}_p95_ms"]
    assert res["cache_hits"] == 1 and res["cache_misses"] == 1 and res["cache_speedup"] > 0


@pytest.mark.slow
def test_gradients_benchmark_checks_and_compares() -> None:
    """The gradients benchmark checks its gradients against the anchor and reports ratios."""
    res = _run("gradients", "--size", "tiny", "--seq", "8", "--repeats", "1")
    assert res["benchmark"] == "gradients" and res["sites"] == 2 and res["target_ratio"] == 1.1
    assert res["max_rel_diff"] <= 1e-5 and res["ratio"] > 0 and res["ratio_vs_eager_anchor"] > 0


@pytest.mark.slow
def test_atp_benchmark_reports_time_and_rank_correlation() -> None:
    """The AtP benchmark times both methods and reports Spearman's rank correlation."""
    res = _run("atp", "--n", "2", "--sites", "attn.hook_z:head")
    assert res["benchmark"] == "atp" and res["prompts"] == 2
    assert res["ratio_exact_vs_attribution"] > 0
    assert -1 <= res["attn.hook_z:head"]["spearman_pooled"] <= 1
