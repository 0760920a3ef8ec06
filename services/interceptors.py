"""The one interceptor: request ids, one log line per RPC, and errors mapped to status codes.

Error classes map to codes by class (``tdb_core.errors`` documents the tree). Device or host
out-of-memory becomes RESOURCE_EXHAUSTED and the server keeps serving. Anything else is a bug:
INTERNAL, logged with its traceback and the request id, which the message repeats so users can
report it. Messages are cut to :data:`MAX_DETAILS` characters, so a status always reaches the client
(gRPC refuses metadata over 16 KiB, which would turn any code into RESOURCE_EXHAUSTED).

Load shedding (:class:`InFlight`): at most ``--workers`` RPCs run at once; one more is refused at
once with UNAVAILABLE (retryable) instead of waiting in gRPC's unbounded executor queue. Health and
reflection are exempt and run on threads kept for them, so probes answer under any load.

With bearer tokens, the token is checked from the call's metadata before the request body is
deserialized: an unauthenticated request is never parsed.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import torch

from services.auth import CallMetadata
from services.logs import get_logger
from tdb_core import cancel, errors

STATUS_BY_ERROR: tuple[tuple[type[errors.TdbError], grpc.StatusCode], ...] = (
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
)

#: Longest status message sent (the user's values inside are already quoted short; this bounds
#: everything else, e.g. a library's message that echoes its input).
MAX_DETAILS = 2000
#: Method paths (prefixes) never refused by load shedding: probes and discovery.
UNLIMITED_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

_RPC_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tdb_rpc_fields", default=None
)


def note(**fields: Any) -> None:
    """Add fields (model, tokens, ...) to the current RPC's log line."""
    current = _RPC_FIELDS.get()
    if current is not None:
        current.update(fields)


def _stopper(context: grpc.ServicerContext) -> Callable[[], None]:
    """The cancellation check for a request: its deadline passed or its client went away."""

    def check() -> None:
        if context.is_active():
            return
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise errors.DeadlineExceededError("the deadline passed before the work finished")
        raise errors.CancelledError("the client cancelled the request")

    return check


def _cut(message: str) -> str:
    if len(message) <= MAX_DETAILS:
        return message
    return f"{message[: MAX_DETAILS - 40]}... ({len(message)} characters)"


