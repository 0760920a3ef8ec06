"""The prompt cache over a real server: the --cache-mb flag (and TDB_CACHE_MB), repeated Forward
calls answered from the cache with the same bytes, and its Prometheus series."""

from __future__ import annotations

import argparse
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tdb_core.errors import InvalidArgumentError
from tdb_core.runner import ModelRunner
from tests.service.conftest import LIMITS


def _settings(argv: list[str]):
    from services.settings import add_serve_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return settings_from_args(p.parse_args(argv))


def test_cache_flag_and_environment(monkeypatch):
    """--cache-mb sets the budget in MiB, TDB_CACHE_MB is its default, 0 (the default) is off,
    and a negative size is refused."""
    monkeypatch.delenv("TDB_CACHE_MB", raising=False)
    assert _settings([]).cache_bytes == 0
    assert _settings(["--cache-mb", "8"]).cache_bytes == 8 * 2**20
    monkeypatch.setenv("TDB_CACHE_MB", "1.5")
    assert _settings([]).cache_bytes == int(1.5 * 2**20)
    with pytest.raises(InvalidArgumentError, match="--cache-mb"):
        _settings(["--cache-mb", "-1"])


def test_repeated_forward_is_a_hit_with_the_same_bytes_and_metrics_count_it(tiny_loaded):
    """With a cache, the second identical Forward is answered from it (same arrays, bit for bit)
    and /metrics reports one hit, one miss, one entry and its bytes within the budget."""
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings
    from tdb_client import TdbClient

    runner = ModelRunner(tiny_loaded, LIMITS)
    svc = build_server(
        Settings(port=0, metrics_port=0, limits=LIMITS, cache_bytes=16 * 2**20),
        ModelRegistry([runner]),
    )
    try:
        assert runner.cache is not None and svc.metrics is not None
        with TdbClient(f"127.0.0.1:{svc.port}", timeout=30) as c:
            sites = ["blocks.0.mlp.hook_post", "blocks.1.attn.hook_pattern"]
            a = c.forward("When Mary and John went", capture=sites, top_k=3)
            b = c.forward("When Mary and John went", capture=sites, top_k=3)
        for s in sites:
            assert a.activations[s].tobytes() == b.activations[s].tobytes()
            assert np.array_equal(a.positions[s], b.positions[s])
        assert a.top_logits == b.top_logits
        text = urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics.port}/metrics", timeout=10)
        got = {
            s.name: s.value
            for fam in text_string_to_metric_families(text.read().decode())
            for s in fam.samples
            if s.name.startswith("tdb_prompt_cache")
        }
        assert got["tdb_prompt_cache_hits_total"] == 1
        assert got["tdb_prompt_cache_misses_total"] == 1
        assert got["tdb_prompt_cache_entries"] == 1
        assert 0 < got["tdb_prompt_cache_bytes"] <= got["tdb_prompt_cache_max_bytes"]
        assert got["tdb_prompt_cache_max_bytes"] == 16 * 2**20
    finally:
        svc.stop(0)
