"""How an :class:`~dspy_actors.lm.LM` sends a prepared request: the body, the HTTP post
(sync over ``transport``, async over ``_aio_transport``), whole or streamed, with one retry
loop (``retry.RetryLoop``) for all four, and the mapping of HTTP and transport failures to
``LMError``\\ s. No cache, usage or history here: ``_lm.py`` looks up and settles around it.

``_Sending`` is a mixin of ``LM`` (the attributes it declares are set by ``LM.__init__``).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from dspy_actors._deferred_imports import lazy_module
from dspy_actors.lm._aio_transport import AioClients, aiter_sse
from dspy_actors.lm._retry import RetryLoop, RetryPolicy, call_with_retries
from dspy_actors.lm._retry_listener import note_retry
from dspy_actors.lm._types import Completion, StreamEvent
from dspy_actors.lm.errors import (
    BadRequest,
    LMConnectionError,
    LMError,
    LMTimeout,
    MalformedResponse,
)
from dspy_actors.lm.providers._base import Provider, StreamAccumulator, iter_sse
from dspy_actors.lm.transport import ClientPool
from dspy_actors.redaction import redact

# aiohttp is imported when an LM first sends on an event loop, not with the package.
if TYPE_CHECKING:
    import aiohttp
else:
    aiohttp = lazy_module("aiohttp", globals())

# The fallback for a body orjson refuses (a non-str dict key, an int beyond 64 bits):
# built once, as json.dumps with options builds a new encoder on every call.
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_body(body: Any) -> bytes:
    """``body`` as compact UTF-8 JSON. orjson first: it runs on the LM loop's thread for
    every request and takes ~1 us where the stdlib encoder takes ~10 (measured on a
    Predict's body); the stdlib keeps the cases orjson refuses working as before. (A NaN,
    which no JSON reader accepts, goes out as ``null``.)"""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _BODY_ENCODER.encode(body).encode()


def decode_answer(body: bytes) -> Any:
    """A JSON answer's value: orjson (~3 us where json.loads takes ~10 on a completion),
    json.loads for what orjson rejects (NaN and Infinity literals); ValueError if neither
    reads it."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:  # (a ValueError)
        return json.loads(body)


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """The one request value of the LM layer: an uncached completion whose parameters are
    resolved (``LM.prepare`` looks up), what is sent (``LM.run``/``arun``/``stream``), and
    where the answer is stored (``LM.settle``, under ``cache_key``)."""

    messages: list[dict[str, Any]]
    params: Mapping[str, Any]
    response_format: dict[str, Any] | None
    timeout: float | None
    cache_key: str | None
    start: float
    # A time.monotonic() instant no attempt may outlast (the runtime's call deadline).
    deadline: float | None = None


class _Counters:
    __slots__ = ("cache_hits", "failures", "lock", "requests", "retries")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.retries = self.cache_hits = self.failures = 0


