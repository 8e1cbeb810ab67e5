"""The LM error taxonomy: a few kinds the caller (and the retry loop) can act on.

    LMError
    ├── RateLimited            429; ``retry_after`` = the server's requested delay, if any
    ├── ServerError            5xx (and 409); ``status``
    ├── LMTimeout              no answer within the timeout
    ├── LMConnectionError      connect failure, reset, truncated response
    ├── BadRequest             400 and other 4xx the request itself caused
    │   └── ContextWindowExceeded   the prompt is longer than the model accepts
    ├── AuthenticationError    401/403
    └── MalformedResponse      a 200 whose body is not the expected JSON/SSE

``retryable`` says whether trying the same request again can succeed. Every message names
the provider, endpoint and model that failed, and never contains the API key.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ContextWindowExceeded",
    "LMConnectionError",
    "LMError",
    "LMTimeout",
    "MalformedResponse",
    "RateLimited",
    "ServerError",
]


class LMError(Exception):
    """Base of every error an LM call raises."""

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        where = " ".join(p for p in (endpoint, f"model {model!r}" if model else None) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.endpoint = endpoint
        self.model = model
        self.status = status
        self.retry_after = retry_after


class RateLimited(LMError):
    """HTTP 429. ``retry_after`` is the delay the server asked for (seconds), if it did."""

    retryable = True


class ServerError(LMError):
    """The provider failed (HTTP 5xx, or 409). ``status`` is the HTTP status."""

    retryable = True


class LMTimeout(LMError):
    """No (complete) answer within the call's timeout."""

    retryable = True


class LMConnectionError(LMError):
    """The connection failed or broke: refused, reset, or closed mid-response."""

    retryable = True


class BadRequest(LMError):
    """The provider rejected the request itself (HTTP 400 and similar): do not retry."""


class ContextWindowExceeded(BadRequest):
    """The prompt (plus the requested completion) exceeds the model's context window."""


class AuthenticationError(LMError):
    """HTTP 401/403: missing, wrong or unauthorised API key."""


class MalformedResponse(LMError):
    """A successful status with a body that is not what the wire format promises."""

    retryable = True
