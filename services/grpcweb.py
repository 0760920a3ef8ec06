"""gRPC-Web over HTTP/1.1 (and HTTP/2), translated in-process onto the real gRPC server.

Browsers cannot read HTTP/2 trailers, so gRPC-Web moves the status into a last, flagged frame of
the body (``PROTOCOL-WEB.md`` in grpc/grpc). :class:`GrpcWebGateway` is an ASGI callable for one
gRPC-Web POST: it checks the framing, then makes the *same* call on the server's own gRPC port
over a private local channel (a Unix socket in a 0700 directory), passing the request and
response messages through as bytes, never re-serialized. Every call therefore runs through the
one ServiceInterceptor and the real servicers exactly as a native call does: auth token, limits,
admission, request id, the log line, metrics and error mapping are the server's, not a copy.

Wire format (both directions: a 1-byte flag and a 4-byte big-endian length before each message):

    request   one frame, flag 0x00: the serialized request message
    response  frames flag 0x00, one per response message, then one frame flag 0x80 whose payload
              is the trailers as an HTTP/1 header block: ``grpc-status: 0\\r\\ngrpc-message: ...``
    error     before any message: a *trailers-only* response, grpc-status/grpc-message (and the
              trailing metadata) in the HTTP headers and an empty body

``application/grpc-web`` / ``application/grpc-web+proto`` carry the frames as they are;
``application/grpc-web-text`` / ``-text+proto`` base64-encode them (the response in one padded
base64 chunk per frame, as Envoy does). ``grpc-timeout`` becomes the call's deadline; request
headers become metadata (``-bin`` ones base64-decoded); the client going away cancels the call,
so the server's cancellation checks stop the work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from services.logs import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Content types this gateway speaks, and whether the body is base64 text.
CONTENT_TYPES = {
    "application/grpc-web": False,
    "application/grpc-web+proto": False,
    "application/grpc-web-text": True,
    "application/grpc-web-text+proto": True,
}
DATA_FLAG, COMPRESSED_FLAG, TRAILER_FLAG = 0x00, 0x01, 0x80
_HEADER = struct.Struct(">BI")

#: Request headers that describe the HTTP exchange, not the call: never passed on as metadata.
_NOT_METADATA = frozenset(
    {
        "host",
        "connection",
        "content-type",
        "content-length",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "accept",
        "accept-encoding",
        "accept-language",
        "origin",
        "referer",
        "cookie",
        "user-agent",
        "x-grpc-web",
        "cache-control",
        "pragma",
        "priority",
        "dnt",
    }
)
_NOT_METADATA_PREFIXES = ("grpc-", "sec-", "proxy-", "access-control-", ":")
#: gRPC metadata keys: lowercase letters, digits, ``-``, ``_`` and ``.``.
_METADATA_KEY = re.compile(rb"[0-9a-z_.\-]+")
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_TIMEOUT = re.compile(rb"(\d{1,8})([HMSmun])")
_TIMEOUT_UNIT_S = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_BASE64_CHUNK = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
#: Method paths: ``/package.Service/Method``.
METHOD_PATH = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")


class ClientGone(Exception):
    """The HTTP client disconnected before its request was read: there is no one to answer."""


class GrpcWebError(Exception):
    """A request refused before it reaches the server, with the status it gets."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


# -- framing --------------------------------------------------------------------------------------


def frame(payload: bytes, flags: int = DATA_FLAG) -> bytes:
    """One length-prefixed gRPC-Web frame."""
    return _HEADER.pack(flags, len(payload)) + payload