class _Sending:
    """Sending prepared requests (see the module docstring)."""

    model: str
    model_name: str
    endpoint: str
    stream_endpoint: str
    timeout: float
    retry_policy: RetryPolicy
    _provider: Provider
    _clients: ClientPool
    _aio: AioClients
    _rng: random.Random
    _counters: _Counters

    # Bookkeeping. -----------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        c = self._counters
        with c.lock:
            setattr(c, name, getattr(c, name) + amount)

    def _on_retry(self, error: LMError, delay: float) -> None:
        self._count("retries")
        note_retry(error, delay)  # the runtime's lm.retry event, with the call's trace id

    def _retries(self, deadline: float | None = None) -> RetryLoop:
        return RetryLoop(self.retry_policy, self._rng, self._on_retry, deadline)

    # The body, and n emulated by repetition. ----------------------------------------------

    def _body(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> bytes:
        if "rollout_id" in params:
            # DSPy's rollout_id only tells otherwise identical calls apart in the cache
            # (it is part of the key); a provider may reject an unknown field.
            params = {k: v for k, v in params.items() if k != "rollout_id"}
        try:
            body = self._provider.build_body(
                self.model_name, messages, params, response_format, stream
            )
        except BadRequest as exc:
            if exc.endpoint is None:
                raise BadRequest(str(exc), endpoint=self.endpoint, model=self.model) from exc
            raise
        return encode_body(body)

    def _requests(self, prepared: PreparedCall, stream: bool) -> tuple[bytes, int]:
        """The body to send and how many times: once, or ``n`` times with ``n=1`` for a
        provider that cannot give ``n`` completions in one request."""
        params = prepared.params
        n = params.get("n") or 1
        if n > 1 and not self._provider.supports_n:
            one = {k: v for k, v in params.items() if k != "n"}
            return self._body(prepared.messages, one, prepared.response_format, stream), n
        return self._body(prepared.messages, params, prepared.response_format, stream), 1

    def _limit(self, timeout: float | None, deadline: float | None) -> float:
        """One attempt's timeout: the call's (or the LM's), cut to what the deadline
        leaves (retries included, an attempt never waits past it)."""
        limit = self.timeout if timeout is None else timeout
        if deadline is not None:
            limit = max(0.001, min(limit, deadline - time.monotonic()))
        return limit

    # Whole answers. -----------------------------------------------------------------------

    def _send(self, prepared: PreparedCall) -> Completion:
        content, times = self._requests(prepared, stream=False)
        timeout, deadline = prepared.timeout, prepared.deadline

        def attempt() -> Completion:
            return self._post(content, self._limit(timeout, deadline))

        parts = [
            call_with_retries(
                attempt,
                self.retry_policy,
                rng=self._rng,
                on_retry=self._on_retry,
                deadline=deadline,
            )
            for _ in range(times)
        ]
        return parts[0] if times == 1 else merge_completions(parts)

    async def _asend(self, prepared: PreparedCall) -> Completion:
        content, times = self._requests(prepared, stream=False)
        if times == 1:
            return await self._apost(content, prepared.timeout, prepared.deadline)
        return merge_completions(
            [await self._apost(content, prepared.timeout, prepared.deadline) for _ in range(times)]
        )

    def _post(self, content: bytes, limit: float) -> Completion:
        self._count("requests")
        try:
            r = self._clients.post(self.endpoint, content, limit)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, limit) from exc
        return self._answer(r.status_code, r.headers, r.content)

    async def _apost(
        self, content: bytes, timeout: float | None, deadline: float | None
    ) -> Completion:
        """POST ``content`` until answered, retried as :meth:`_send` retries (one
        ``RetryLoop``, made only after a failure): one coroutine frame per attempt, as the
        LM loop's thread runs this for every request."""
        retries: RetryLoop | None = None
        counters = self._counters
        while True:
            limit = self._limit(timeout, deadline)
            with counters.lock:
                counters.requests += 1
            try:
                try:
                    status, headers, body = await self._aio.post(self.endpoint, content, limit)
                except (OSError, aiohttp.ClientError) as exc:  # (TimeoutError is an OSError)
                    raise self._transport_error(exc, limit) from exc
                return self._answer(status, headers, body)
            except LMError as exc:
                if retries is None:
                    retries = self._retries(deadline)
                delay = retries.wait_after(exc)
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> Completion:
        """The completion in an HTTP answer, or the error it says (either transport's)."""
        if status >= 300:
            raise self._http_error(status, headers, body)
        try:
            data = decode_answer(body)
        except ValueError as exc:
            raise MalformedResponse(
                f"HTTP {status} with a body that is not JSON: {body[:200]!r}",
                endpoint=self.endpoint,
                model=self.model,
            ) from exc
        return self._provider.parse(data, endpoint=self.endpoint, model=self.model)

    # Streamed answers: retried only while nothing has been yielded. ----------------------

    def _stream(self, prepared: PreparedCall) -> Generator[StreamEvent, None, Completion]:
        """Yield the text deltas of a prepared request as they arrive; return its
        Completion (``n`` emulated requests are streamed one after the other)."""
        content, times = self._requests(prepared, stream=True)
        limit = self._limit(prepared.timeout, None)
        parts: list[Completion] = []
        for offset in range(times):
            parts.append((yield from self._stream_once(content, limit, offset)))
        return parts[0] if times == 1 else merge_completions(parts)

    def _stream_once(
        self, content: bytes, limit: float, index_offset: int
    ) -> Generator[StreamEvent, None, Completion]:
        retries = self._retries()
        while True:
            yielded = False
            try:
                self._count("requests")
                acc = self._provider.accumulator(endpoint=self.endpoint, model=self.model)
                try:
                    with self._clients.stream(self.stream_endpoint, content, limit) as r:
                        if r.status_code >= 300:
                            r.read()
                            raise self._http_error(r.status_code, r.headers, r.content)
                        for event, data in iter_sse(r.iter_lines()):
                            for index, text in acc.feed(event, data):
                                yielded = True
                                yield StreamEvent(text, index + index_offset)
                            if acc.finished:
                                break
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, limit) from exc
                return self._ended(acc)
            except LMError as exc:
                delay = None if yielded else retries.wait_after(exc)
                if delay is None:
                    raise
                time.sleep(delay)

    async def _astream(
        self, prepared: PreparedCall, into: list[Completion]
    ) -> AsyncIterator[StreamEvent]:
        """:meth:`_stream` on the running loop; the Completion is appended to ``into``."""
        if self._aio.target(self.endpoint).needs_thread:
            raise LMConnectionError(
                "astream() cannot go through a SOCKS proxy: use stream() in a thread",
                endpoint=self.endpoint,
                model=self.model,
            )
        content, times = self._requests(prepared, stream=True)
        limit = self._limit(prepared.timeout, None)
        parts: list[Completion] = []
        for offset in range(times):
            async for event in self._astream_once(content, limit, offset, parts):
                yield event
        into.append(parts[0] if times == 1 else merge_completions(parts))

    async def _astream_once(
        self, content: bytes, limit: float, index_offset: int, into: list[Completion]
    ) -> AsyncIterator[StreamEvent]:
        retries = self._retries()
        while True:
            yielded = False
            try:
                self._count("requests")
                acc = self._provider.accumulator(endpoint=self.endpoint, model=self.model)
                try:
                    async with self._aio.stream(self.endpoint, content, limit) as r:
                        if r.status >= 300:
                            raise self._http_error(r.status, r.headers, await r.read())
                        async for event, data in aiter_sse(r):
                            for index, text in acc.feed(event, data):
                                yielded = True
                                yield StreamEvent(text, index + index_offset)
                            if acc.finished:
                                break
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise self._transport_error(exc, limit) from exc
                into.append(self._ended(acc))
                return
            except LMError as exc:
                delay = None if yielded else retries.wait_after(exc)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    def _ended(self, acc: StreamAccumulator) -> Completion:
        if not acc.finished:
            raise LMConnectionError(
                "stream ended before its end marker", endpoint=self.endpoint, model=self.model
            )
        return acc.completion()

    # Failures. ----------------------------------------------------------------------------

    def _http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> LMError:
        error = self._provider.error(
            status, headers, body, endpoint=self.endpoint, model=self.model
        )
        return self._scrub(error)

    def _transport_error(self, exc: BaseException, limit: float) -> LMError:
        """A failure of either transport: a timeout (httpx's or the async one's) or a
        connection that failed."""
        if isinstance(exc, TimeoutError | httpx.TimeoutException):
            return LMTimeout(
                f"no answer within {limit:g}s ({type(exc).__name__})",
                endpoint=self.endpoint,
                model=self.model,
            )
        return self._scrub(
            LMConnectionError(
                f"connection failed: {type(exc).__name__}: {exc}",
                endpoint=self.endpoint,
                model=self.model,
            )
        )

    def _scrub(self, error: LMError) -> LMError:
        """Make sure no error message can carry the API key (servers sometimes echo it)."""
        error.args = tuple(redact(a) if isinstance(a, str) else a for a in error.args)
        return error


def merge_completions(parts: list[Completion]) -> Completion:
    """One Completion out of several single-output ones (``n`` emulated by repetition)."""
    return Completion(
        [o for p in parts for o in p.outputs],
        [f for p in parts for f in p.finish_reasons],
        sum(p.prompt_tokens for p in parts),
        sum(p.completion_tokens for p in parts),
        parts[0].model if parts else "",
        _merged_tool_calls(parts),
    )


def _merged_tool_calls(parts: list[Completion]) -> list[list[dict[str, Any]]] | None:
    if all(p.tool_calls is None for p in parts):
        return None
    return [calls for p in parts for calls in (p.tool_calls or [[] for _ in p.outputs])]