def _host_out_of_memory(exc: BaseException) -> bool:
    """A failed host (CPU) allocation: MemoryError, or torch's allocator refusing."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)[:500] if isinstance(exc, RuntimeError) else ""
    return "DefaultCPUAllocator: can't allocate memory" in text or "not enough memory" in text


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status for an expected error, or None if ``exc`` is a bug."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return code, _cut(exc.message)
    if isinstance(exc, NotImplementedError):  # a generated servicer base method (e.g. Health.List)
        return grpc.StatusCode.UNIMPLEMENTED, "this server does not implement this method"
    if isinstance(exc, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the device ran out of memory serving this request; send fewer or shorter prompts "
            "or capture less",
        )
    if _host_out_of_memory(exc):
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server ran out of memory serving this request; send fewer or shorter prompts "
            "or capture less (--memory-budget-mb bounds what one request may use)",
        )
    return None


class InFlight:
    """At most ``limit`` RPCs running at once; one more is UNAVAILABLE at once (retryable).

    A call whose client has gone (cancelled, or past its deadline) no longer counts once the limit
    is reached: it is only finishing up (its work stops at its next cancellation check), and
    counting it would refuse a live client because of a dead one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._calls: set[grpc.ServicerContext] = set()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._calls)

    def enter(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            if len(self._calls) >= self.limit:
                live = sum(1 for c in self._calls if c.is_active())
                if live >= self.limit:
                    raise errors.UnavailableError(
                        f"the server is busy: {live} requests are running, its limit "
                        f"(--workers) is {self.limit}; retry later"
                    )
            self._calls.add(context)

    def leave(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._calls.discard(context)


class _MetadataOnly:
    """The part of a ServicerContext an authorizer reads, from a call's details: the token is
    checked before the request body is deserialized."""

    def __init__(self, details: grpc.HandlerCallDetails) -> None:
        self._metadata = details.invocation_metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata


class _NonBlocking:
    """A non-blocking unary-stream behavior: grpc reads ``experimental_non_blocking`` and
    ``experimental_thread_pool`` off it and calls it as ``behavior(request, context, send)``."""

    experimental_non_blocking = True

    def __init__(
        self,
        fn: Callable[[Any, grpc.ServicerContext, Callable[[Any], None]], None],
        thread_pool: futures.ThreadPoolExecutor | None,
    ) -> None:
        self._fn = fn
        self.experimental_thread_pool = thread_pool

    def __call__(
        self, request: Any, context: grpc.ServicerContext, send: Callable[[Any], None]
    ) -> None:
        self._fn(request, context, send)


class _Undecodable:
    """Stands in for a request whose bytes did not parse; the handler refuses it."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_NOT_PARSED = _Undecodable("refused before parsing")


def _discard(raw: bytes) -> Any:
    """The deserializer of a refused call: its bytes are never parsed (gRPC itself fails a call
    whose deserializer returns None, so a placeholder stands in)."""
    return _NOT_PARSED


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's malformed input
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return decode


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A response serializer that sends ``bytes`` as they are: streamed tensor chunks arrive
    already serialized (``convert.TensorSink.encoded_chunks``), written from the tensor's buffer."""
    if serialize is None:
        return None

    def serialize_or_pass(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return serialize_or_pass


def _valid(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgumentError(
            f"the request is not a valid protobuf message of this method's type ({request.reason}); "
            "send the serialized request message (strings must be UTF-8)"
        )
    return request


class ServiceInterceptor(grpc.ServerInterceptor):
    """Wraps every handler: request id, auth hook, error mapping, one log line."""

    def __init__(
        self,
        authorize: Callable[[str, CallMetadata], None] | None = None,
        on_done: Callable[[str, str, float, dict[str, Any]], None] | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        """``authorize(method, context)`` raises UnauthenticatedError to refuse a call;
        ``on_done(method, code_name, seconds, fields)`` sees every finished call with the fields
        of its log line (model, tokens, ...), e.g. to feed metrics; ``in_flight`` bounds the RPCs
        running at once (health and reflection exempt)."""
        self._log = get_logger("tdb.rpc")
        self._authorize = authorize
        self._on_done = on_done
        self._in_flight = in_flight

    def intercept_service(
        self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        # Undecodable request bytes (a broken client, invalid UTF-8 in a string) would make gRPC
        # itself answer INTERNAL; decode leniently and refuse them as INVALID_ARGUMENT instead.
        decode = _lenient(handler.request_deserializer)
        if self._authorize is not None:
            try:
                self._authorize(method, _MetadataOnly(details))
            except errors.UnauthenticatedError:
                # refused before the body is parsed; the handler answers UNAUTHENTICATED
                decode = _discard
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                return self._call(method, context, lambda: inner(_valid(request), context))

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=decode, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream
            if getattr(inner_stream, "experimental_non_blocking", False):
                return self._non_blocking_stream(method, inner_stream, handler, decode)

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                return self._call_stream(
                    method, context, lambda: inner_stream(_valid(request), context)
                )

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=decode,
                response_serializer=_passing_bytes(handler.response_serializer),
            )
        # Request-streaming handlers (server reflection) get the same auth, logging and mapping.
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return self._call(method, context, lambda: inner_su(map(_valid, requests), context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            def stream_stream(
                requests: Iterator[Any], context: grpc.ServicerContext
            ) -> Iterator[Any]:
                return self._call_stream(
                    method, context, lambda: inner_ss(map(_valid, requests), context)
                )

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _non_blocking_stream(
        self,
        method: str,
        inner: Callable[..., object],
        handler: grpc.RpcMethodHandler[Any, Any],
        decode: Callable[[bytes], Any] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A handler that answers through a callback (the health Watch): it returns at once and
        its responses are sent by whichever thread calls back, so an open stream holds no worker
        thread. Wrapping it as an iterator would pin one thread per watcher for the stream's
        life, and a few watchers (every client channel with gRPC health checking opens one)
        would starve the pool. Request id, auth, error mapping and the log line apply to its
        set-up. ``inner`` is ``handler.unary_stream``, called as ``inner(request, context, send)``
        (grpc's stubs know only the iterator form)."""

        def stream(
            request: Any, context: grpc.ServicerContext, send: Callable[[Any], None]
        ) -> None:
            self._call(method, context, lambda: inner(_valid(request), context, send))

        return grpc.unary_stream_rpc_method_handler(
            _NonBlocking(stream, getattr(inner, "experimental_thread_pool", None)),
            request_deserializer=decode,
            response_serializer=_passing_bytes(handler.response_serializer),
        )

    # -- helpers
    def _begin(self, method: str, context: grpc.ServicerContext) -> tuple[dict[str, Any], Any]:
        md = dict(context.invocation_metadata() or ())
        rid = md.get("x-request-id") or uuid.uuid4().hex[:16]
        fields: dict[str, Any] = {"request_id": rid, "method": method}
        token = _RPC_FIELDS.set(fields)
        context.set_trailing_metadata((("x-request-id", rid),))
        if self._authorize is not None:
            self._authorize(method, context)
        return fields, token

    def _limited(self, method: str, context: grpc.ServicerContext) -> bool:
        """Take a place among the RPCs in flight (UNAVAILABLE when none is left); whether one
        was taken (exempt methods take none)."""
        if self._in_flight is None or method.startswith(UNLIMITED_METHOD_PREFIXES):
            return False
        self._in_flight.enter(context)
        return True

    def _fail(self, exc: BaseException, fields: dict[str, Any]) -> tuple[grpc.StatusCode, str]:
        mapped = status_for(exc)
        if mapped is not None:
            return mapped
        self._log.exception("internal error", **fields)
        return (
            grpc.StatusCode.INTERNAL,
            f"internal error ({type(exc).__name__}); request id {fields['request_id']}",
        )

    def _end(self, fields: dict[str, Any], start: float, code: grpc.StatusCode) -> None:
        ms = (time.perf_counter() - start) * 1e3
        log = self._log.info if code in (grpc.StatusCode.OK,) else self._log.warning
        log("rpc", **fields, status=code.name, duration_ms=round(ms, 2))
        if self._on_done is not None:
            self._on_done(fields["method"], code.name, ms / 1e3, fields)

    def _call(self, method: str, context: grpc.ServicerContext, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        fields: dict[str, Any] = {"request_id": "-", "method": method}
        token = None
        failure: tuple[grpc.StatusCode, str] | None = None
        limited = False
        try:
            fields, token = self._begin(method, context)
            limited = self._limited(method, context)
            with cancel.scope(_stopper(context)):
                return fn()
        except Exception as exc:  # noqa: BLE001 - mapped by class below; bugs become INTERNAL
            failure = self._fail(exc, fields)
        finally:
            if limited:
                assert self._in_flight is not None
                self._in_flight.leave(context)
            self._end(fields, start, failure[0] if failure else grpc.StatusCode.OK)
            if token is not None:
                _RPC_FIELDS.reset(token)
        context.abort(*failure)

    def _call_stream(
        self, method: str, context: grpc.ServicerContext, fn: Callable[[], Iterator[Any]]
    ) -> Iterator[Any]:
        start = time.perf_counter()
        fields: dict[str, Any] = {"request_id": "-", "method": method}
        failure: tuple[grpc.StatusCode, str] | None = None
        limited = False
        try:
            fields, token = self._begin(method, context)
            try:
                limited = self._limited(method, context)
                with cancel.scope(_stopper(context)):
                    yield from fn()
            finally:
                if limited:
                    assert self._in_flight is not None
                    self._in_flight.leave(context)
                _RPC_FIELDS.reset(token)
        except GeneratorExit:
            failure = (grpc.StatusCode.CANCELLED, "cancelled")
            raise
        except Exception as exc:  # noqa: BLE001 - mapped by class below; bugs become INTERNAL
            failure = self._fail(exc, fields)
        finally:
            self._end(fields, start, failure[0] if failure else grpc.StatusCode.OK)
        if failure is not None:
            context.abort(*failure)
