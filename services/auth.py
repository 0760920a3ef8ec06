"""Bearer-token authentication and TLS credentials for the server.

Tokens: ``--auth-token-file FILE`` holds one or more tokens, one per line (blank lines and lines
starting with ``#`` are ignored), so a token can be rotated by adding the new one, moving clients,
then removing the old one. A client sends ``authorization: Bearer <token>`` metadata. Every RPC
except the standard health service (which load balancers and Kubernetes probes call without
credentials) is refused with UNAUTHENTICATED when the token is missing or wrong. Tokens are
compared in constant time (SHA-256 digests with ``hmac.compare_digest``), against every configured
token, so the time taken says nothing about which token, or how much of one, matched.

TLS: ``--tls-cert``/``--tls-key`` (PEM) make the server speak TLS; ``--tls-client-ca`` (PEM) also
requires each client to present a certificate signed by that CA (mutual TLS).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import grpc

from tdb_core.errors import InvalidArgumentError, UnauthenticatedError

#: Method paths (prefixes) that never need a token.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def read_tokens(path: str | Path) -> tuple[bytes, ...]:
    """The tokens in ``path``: one per line, blank lines and ``#`` comments ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidArgumentError(
            f"cannot read the auth token file {str(path)!r}: {e.strerror}"
        ) from None
    tokens = tuple(
        line.strip().encode()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    if not tokens:
        raise InvalidArgumentError(
            f"the auth token file {str(path)!r} holds no token; put one token per line"
        )
    for t in tokens:
        if any(c <= 0x20 or c >= 0x7F for c in t):
            raise InvalidArgumentError(
                f"a token in {str(path)!r} has whitespace or non-ASCII "
                "characters; tokens must be printable ASCII"
            )
    return tokens


class CallMetadata(Protocol):
    """What an authorizer reads of a call: its metadata. A ``grpc.ServicerContext`` has it, and
    so has the interceptor's view of a call's details before the request body is parsed."""

    def invocation_metadata(self) -> Sequence[tuple[str, str | bytes]] | None: ...


class BearerTokenAuthorizer:
    """The interceptor's ``authorize`` hook: accept a request only with a configured token."""

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
        if not tokens:
            raise ValueError("BearerTokenAuthorizer needs at least one token")
        # Digests, so every comparison is over 32 bytes whatever the tokens' lengths.
        self._digests = tuple(hashlib.sha256(t).digest() for t in tokens)

    def __call__(self, method: str, context: CallMetadata) -> None:
        if method.startswith(OPEN_METHOD_PREFIXES):
            return
        header = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
                break
        if not header:
            raise UnauthenticatedError(
                "this server requires a token: send metadata 'authorization: Bearer <token>'"
            )
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
        candidate = hashlib.sha256(presented.strip().encode("utf-8", "replace")).digest()
        ok = False
        for digest in self._digests:  # no early exit: every token is compared every time
            ok |= hmac.compare_digest(candidate, digest)
        if not ok:
            raise UnauthenticatedError("the token is not valid for this server")


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the {what} {path!r}: {e.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str | None = None) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; with ``client_ca``, clients must present a certificate."""
    root = _read_pem(client_ca, "TLS client CA") if client_ca else None
    return grpc.ssl_server_credentials(
        [(_read_pem(key, "TLS key"), _read_pem(cert, "TLS certificate"))],
        root_certificates=root,
        require_client_auth=root is not None,
    )
