"""The HTTP port (``tdb serve --http-port``): gRPC-Web for every RPC, CORS, and the web app.

One ASGI app, served by uvicorn in a thread of the server's process:

    POST /package.Service/Method    gRPC-Web, translated onto the real gRPC server (grpcweb.py)
    OPTIONS /package.Service/Method CORS preflight
    GET|HEAD /...                   the built web app (clients/web/dist or --web-dir), with
                                    index.html for client-side routes; without a build, ``/``
                                    says how to build it

CORS: a request whose ``Origin`` is this server itself (same scheme, host and port) always
passes; another origin passes only when listed with ``--cors-origin`` (``*`` allows any), and is
refused with 403 otherwise, preflight included.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import mimetypes
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.grpcweb import METHOD_PATH, GatewayOptions, GrpcWebGateway, Receive, Scope, Send
from services.logs import get_logger

#: Where ``make web`` puts the built app; served when it exists and no --web-dir is given.
DEFAULT_WEB_DIR = Path(__file__).resolve().parents[1] / "clients" / "web" / "dist"

#: Request headers a gRPC-Web client sends (grpc-web, connect-web) plus ours.
ALLOW_HEADERS = (
    "authorization, content-type, grpc-timeout, x-grpc-web, x-user-agent, x-request-id, "
    "connect-protocol-version, connect-timeout-ms"
)
#: Response headers a cross-origin page may read (status of trailers-only responses, request id).
EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, x-request-id"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}


def content_type(path: Path) -> str:
    """The Content-Type of a static file, by extension."""
    known = _TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


@dataclass(frozen=True)
class CorsPolicy:
    """Which other origins may call; the server's own origin always may."""

    origins: tuple[str, ...] = ()  # "*": any origin

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in {o.rstrip("/") for o in self.origins}


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _same_origin(origin: str, scope: Scope) -> bool:
    parts = urlsplit(origin)
    host = _header(scope, b"host")
    return bool(host) and parts.scheme == scope.get("scheme") and parts.netloc.lower() == host


