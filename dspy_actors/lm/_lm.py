"""LM: one language-model deployment behind an OpenAI-compatible or Anthropic endpoint.

    lm = LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1", api_key="...",
            temperature=0.0, max_tokens=1000)
    lm("Say hi")                                   # -> ["Hi!"]
    lm.complete(messages, n=3).outputs             # three completions
    for event in lm.stream(messages): ...          # text deltas, then a final event

One LM holds a small pool of sync httpx transport shards (see ``transport``: sync clients
driven by threads scale far better than ``AsyncClient``, and sharding keeps them scaling
past a few dozen threads), so it can be called from any number of threads at once.
Sampling parameters resolve as: per-call keyword arguments > ``settings`` overrides
(``configure``/``context``) > the LM's own defaults.

Caching: a response is stored under a key covering provider, endpoint, model, messages,
response format and every sampling parameter (never the API key). A cache hit costs no
tokens: its usage is zero and it is not sent to any meter.

Proxies: requests go through the proxies the environment names, as with
``httpx.Client(trust_env=True)``: ``HTTPS_PROXY`` for https:// endpoints (tunnelled with
``CONNECT``), ``HTTP_PROXY`` for http:// ones, ``ALL_PROXY`` for both, credentials in the
proxy URL sent as ``Proxy-Authorization``, and ``NO_PROXY`` naming the hosts reached directly
(a local server such as ``localhost`` or ``127.0.0.1`` is proxied too unless listed there).
``LM(..., trust_env=False)`` ignores these variables. They are read when the LM is made.

The API key comes from the argument or from ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``.
It is kept only in the request headers: not in ``repr``, history, cache keys, error
messages, logs, or ``dump_state()``.

Layout: every entry point runs one request value, a ``PreparedCall``, through three
phases: look up (``prepare``: parameters and the one cache lookup, ``_lm_books.py``),
send (``run``/``arun``/streamed: ``_lm_send.py``, one ``RetryLoop``), settle (``settle``:
usage, cache put, history, ``_lm_books.py``). This file (over 400 lines on purpose) is the
LM's whole public surface, DSPy's names and semantics, in one class a user reads.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from dspy_actors.lm._aio_transport import AioClients
from dspy_actors.lm._history import format_history
from dspy_actors.lm._lm_books import _Books
from dspy_actors.lm._lm_send import PreparedCall, _Counters, _Sending
from dspy_actors.lm._retry import RetryPolicy
from dspy_actors.lm._types import Completion, LMResponse, StreamEvent
from dspy_actors.lm._usage import Usage, UsageMeter
from dspy_actors.lm.cache import Cache
from dspy_actors.lm.errors import AuthenticationError, LMError
from dspy_actors.lm.providers import resolve_model
from dspy_actors.lm.transport import ClientPool
from dspy_actors.redaction import clean_api_key

__all__ = ["LM", "LMStats", "PreparedCall", "WorkerSpec"]

_ENV_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_MAX_HISTORY = 1000


def _check_key_configured(model: str, env_var: str, key: str | None, hosted: bool) -> None:
    """A provider's own hosted endpoint always needs a key: say which one is missing and
    how to give it now, before any request, rather than relay the provider's 401 after a
    round trip. A server at another ``api_base`` (local, self-hosted) may need none."""
    if key is None and hosted:
        raise AuthenticationError(
            f"no key was configured for {model}; set {env_var} or pass api_key=... "
            "(for a local or self-hosted server, pass its api_base=...)"
        )


@dataclass(frozen=True, slots=True)
class CacheMiss:
    """A cache lookup that missed, and the key the answer belongs under (see ``LM.probe``)."""

    lm: LM
    key: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """An LM's HTTP configuration, to rebuild it in a worker process (``LM.worker_spec``)."""

    model: str
    api_base: str
    api_key: str | None = field(repr=False)
    timeout: float
    retry_policy: RetryPolicy
    verify: bool | str
    trust_env: bool = True
    # Provider.endpoint_options in the LM's defaults (Azure's api_version): they shape the URL.
    provider_options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LMStats:
    """Counters of one LM: HTTP attempts, retries among them, cache hits, failed calls."""

    requests: int
    retries: int
    cache_hits: int
    failures: int


