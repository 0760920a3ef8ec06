"""Helpers to run a server in-process for benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from services.registry import ModelRegistry
from services.server import Service, build_server
from services.settings import Settings
from tdb_core.runner import ModelRunner

BIG_LIMITS = dict(max_tokens_per_prompt=4096, max_prompts=1024, max_response_bytes=2**40)


@contextlib.contextmanager
def serving(*runners: ModelRunner) -> Iterator[Service]:
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    svc = build_server(Settings(host="127.0.0.1", port=0), ModelRegistry(list(runners)))
    try:
        yield svc
    finally:
        svc.stop(0)