class WebApp:
    """The ASGI app of the HTTP port: routing, CORS, gRPC-Web, static files."""

    def __init__(
        self,
        gateway: GrpcWebGateway,
        cors: CorsPolicy,
        web_dir: Path | None,
        grpc_address: str,
    ) -> None:
        """``web_dir``: the built app; None serves DEFAULT_WEB_DIR when it exists."""
        self.gateway = gateway
        self.cors = cors
        self.web_dir = web_dir
        self.grpc_address = grpc_address
        self._log = get_logger("tdb.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets, no lifespan events here
            return
        try:
            await self._route(scope, receive, send)
        except Exception:  # noqa: BLE001 - a bug here must not take the port down; log it
            self._log.exception("http handler failed", path=scope.get("path"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        is_rpc = METHOD_PATH.fullmatch(path) is not None
        if method in ("GET", "HEAD"):
            await self._static(scope, send, head=method == "HEAD")
            return
        if not is_rpc:
            await _plain(
                send, 405, "only GET and HEAD here; gRPC-Web calls POST /package.Service/Method\n"
            )
            return
        origin = _header(scope, b"origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and not _same_origin(origin, scope):
            if not self.cors.allows(origin):
                self._log.warning("cross-origin request refused", origin=origin, method=path)
                await _plain(
                    send,
                    403,
                    f"origin {origin!r} may not call this server; start it with "
                    f"--cors-origin {origin} to allow it\n",
                )
                return
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSE_HEADERS.encode("ascii")),
                (b"vary", b"Origin"),
            ]
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", b"POST, OPTIONS"),
                        (b"access-control-allow-headers", ALLOW_HEADERS.encode("ascii")),
                        (b"access-control-max-age", b"7200"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if method != "POST":
            await _plain(
                send, 405, "gRPC-Web calls are POST requests\n", [(b"allow", b"POST, OPTIONS")]
            )
            return
        await self.gateway(scope, receive, send, cors)

    # -- static files
    def _root(self) -> Path | None:
        root = self.web_dir if self.web_dir is not None else DEFAULT_WEB_DIR
        return root if root.is_dir() else None

    async def _static(self, scope: Scope, send: Send, head: bool) -> None:
        root = self._root()
        path: str = scope["path"]
        segments = [s for s in path.split("/") if s]
        if any(s.startswith(".") or "\\" in s or "\0" in s for s in segments):
            await _plain(send, 404, "not found\n")
            return
        # A browser navigating to a page (node keys have dots: /node/blocks.1.mlp.hook_post[42])
        # or a path without a file extension is a client-side route; a missing asset is a 404.
        navigation = (
            not segments
            or "." not in segments[-1]
            or "text/html" in (_header(scope, b"accept") or "")
        )
        file = None
        if root is not None:
            base = root.resolve()
            candidate = base.joinpath(*segments).resolve()
            if candidate != base and base not in candidate.parents:  # a link out of the root
                await _plain(send, 404, "not found\n")
                return
            if candidate.is_dir():
                candidate = candidate / "index.html"
            if candidate.is_file():
                file = candidate
            elif navigation:  # a client-side route: the app
                index = base / "index.html"
                file = index if index.is_file() else None
        if file is None:
            if not navigation:
                await _plain(send, 404, "not found\n")
            else:
                await self._not_built(send, head)
            return
        await _send_file(
            scope, send, file, head, immutable=bool(segments) and segments[0] == "assets"
        )

    async def _not_built(self, send: Send, head: bool) -> None:
        where = html.escape(str(self.web_dir or DEFAULT_WEB_DIR))
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>TDB server</title></head>
<body style="font-family: sans-serif; max-width: 44em; margin: 3em auto">
<h1>TDB server</h1>
<p>The web app is not built, so there is nothing to show at <code>/</code> yet
(looked in <code>{where}</code>).</p>
<p>To build it you need Node.js 20 or newer. In the repository, run</p>
<pre>make web</pre>
<p>which installs its packages (<code>npm ci</code>) and builds <code>clients/web</code> into
<code>clients/web/dist</code>; then reload this page. <code>make serve</code> builds it for you
when Node.js is installed.</p>
<p>The server works without it: gRPC-Web is served here at
<code>POST /tdb.v1.&lt;Service&gt;/&lt;Method&gt;</code>, and native gRPC at
<code>{html.escape(self.grpc_address)}</code>.</p>
</body></html>
""".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(page)).encode()),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if head else page})


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = text.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-content-type-options", b"nosniff"),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_file(scope: Scope, send: Send, file: Path, head: bool, immutable: bool) -> None:
    stat = file.stat()
    etag = '"' + hashlib.sha1(f"{stat.st_mtime_ns}-{stat.st_size}".encode()).hexdigest()[:20] + '"'
    headers = [
        (b"content-type", content_type(file).encode("ascii")),
        (b"etag", etag.encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        (
            b"cache-control",
            b"public, max-age=31536000, immutable" if immutable else b"no-cache",
        ),
    ]
    if _header(scope, b"if-none-match") == etag:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(stat.st_size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": b""})
        return
    with file.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            more = len(chunk) == 1 << 20
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return


# -- the server thread ----------------------------------------------------------------------------


class _ToStructlog(logging.Handler):
    """uvicorn's own warnings and errors (bad HTTP, TLS handshakes) as structured log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Cancel 0 running task"):  # a stop with nothing in flight
            return
        log = get_logger("tdb.http")
        (log.error if record.levelno >= logging.ERROR else log.warning)(
            "http server", message=message
        )


def _route_uvicorn_logs() -> None:
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
            logger.addHandler(_ToStructlog(logging.WARNING))
        logger.propagate = False


class HttpServer:
    """uvicorn serving a :class:`WebApp` on ``host:port`` in a daemon thread with its own loop."""

    def __init__(
        self,
        app: WebApp,
        host: str,
        port: int,
        tls: tuple[str, str, str | None] | None = None,
    ) -> None:
        """``tls``: (cert, key, client CA or None), the same files as the gRPC port."""
        import uvicorn

        _route_uvicorn_logs()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=128)
        self.port = int(self._socket.getsockname()[1])
        self.scheme = "https" if tls else "http"
        options: dict[str, Any] = {}
        if tls is not None:
            cert, key, client_ca = tls
            options = {"ssl_certfile": cert, "ssl_keyfile": key}
            if client_ca:
                options |= {"ssl_ca_certs": client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            loop="asyncio",
            http="h11",  # pure Python; httptools measured no faster on 16 MiB streams
            proxy_headers=False,
            server_header=False,
            **options,
        )
        self._server = uvicorn.Server(self._config)
        self._app = app
        self._thread = threading.Thread(target=self._run, name="tdb-http", daemon=True)
        self._failed: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self._server.serve(sockets=[self._socket])
            finally:
                await self._app.gateway.close()

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by start() / stop()
            self._failed = e

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout:
                self._socket.close()
                raise OSError(f"the HTTP server did not start: {self._failed!r}")
            self._thread.join(0.01)
            waited += 0.01

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace`` s), then close."""
        self._config.timeout_graceful_shutdown = int(grace) + 1 if grace else 0
        self._server.should_exit = True
        self._thread.join((grace or 0) + 10)
        self._socket.close()


def build_web_app(
    target: str,
    max_request_bytes: int,
    known_methods: frozenset[str],
    cors_origins: tuple[str, ...],
    web_dir: str | None,
    grpc_address: str,
    on_refused: Callable[[str, str, float, Mapping[str, Any]], None] | None = None,
) -> WebApp:
    """The HTTP port's app over the local gRPC address ``target``."""
    gateway = GrpcWebGateway(GatewayOptions(target, max_request_bytes, known_methods), on_refused)
    return WebApp(
        gateway, CorsPolicy(cors_origins), Path(web_dir) if web_dir else None, grpc_address
    )
