"""Helpers to run a server for benchmarks: in this process, or in a child process (as a real
client and server are), forked after the model is built."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
from collections.abc import Iterator

from services.registry import ModelRegistry
from services.server import Service, build_server
from services.settings import Settings
from tdb_core.runner import ModelRunner

BIG_LIMITS = dict(max_tokens_per_prompt=4096, max_prompts=1024, max_response_bytes=2**40)


@contextlib.contextmanager
def serving(*runners: ModelRunner, http: bool = False) -> Iterator[Service]:
    """Serve on free ports; ``http`` also turns the HTTP (gRPC-Web) port on."""
    from services.logs import configure_logging

    configure_logging("json", "warning")
    svc = build_server(
        Settings(host="127.0.0.1", port=0, http_port=0 if http else None),
        ModelRegistry(list(runners)),
    )
    try:
        yield svc
    finally:
        svc.stop(0)


def _serve_child(runner: ModelRunner, port_out, stop, http: bool) -> None:
    with serving(runner, http=http) as svc:
        port_out.send((svc.port, svc.http_port))
        stop.wait()


@dataclasses.dataclass(frozen=True)
class ChildServer:
    port: int
    http_port: int | None = None


@contextlib.contextmanager
def serving_in_child(runner: ModelRunner, http: bool = False) -> Iterator[ChildServer]:
    """Serve ``runner`` from a forked child process (``.port`` as :func:`serving`'s). Call before
    this process creates any gRPC channel (gRPC does not survive a fork)."""
    ctx = multiprocessing.get_context("fork")
    port_in, port_out = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    child = ctx.Process(target=_serve_child, args=(runner, port_out, stop, http), daemon=True)
    child.start()
    try:
        if not port_in.poll(120):
            raise RuntimeError("benchmark server did not start")
        port, http_port = port_in.recv()
        yield ChildServer(int(port), http_port)
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
