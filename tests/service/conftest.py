"""A real server on port 0 over a real channel, serving the tiny GPT-2 with small limits."""

from __future__ import annotations

import pytest

from tdb_core.runner import Limits, ModelRunner

LIMITS = Limits(max_tokens_per_prompt=48, max_prompts=4, max_response_bytes=2 * 2**20)


@pytest.fixture(scope="session")
def service(tiny_loaded):
    from services.registry import ModelRegistry
    from services.server import build_server
    from services.settings import Settings

    svc = build_server(
        Settings(host="127.0.0.1", port=0, limits=LIMITS),
        ModelRegistry([ModelRunner(tiny_loaded, LIMITS)]),
    )
    yield svc
    svc.stop(0)


@pytest.fixture()
def client(service):
    from tdb_client import TdbClient

    with TdbClient(f"127.0.0.1:{service.port}", timeout=30) as c:
        yield c
