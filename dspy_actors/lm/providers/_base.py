"""What every provider implements, plus the pieces they share: SSE framing and the mapping
from an HTTP error status (and body) to the error taxonomy."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from dspy_actors.lm._retry import parse_retry_after
from dspy_actors.lm._types import Completion
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    ContextWindowExceeded,
    LMError,
    LMTimeout,
    MalformedResponse,
    RateLimited,
    ServerError,
)

__all__ = ["Provider", "StreamAccumulator", "http_error", "iter_sse"]

# Phrases providers and servers (OpenAI, Anthropic, vLLM, llama.cpp, Ollama) use when the
# prompt does not fit: the status alone (400) cannot tell this apart from other bad requests.
_CONTEXT_WINDOW = re.compile(
    r"context[_ ](length|window|size)|maximum context|prompt is too long|too many tokens"
    r"|exceeds? the (model'?s? )?(context|maximum)|reduce the length|input is too long",
    re.IGNORECASE,
)


def is_context_window_error(code: str | None, message: str) -> bool:
    return code == "context_length_exceeded" or bool(_CONTEXT_WINDOW.search(message))


def http_error(
    status: int,
    headers: Mapping[str, str],
    message: str,
    code: str | None,
    *,
    endpoint: str,
    model: str,
) -> LMError:
    """The taxonomy error for an HTTP error response (``message``/``code`` from its body)."""
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    kw: dict[str, Any] = {"endpoint": endpoint, "model": model, "status": status}
    if status == 429:
        return RateLimited(f"rate limited, {text}", retry_after=parse_retry_after(headers), **kw)
    if status in (401, 403):
        return AuthenticationError(f"authentication failed, {text}", **kw)
    if status == 408:
        return LMTimeout(f"server timed out, {text}", **kw)
    if status >= 500 or status == 409:
        return ServerError(f"server error, {text}", retry_after=parse_retry_after(headers), **kw)
    if is_context_window_error(code, message):
        return ContextWindowExceeded(f"context window exceeded, {text}", **kw)
    return BadRequest(f"bad request, {text}", **kw)


def error_fields(body: bytes) -> tuple[str, str | None]:
    """(message, code) from an error body, tolerating anything: OpenAI's and Anthropic's
    ``{"error": {"message", "code" or "type"}}``, ``{"error": "..."}`` (llama.cpp,
    Ollama), a top-level ``message``, or not JSON at all (its first 500 bytes)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace").strip(), None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return str(err.get("message") or ""), str(code) if code is not None else None
    if isinstance(err, str):
        return err, None
    if isinstance(data, dict) and "message" in data:
        return str(data["message"]), None
    return body[:500].decode("utf-8", "replace").strip(), None


def int_or_zero(value: Any) -> int:
    """A token count from a usage block: the int it is, or 0 for anything else."""
    return value if isinstance(value, int) else 0


def iter_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent-event stream, from its lines."""
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "", []
        elif line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            event = line[6:].strip()
        # "id:", "retry:" and ":" comments carry nothing we need.
    if data:
        yield event, "\n".join(data)


def decode_event(data: str, what: str, *, endpoint: str, model: str) -> dict[str, Any]:
    """One SSE event's data as a JSON object; MalformedResponse naming ``what`` otherwise."""
    try:
        decoded = json.loads(data)
    except ValueError as exc:
        raise MalformedResponse(
            f"invalid JSON in {what}: {data[:200]!r}", endpoint=endpoint, model=model
        ) from exc
    if not isinstance(decoded, dict):
        raise MalformedResponse(
            f"{what} is not an object: {data[:200]!r}", endpoint=endpoint, model=model
        )
    return decoded


class StreamAccumulator(ABC):
    """Consumes a provider's SSE events; yields text deltas and builds the Completion."""

    @abstractmethod
    def feed(self, event: str, data: str) -> list[tuple[int, str]]:
        """Take one SSE event; return the (choice index, text delta) pairs it carried."""

    @property
    @abstractmethod
    def finished(self) -> bool:
        """Whether the stream's explicit end marker has arrived."""

    @abstractmethod
    def completion(self) -> Completion:
        """The whole completion, once the stream has finished."""


class Provider(ABC):
    """A wire format: how to address, build, parse and interpret errors of requests."""

    name: ClassVar[str]
    default_api_base: ClassVar[str]
    supports_n: ClassVar[bool]
    supports_json_schema: ClassVar[bool]
    # LM keyword arguments that shape the endpoint rather than the request body (Azure's
    # api_version): kept in the LM's defaults, and sent to worker processes with the LM.
    endpoint_options: ClassVar[tuple[str, ...]] = ()
    # The environment variable an API key is read from when none is given.
    api_key_env: ClassVar[str] = ""

    def default_base(self) -> str:
        """The api_base used when none is given."""
        return self.default_api_base

    def bind(self, model: str, api_base: str, options: Mapping[str, Any]) -> Provider:
        """The provider for one model at ``api_base`` (a provider whose URL names the model
        or a version returns a new instance; most return themselves). ``options``: the
        LM's defaults. Raises ValueError for a configuration that cannot work."""
        return self

    def stream_endpoint(self, api_base: str) -> str:
        """The URL streamed requests are POSTed to (the same as ``endpoint`` for most)."""
        return self.endpoint(api_base)

    @abstractmethod
    def endpoint(self, api_base: str) -> str:
        """The URL requests are POSTed to."""

    @abstractmethod
    def headers(self, api_key: str | None) -> dict[str, str]:
        """Headers every request carries (authentication included)."""

    @abstractmethod
    def build_body(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        """The JSON request body."""

    @abstractmethod
    def parse(self, data: Any, *, endpoint: str, model: str) -> Completion:
        """The completion in a successful response body (raises MalformedResponse)."""

    @abstractmethod
    def accumulator(self, *, endpoint: str, model: str) -> StreamAccumulator:
        """A fresh accumulator for one streamed response."""

    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, endpoint: str, model: str
    ) -> LMError:
        """The taxonomy error for an HTTP error response."""
        message, code = error_fields(body)
        return http_error(status, headers, message, code, endpoint=endpoint, model=model)