def encode_grpc_message(text: str) -> str:
    """``grpc-message`` percent-encoding: UTF-8, bytes outside printable ASCII (and ``%``) as %XX."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in text.encode("utf-8")
    )


def metadata_headers(metadata: Iterable[tuple[str, str | bytes]]) -> list[tuple[str, str]]:
    """gRPC metadata as header lines: ``-bin`` values base64-encoded, reserved keys dropped."""
    out = []
    for key, value in metadata:
        if key.startswith(("grpc-", ":")):
            continue
        if isinstance(value, bytes):
            text = base64.b64encode(value).decode("ascii")
        else:
            text = value
        out.append((key, text))
    return out


def trailer_block(code: grpc.StatusCode, message: str, metadata: list[tuple[str, str]]) -> bytes:
    """The trailers as an HTTP/1 header block, the payload of the 0x80 frame."""
    lines = [f"grpc-status: {code.value[0]}"]
    if message:
        lines.append(f"grpc-message: {encode_grpc_message(message)}")
    lines.extend(f"{k}: {v}" for k, v in metadata)
    return ("\r\n".join(lines) + "\r\n").encode("ascii", "replace")


def decode_text_body(body: bytes) -> bytes:
    """A ``grpc-web-text`` body: base64, possibly several padded chunks one after another."""
    body = b"".join(body.split())  # line breaks and spaces are not data
    try:
        if b"=" not in body.rstrip(b"="):
            return base64.b64decode(body, validate=True)
        out = bytearray()
        for m in _BASE64_CHUNK.finditer(body):
            if m.group():
                out += base64.b64decode(m.group(), validate=True)
        if sum(len(m.group()) for m in _BASE64_CHUNK.finditer(body)) != len(body):
            raise binascii.Error("characters outside the base64 alphabet")
        return bytes(out)
    except (binascii.Error, ValueError) as e:
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the application/grpc-web-text body is not valid base64 ({e})",
        ) from None


def parse_request_body(body: bytes, max_message_bytes: int) -> bytes:
    """The one request message in a gRPC-Web body, or a :class:`GrpcWebError` saying what is wrong."""
    if len(body) < _HEADER.size:
        what = "is empty" if not body else f"holds {len(body)} bytes"
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the gRPC-Web body {what}: expected one frame (1 flag byte, a 4-byte big-endian "
            "length, then the serialized request message)",
        )
    flags, length = _HEADER.unpack_from(body)
    if flags & COMPRESSED_FLAG:
        raise GrpcWebError(
            grpc.StatusCode.UNIMPLEMENTED,
            "compressed gRPC-Web messages are not supported; send the message uncompressed",
        )
    if flags != DATA_FLAG:
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request frame has flags 0x{flags:02x}; a request is one data frame (flags 0x00)",
        )
    if length > max_message_bytes:
        raise GrpcWebError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request message is {length} bytes; this server accepts at most "
            f"{max_message_bytes} (--max-request-mb)",
        )
    end = _HEADER.size + length
    if len(body) < end:
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the gRPC-Web frame is truncated: its length prefix says {length} bytes, the body "
            f"holds {len(body) - _HEADER.size} after the prefix",
        )
    if len(body) > end:
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the gRPC-Web body has {len(body) - end} bytes after its one request frame; a "
            "request carries exactly one message (client streaming is not supported)",
        )
    return body[_HEADER.size : end]


def parse_timeout(value: bytes) -> float:
    """``grpc-timeout`` (up to 8 digits and a unit H/M/S/m/u/n) in seconds."""
    m = _TIMEOUT.fullmatch(value.strip())
    if m is None:
        raise GrpcWebError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"grpc-timeout {value.decode('latin-1')!r} is not a timeout: up to 8 digits and a "
            "unit, H, M, S, m (ms), u (µs) or n (ns), e.g. 1500m",
        )
    return int(m.group(1)) * _TIMEOUT_UNIT_S[m.group(2)]


def request_metadata(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str | bytes]]:
    """The request headers that are call metadata (``authorization``, ``x-request-id``, ...)."""
    out: list[tuple[str, str | bytes]] = []
    for raw_key, raw_value in headers:
        key = raw_key.lower()
        if not _METADATA_KEY.fullmatch(key):
            continue
        name = key.decode("ascii")
        if name in _NOT_METADATA or name.startswith(_NOT_METADATA_PREFIXES):
            continue
        if name.endswith("-bin"):
            try:
                padded = raw_value.strip() + b"=" * (-len(raw_value.strip()) % 4)
                out.append((name, base64.b64decode(padded, validate=True)))
            except binascii.Error:
                raise GrpcWebError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"header {name!r} ends in -bin, so its value must be base64",
                ) from None
        elif _PRINTABLE.fullmatch(raw_value):
            out.append((name, raw_value.decode("ascii").strip()))
    return out


# -- the gateway ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayOptions:
    """What the gateway needs from the server's settings."""

    target: str  # the local gRPC address, e.g. unix:/tmp/tdb-xyz/grpc.sock
    max_request_bytes: int
    known_methods: frozenset[str]  # method paths whose refusals are counted in metrics