class _Secret:
    """Holds the API key so that printing the LM's attributes cannot show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "'***'"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("an API key is not picklable")


class LM(_Books, _Sending):
    """A client for one model at one endpoint. See the module docstring."""

    max_history: int = _MAX_HISTORY

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        cache: bool = True,
        cache_store: Cache | None = None,
        num_retries: int = 3,
        timeout: float = 60.0,
        retry_policy: RetryPolicy | None = None,
        verify: bool | str | ssl.SSLContext = True,
        trust_env: bool = True,
        **defaults: Any,
    ) -> None:
        """``verify`` checks the server's TLS certificate: True (certifi's CAs, or the
        bundle in ``SSL_CERT_FILE``), a CA bundle path (a self-hosted server behind an
        internal CA), an ``ssl.SSLContext``, or False (no check: testing only).

        ``trust_env``: send requests through the proxies named by ``HTTP_PROXY``,
        ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (or their lowercase forms), exactly
        as ``httpx.Client(trust_env=True)`` would (see the module docstring); False ignores
        them. Raises ValueError if those variables cannot be parsed."""
        provider, model_name, default_base = resolve_model(model)
        self.model = model
        self._provider = provider
        self.provider = cast(Literal["openai", "anthropic"], provider.name)
        self.model_name = model_name
        self.api_base = (api_base or default_base).rstrip("/")
        # Providers whose URL names the model or a version (Azure, Gemini) bind to it.
        provider = self._provider = provider.bind(model_name, self.api_base, defaults)
        self.endpoint = provider.endpoint(self.api_base)
        self.stream_endpoint = provider.stream_endpoint(self.api_base)
        # Not a sampling parameter: whether JSONAdapter may send a json_schema format
        # (some OpenAI-compatible servers accept only json_object).
        self.supports_json_schema = bool(
            defaults.pop("supports_json_schema", provider.supports_json_schema)
        )
        self.cache = cache
        self.cache_store = cache_store
        self.num_retries = num_retries
        self.retry_policy = retry_policy or RetryPolicy(max_retries=num_retries)
        self.timeout = timeout
        self.defaults: dict[str, Any] = dict(defaults)
        env_key = _ENV_KEYS.get(provider.name) or provider.api_key_env
        key = clean_api_key(api_key or (os.environ.get(env_key) if env_key else None) or None)
        self._api_key = _Secret(key) if key else None
        hosted = self.api_base == provider.default_api_base.rstrip("/")
        _check_key_configured(model, env_key or "its API key variable", key, hosted)
        self._meter = UsageMeter()
        self.history: deque[dict[str, Any]] = deque(maxlen=self.max_history)
        self._counters = _Counters()
        self._rng = random.Random()
        self._verify = verify
        self._trust_env = trust_env
        self._clients = ClientPool(
            headers=provider.headers(key), timeout=timeout, verify=verify, trust_env=trust_env
        )
        # The same targets, TLS context and proxies, on asyncio (acomplete/astream).
        self._aio = AioClients(self._clients, self._clients.ssl_context)

    # ---------------------------------------------------------------- public API
    def __call__(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kw: Any
    ) -> list[str]:
        """Complete a prompt (as one user message) or a message list; return the outputs."""
        if messages is None:
            if prompt is None:
                raise TypeError("LM() needs a prompt or messages")
            messages = [{"role": "user", "content": prompt}]
        return self.complete(messages, **kw).outputs

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """One chat completion (``n`` of them with ``n=...``), retried on transient errors.

        Raises an :class:`~dspy_actors.lm.errors.LMError` subclass when it cannot succeed.
        """
        return self.send(
            self.prepare(
                messages, response_format=response_format, cache=cache, timeout=timeout, **sampling
            )
        )

    async def acomplete(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """:meth:`complete` on the running asyncio event loop: the same cache, retries
        (``Retry-After`` honoured), per-attempt ``timeout``, usage and history, with the
        HTTP on the loop (kept-alive connections of the LM's, ``_aio_posts``; aiohttp for
        a proxy); no thread waits while the request is out.

        Raises an :class:`~dspy_actors.lm.errors.LMError` subclass when it cannot succeed."""
        prepared = self.prepare(
            messages, response_format=response_format, cache=cache, timeout=timeout, **sampling
        )
        if isinstance(prepared, LMResponse):
            return prepared
        return self.settle(prepared, await self.arun(prepared))

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> Iterator[StreamEvent]:
        """Stream a completion: text deltas (``StreamEvent.text``, ``.index``) as they
        arrive, then one final event whose ``response`` has the outputs and usage.

        Transient failures are retried only until the first delta has been yielded."""
        prepared = self.prepare(
            messages, response_format=response_format, cache=cache, timeout=timeout, **sampling
        )
        if isinstance(prepared, LMResponse):  # a cache hit: its outputs, whole
            yield from _replayed(prepared)
            return
        try:
            completion = yield from self._stream(prepared)
        except LMError:
            self._count("failures")
            raise
        yield StreamEvent(index=0, response=self.settle(prepared, completion))

    async def astream(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> AsyncIterator[StreamEvent]:
        """:meth:`stream` on the running event loop: text deltas as they arrive, then one
        final event with the response. Transient failures are retried only until the
        first delta has been yielded."""
        prepared = self.prepare(
            messages, response_format=response_format, cache=cache, timeout=timeout, **sampling
        )
        if isinstance(prepared, LMResponse):
            for event in _replayed(prepared):
                yield event
            return
        parts: list[Completion] = []
        try:
            async for event in self._astream(prepared, parts):
                yield event
        except LMError:
            self._count("failures")
            raise
        yield StreamEvent(index=0, response=self.settle(prepared, parts[0]))

    # The request, phase by phase: look up, send, settle. The runtime runs the phases in
    # different places (prepare and settle in the caller's context, the send on an event
    # loop or in a worker process); complete/acomplete/stream/astream run them in a row.

    def prepare(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        known_miss: CacheMiss | None = None,
        deadline: float | None = None,
        **sampling: Any,
    ) -> LMResponse | PreparedCall:
        """Look up: resolve the sampling parameters (with the ``settings`` overrides in
        force here, so in the caller's context) and look the cache up. A hit is the
        answer; otherwise the :class:`PreparedCall` to send (:meth:`run`, :meth:`arun`)
        and then :meth:`settle`.

        Runtime plumbing, not for DSPy programs: ``known_miss`` is what :meth:`probe`
        returned for this very call (the cache is not looked up again, and the answer is
        stored under the key the probe computed); ``deadline`` is a ``time.monotonic()``
        instant bounding the whole call, retries included (each attempt's timeout is cut
        to what is left, and a retry that would start after it is not made)."""
        start = time.perf_counter()
        params = self._params(sampling)
        key: str | None
        if known_miss is not None and known_miss.lm is self:
            key = known_miss.key
        else:
            response, key = self._try_cache(messages, params, response_format, cache, start)
            if response is not None:
                return response
        return PreparedCall(messages, params, response_format, timeout, key, start, deadline)

    def send(self, prepared: LMResponse | PreparedCall) -> LMResponse:
        """What :meth:`prepare` gave, answered: a cache hit as it is, else :meth:`run`
        then :meth:`settle` in this thread."""
        if isinstance(prepared, LMResponse):
            return prepared
        return self.settle(prepared, self.run(prepared))

    def run(self, prepared: PreparedCall) -> Completion:
        """Send: the HTTP request(s) of a prepared call, retried on transient errors; no
        cache, no usage accounting. Raises an :class:`~dspy_actors.lm.errors.LMError`
        subclass (counted in :attr:`stats` as a failure)."""
        try:
            return self._send(prepared)
        except LMError:
            self._count("failures")
            raise

    async def arun(self, prepared: PreparedCall) -> Completion:
        """:meth:`run` on the running event loop. A request that must go through a SOCKS
        proxy (which aiohttp does not speak) runs :meth:`run` in a thread instead."""
        if self._aio.target(self.endpoint).needs_thread:
            return await asyncio.to_thread(self.run, prepared)
        try:
            return await self._asend(prepared)
        except LMError:
            self._count("failures")
            raise

    async def arun_streaming(
        self, prepared: PreparedCall, on_text: Callable[[int, str], Awaitable[None]]
    ) -> Completion:
        """:meth:`arun`, reading the answer as a stream: ``on_text(index, text)`` is awaited
        for each text delta as it arrives, and the next read waits for it (a receiver that
        stops taking text stops the read, and the socket's window closes). Transient
        failures are retried only before the first delta went to ``on_text``. Not
        streamed (one :meth:`arun`) with ``n > 1`` or through a SOCKS proxy."""
        if (prepared.params.get("n") or 1) > 1 or self._aio.target(self.endpoint).needs_thread:
            return await self.arun(prepared)
        parts: list[Completion] = []
        try:
            async for event in self._astream(prepared, parts):
                await on_text(event.index, event.text)
        except LMError:
            self._count("failures")
            raise
        return parts[0]

    def settle(self, prepared: PreparedCall, completion: Completion) -> LMResponse:
        """Settle: account the usage, store the answer in the cache, keep it in the
        history. Run it in the caller's context (usage meters are context-bound)."""
        response = self._finish(completion, prepared.start)
        if prepared.cache_key is not None:
            self._cache_put(prepared.cache_key, completion)
        self._note(prepared.messages, prepared.params, prepared.response_format, response)
        return response

    async def aclose(self) -> None:
        """Close this LM's connections made on the running event loop."""
        await self._aio.aclose()

    def count_remote(self, requests: int, retries: int, failed: bool) -> None:
        """Count HTTP attempts made for this LM elsewhere (by a worker process's copy)."""
        c = self._counters
        with c.lock:
            c.requests += requests
            c.retries += retries
            c.failures += int(failed)

    def cached(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> LMResponse | None:
        """The cached response to exactly this ``complete(...)`` call, or None: never any
        I/O beyond the cache. The actor runtime answers cache hits with it in the module's
        own thread, and sends only misses to its LM workers."""
        found = self.probe(
            messages, response_format=response_format, cache=cache, timeout=timeout, **sampling
        )
        return found if isinstance(found, LMResponse) else None

    def probe(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        **sampling: Any,
    ) -> LMResponse | CacheMiss | None:
        """Like :meth:`cached`, but a miss is a :class:`CacheMiss` carrying the request's
        cache key, to hand to :meth:`prepare` (``known_miss=``) so that it neither computes
        the key nor looks the cache up a second time. None: this call is not cached."""
        if not self._use_cache(cache):
            return None  # before _params: merging the settings is most of a miss's cost
        start = time.perf_counter()
        response, key = self._try_cache(
            messages, self._params(sampling), response_format, cache, start
        )
        if response is not None:
            return response
        return None if key is None else CacheMiss(self, key)

    @property
    def usage(self) -> Usage:
        """Total usage of every call this LM made (cache hits add nothing)."""
        return self._meter.total

    @property
    def meter(self) -> UsageMeter:
        return self._meter

    @property
    def stats(self) -> LMStats:
        c = self._counters
        with c.lock:
            return LMStats(c.requests, c.retries, c.cache_hits, c.failures)

    def inspect_history(self, n: int = 1) -> str:
        """The last ``n`` calls, formatted for reading: messages by role, then outputs."""
        return format_history(list(self.history)[-n:] if n > 0 else [])

    def copy(self, **defaults: Any) -> LM:
        """A new LM for the same deployment (same key) with some defaults changed."""
        return LM(
            self.model,
            api_base=self.api_base,
            api_key=self._api_key.value if self._api_key else None,
            cache=self.cache,
            cache_store=self.cache_store,
            num_retries=self.num_retries,
            timeout=self.timeout,
            retry_policy=self.retry_policy,
            verify=self._verify,
            trust_env=self._trust_env,
            **{**self.defaults, **defaults},
        )

    def worker_spec(self) -> WorkerSpec:
        """What another process needs to :meth:`run` this LM's calls (API key included:
        hand it only to a process of your own, over a private pipe). Raises ValueError if
        the LM cannot be rebuilt elsewhere (``verify`` is an ``ssl.SSLContext``)."""
        if isinstance(self._verify, ssl.SSLContext):
            raise ValueError(
                f"{self!r} has verify=<ssl.SSLContext>, which cannot be sent to an LM worker "
                "process: pass a CA bundle path instead"
            )
        return WorkerSpec(
            model=self.model,
            api_base=self.api_base,
            api_key=self._api_key.value if self._api_key else None,
            timeout=self.timeout,
            retry_policy=self.retry_policy,
            verify=self._verify,
            trust_env=self._trust_env,
            provider_options=tuple(
                (k, str(self.defaults[k]))
                for k in self._provider.endpoint_options
                if self.defaults.get(k) is not None
            ),
        )

    @classmethod
    def from_worker_spec(cls, spec: WorkerSpec) -> LM:
        """The uncached LM a worker process runs calls with (see :meth:`worker_spec`)."""
        return cls(
            spec.model,
            api_base=spec.api_base,
            api_key=spec.api_key,
            cache=False,
            timeout=spec.timeout,
            retry_policy=spec.retry_policy,
            verify=spec.verify,
            trust_env=spec.trust_env,
            **cast(dict[str, Any], dict(spec.provider_options)),
        )

    def dump_state(self) -> dict[str, Any]:
        """The LM's configuration as JSON-able data, without the API key.

        ``verify`` and ``trust_env`` appear only when they differ from the defaults. A
        ``verify=<ssl.SSLContext>`` is not data and is left out: an LM rebuilt from this
        state verifies against the default CAs."""
        state: dict[str, Any] = {
            "model": self.model,
            "api_base": self.api_base,
            "cache": self.cache,
            "num_retries": self.num_retries,
            "timeout": self.timeout,
        }
        if self._verify is not True and not isinstance(self._verify, ssl.SSLContext):
            state["verify"] = self._verify
        if not self._trust_env:
            state["trust_env"] = False
        return {**state, **self.defaults}

    def close(self) -> None:
        """Close the HTTP connections. The LM stays usable (it reconnects on demand)."""
        self._clients.close()

    def __enter__(self) -> LM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.defaults.items())
        return f"LM({self.model!r}, api_base={self.api_base!r}{extra})"

    def __deepcopy__(self, memo: dict[int, Any]) -> LM:
        # An LM is a shared client, not program state: copies of a program share it.
        return self

    def __copy__(self) -> LM:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling must not carry the API key: rebuild from the key-free state (the
        # unpickled LM reads its key from the environment).
        return (_lm_from_state, (self.dump_state(),))


def _replayed(hit: LMResponse) -> Iterator[StreamEvent]:
    """A cached response as a stream: each output whole, then the final event."""
    for index, text in enumerate(hit.outputs):
        yield StreamEvent(text, index)
    yield StreamEvent(index=0, response=hit)


def _lm_from_state(state: dict[str, Any]) -> LM:
    state = dict(state)
    model = state.pop("model")
    return LM(model, **state)
