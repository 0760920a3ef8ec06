"""Cooperative cancellation: the transport installs a check for the current request (deadline
passed, client gone); long work calls ``check()`` between steps and at every layer, so a
cancelled request stops early and frees its slot. tdb_core never sees gRPC itself."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

_CHECK: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "tdb_cancel_check", default=None
)


def check() -> None:
    """Raise CancelledError / DeadlineExceededError if the current request should stop."""
    fn = _CHECK.get()
    if fn is not None:
        fn()


def current() -> Callable[[], None] | None:
    return _CHECK.get()


@contextlib.contextmanager
def scope(fn: Callable[[], None] | None) -> Iterator[None]:
    """Install ``fn`` as the current request's check (None disables checks)."""
    token = _CHECK.set(fn)
    try:
        yield
    finally:
        _CHECK.reset(token)