class GrpcWebGateway:
    """ASGI handler of one gRPC-Web POST; one local channel, opened in the server's event loop."""

    def __init__(
        self,
        options: GatewayOptions,
        on_refused: Callable[[str, str, float, Mapping[str, Any]], None] | None = None,
    ) -> None:
        """``on_refused(method, code_name, seconds, fields)`` sees each request refused before it
        reached the server (bad frame, ...), like the interceptor's ``on_done`` (metrics)."""
        self._options = options
        self._on_refused = on_refused
        self._channel: grpc.aio.Channel | None = None
        self._log = get_logger("tdb.grpcweb")

    def _get_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self._options.target,
                options=[
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.max_send_message_length", -1),
                    ("grpc.enable_retries", 0),
                    ("grpc.primary_user_agent", "tdb-grpc-web"),
                ],
            )
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, extra_headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Answer one gRPC-Web POST; ``extra_headers`` (CORS) go on every response."""
        start = time.perf_counter()
        method: str = scope["path"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        given_id = next((v for k, v in headers if k == b"x-request-id"), b"")
        request_id = (
            given_id.decode("ascii")
            if given_id and _PRINTABLE.fullmatch(given_id) and len(given_id) <= 128
            else uuid.uuid4().hex[:16]
        )
        content_type = next((v for k, v in headers if k == b"content-type"), b"").decode("latin-1")
        base = content_type.split(";")[0].strip().lower()
        text = CONTENT_TYPES.get(base)
        response_type = base if text is not None else "application/grpc-web+proto"
        common = [
            (b"content-type", response_type.encode("ascii")),
            (b"x-request-id", request_id.encode("ascii")),
            *extra_headers,
        ]
        try:
            if text is None:
                raise GrpcWebError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"content-type {content_type!r} is not gRPC-Web; send one of "
                    + ", ".join(CONTENT_TYPES),
                    http_status=415,
                )
            payload, timeout, metadata = await self._read_request(scope, receive, text, headers)
        except ClientGone:
            self._log.info("grpc-web client left before its request arrived", method=method)
            return
        except GrpcWebError as e:
            await self._refuse(send, method, request_id, e, common, start)
            return
        metadata = [(k, v) for k, v in metadata if k != "x-request-id"]
        metadata.append(("x-request-id", request_id))
        await self._forward(send, receive, method, payload, timeout, metadata, text, common)

    async def _read_request(
        self, scope: Scope, receive: Receive, text: bool, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, float | None, list[tuple[str, str | bytes]]]:
        metadata = request_metadata(headers)
        raw_timeout = next((v for k, v in headers if k == b"grpc-timeout"), None)
        timeout = parse_timeout(raw_timeout) if raw_timeout is not None else None
        limit = self._options.max_request_bytes + _HEADER.size
        if text:
            limit = (limit + 2) // 3 * 4 + 64
        declared = next((v for k, v in headers if k == b"content-length"), None)
        too_big = GrpcWebError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request body is larger than this server accepts "
            f"({self._options.max_request_bytes} bytes of message; --max-request-mb)",
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if text:
            body = decode_text_body(body)
        return parse_request_body(body, self._options.max_request_bytes), timeout, metadata

    async def _refuse(
        self,
        send: Send,
        method: str,
        request_id: str,
        error: GrpcWebError,
        common: list[tuple[bytes, bytes]],
        start: float,
    ) -> None:
        seconds = time.perf_counter() - start
        fields = {"request_id": request_id, "method": method}
        self._log.warning(
            "grpc-web refused",
            **fields,
            status=error.code.name,
            reason=error.message,
            http_status=error.http_status,
            duration_ms=round(seconds * 1e3, 2),
        )
        if self._on_refused is not None and method in self._options.known_methods:
            self._on_refused(method, error.code.name, seconds, fields)
        headers = list(common)
        body = b""
        if error.http_status != 200:  # not gRPC-Web at all: say why in plain text too
            headers[0] = (b"content-type", b"text/plain; charset=utf-8")
            body = (error.message + "\n").encode("utf-8")
        await _send_trailers_only(
            send, error.code, error.message, [], headers, error.http_status, body
        )

    async def _forward(
        self,
        send: Send,
        receive: Receive,
        method: str,
        payload: bytes,
        timeout: float | None,
        metadata: list[tuple[str, str | bytes]],
        text: bool,
        common: list[tuple[bytes, bytes]],
    ) -> None:
        # Every method is called as unary-request, stream-response: on the wire a unary response
        # is a stream of one message, so one code path serves both, with the bytes untouched.
        # no serializers: the request and the responses pass as the bytes they are
        rpc: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self._get_channel().unary_stream(
            method
        )
        call = rpc(payload, timeout=timeout, metadata=metadata)
        gone = asyncio.Event()

        async def watch() -> None:  # the browser going away cancels the call
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    call.cancel()
                    return

        watcher = asyncio.create_task(watch())
        encode = _text_encoder if text else _identity
        started = False
        try:
            async for message in call:
                chunk = encode(frame(message))
                if not started:
                    headers = list(common)
                    headers += _encode_headers(metadata_headers(await call.initial_metadata()))
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if gone.is_set():
                    return
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or ""
        except asyncio.CancelledError:
            call.cancel()
            if gone.is_set():
                return
            raise
        finally:
            watcher.cancel()
        if gone.is_set():
            return
        trailing = metadata_headers(await call.trailing_metadata() or ())
        if not started:
            await _send_trailers_only(send, code, details, trailing, common)
            return
        body = encode(frame(trailer_block(code, details, trailing), TRAILER_FLAG))
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _identity(data: bytes) -> bytes:
    return data


def _text_encoder(data: bytes) -> bytes:
    return base64.b64encode(data)


def _encode_headers(pairs: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("ascii"), v.encode("ascii", "replace")) for k, v in pairs]


async def _send_trailers_only(
    send: Send,
    code: grpc.StatusCode,
    message: str,
    trailing: list[tuple[str, str]],
    common: list[tuple[bytes, bytes]],
    http_status: int = 200,
    body: bytes = b"",
) -> None:
    """A response with no message: the status and trailing metadata in the HTTP headers."""
    names = {k for k, _ in common}
    headers = [
        *common,
        (b"grpc-status", str(code.value[0]).encode("ascii")),
        *([(b"grpc-message", encode_grpc_message(message).encode("ascii"))] if message else []),
        *(h for h in _encode_headers(trailing) if h[0] not in names),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    await send({"type": "http.response.start", "status": http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
