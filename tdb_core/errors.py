"""The error tree of the domain.

Every failure a user can cause is one of these classes. The transport layer maps each class to one
gRPC status code in a single interceptor (``services/interceptors.py``); nothing in ``tdb_core``
knows about gRPC. Messages say what was wrong *and* what is allowed, because they are shown to the
user verbatim.

    TdbError
    ├── InvalidArgumentError     a malformed or inconsistent request      -> INVALID_ARGUMENT
    ├── NotFoundError            unknown model, site, SAE, node, record   -> NOT_FOUND
    ├── OutOfRangeError          an index or position outside its range   -> OUT_OF_RANGE
    ├── ResourceExhaustedError   a configured limit would be exceeded     -> RESOURCE_EXHAUSTED
    ├── UnavailableError         overloaded or shutting down (retryable)  -> UNAVAILABLE
    ├── FailedPreconditionError  the server is not in a state to do this  -> FAILED_PRECONDITION
    ├── UnauthenticatedError     missing or wrong credentials             -> UNAUTHENTICATED
    ├── CancelledError           the caller went away                     -> CANCELLED
    └── DeadlineExceededError    the caller's deadline passed             -> DEADLINE_EXCEEDED

Any other exception escaping a handler is a bug and becomes INTERNAL, logged with a traceback.
"""

from __future__ import annotations


class TdbError(Exception):
    """Base class of every error a request can legitimately produce."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(TdbError):
    """The request is malformed or inconsistent (bad spec, bad shape, empty prompt)."""


class NotFoundError(TdbError):
    """Something the request names does not exist (model, site, SAE, node, explanation)."""


class OutOfRangeError(TdbError):
    """An index (layer, head, neuron, latent, position, token id) is outside its valid range."""


class ResourceExhaustedError(TdbError):
    """Serving the request would exceed a configured limit (tokens, prompts, bytes, memory)."""


class UnavailableError(TdbError):
    """The server cannot take the request now (queue full, shutting down); retrying may succeed."""


class FailedPreconditionError(TdbError):
    """The request is valid but the server is not in a state to serve it (e.g. no LLM configured)."""


class UnauthenticatedError(TdbError):
    """Credentials are missing or wrong."""


class CancelledError(TdbError):
    """The caller cancelled the request; work stopped early."""


class DeadlineExceededError(TdbError):
    """The caller's deadline passed before the work finished; work stopped early."""
