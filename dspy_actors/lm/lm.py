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
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import aiohttp
import httpx

from dspy_actors import settings
from dspy_actors.lm._aio_transport import AioClients, aiter_sse
from dspy_actors.lm._retry_listener import note_retry
from dspy_actors.lm.cache import Cache, cache_key, default_cache
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    LMConnectionError,
    LMError,
    LMTimeout,
    MalformedResponse,
)
from dspy_actors.lm.history import format_history, record_history
from dspy_actors.lm.providers import resolve_model
from dspy_actors.lm.providers.base import iter_sse
from dspy_actors.lm.retry import RetryPolicy, acall_with_retries, call_with_retries, retry_delay
from dspy_actors.lm.transport import ClientPool
from dspy_actors.lm.types import Completion, LMResponse, StreamEvent
from dspy_actors.lm.usage import ZERO_USAGE, Usage, UsageMeter, record_usage
from dspy_actors.redaction import clean_api_key, redact

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


# Built once: json.dumps with options builds a new encoder on every call.
_BODY_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CacheMiss:
    """A cache lookup that missed, and the key the answer belongs under (see ``LM.probe``)."""

    lm: LM
    key: str


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """An uncached completion whose parameters are resolved (see ``LM.prepare``): what
    ``LM.run`` sends, and where ``LM.settle`` stores the answer (``cache_key``)."""

    messages: list[dict[str, Any]]
    params: Mapping[str, Any]
    response_format: dict[str, Any] | None
    timeout: float | None
    cache_key: str | None
    start: float
    # A time.monotonic() instant no attempt may outlast (the runtime's call deadline).
    deadline: float | None = None


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


class _Counters:
    __slots__ = ("cache_hits", "failures", "lock", "requests", "retries")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.retries = self.cache_hits = self.failures = 0


class LM:
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
        known_miss: CacheMiss | None = None,
        deadline: float | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """One chat completion (``n`` of them with ``n=...``), retried on transient errors.

        ``known_miss``: what :meth:`probe` returned for this very call, made just before (in
        another thread, say): the cache is not looked up again, and the answer is stored
        under the key the probe computed.

        ``deadline``: a ``time.monotonic()`` instant that bounds the whole call, retries
        included: each attempt's timeout is cut to what is left, and a retry that would
        start after it is not made (the last error is raised).

        Raises an :class:`~dspy_actors.lm.errors.LMError` subclass when it cannot succeed.
        """
        prepared = self.prepare(
            messages,
            response_format=response_format,
            cache=cache,
            timeout=timeout,
            known_miss=known_miss,
            deadline=deadline,
            **sampling,
        )
        if isinstance(prepared, LMResponse):
            return prepared
        try:
            completion = self.run(prepared)
        except LMError:
            self._count("failures")
            raise
        return self.settle(prepared, completion)

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
        """The first of :meth:`complete`'s three phases, in the caller's context: resolve
        the sampling parameters (with the ``settings`` overrides in force here) and look
        the cache up. A hit is the answer; otherwise the :class:`PreparedCall` to
        :meth:`run` (the blocking HTTP part, which may run in another thread or process)
        and then :meth:`settle`."""
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

    def run(self, prepared: PreparedCall) -> Completion:
        """The HTTP request(s) of a prepared call, retried on transient errors; no cache,
        no usage accounting. Raises an :class:`~dspy_actors.lm.errors.LMError` subclass."""
        return self._complete_uncached(
            prepared.messages,
            prepared.params,
            prepared.response_format,
            prepared.timeout,
            prepared.deadline,
        )

    def settle(self, prepared: PreparedCall, completion: Completion) -> LMResponse:
        """The last phase: account the usage, store the answer in the cache, keep it in
        the history. Run it in the caller's context (usage meters are context-bound)."""
        response = self._finish(completion, prepared.start)
        if prepared.cache_key is not None:
            self._cache_put(prepared.cache_key, completion)
        self._note(prepared.messages, prepared.params, prepared.response_format, response)
        return response

    async def acomplete(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        cache: bool | None = None,
        timeout: float | None = None,
        known_miss: CacheMiss | None = None,
        deadline: float | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """:meth:`complete` on the running asyncio event loop: the same cache, retries
        (``Retry-After`` honoured), per-attempt ``timeout``, ``deadline``, usage and
        history, with the HTTP over aiohttp; no thread waits while the request is out.

        Raises an :class:`~dspy_actors.lm.errors.LMError` subclass when it cannot succeed."""
        prepared = self.prepare(
            messages,
            response_format=response_format,
            cache=cache,
            timeout=timeout,
            known_miss=known_miss,
            deadline=deadline,
            **sampling,
        )
        if isinstance(prepared, LMResponse):
            return prepared
        try:
            completion = await self.arun(prepared)
        except LMError:
            self._count("failures")
            raise
        return self.settle(prepared, completion)

    async def arun(self, prepared: PreparedCall) -> Completion:
        """:meth:`run` on the running event loop. A request that must go through a SOCKS
        proxy (which aiohttp does not speak) runs :meth:`run` in a thread instead."""
        if self._aio.target(self.endpoint).needs_thread:
            return await asyncio.to_thread(self.run, prepared)
        params, response_format = prepared.params, prepared.response_format
        n = params.get("n") or 1
        if n > 1 and not self._provider.supports_n:
            one = {k: v for k, v in params.items() if k != "n"}
            content = self._body(prepared.messages, one, response_format, False)
            parts = [
                await self._apost_with_retries(content, prepared.timeout, prepared.deadline)
                for _ in range(n)
            ]
            return _merge(parts)
        content = self._body(prepared.messages, params, response_format, False)
        return await self._apost_with_retries(content, prepared.timeout, prepared.deadline)

    async def arun_streaming(
        self, prepared: PreparedCall, on_text: Callable[[int, str], Awaitable[None]]
    ) -> Completion:
        """:meth:`arun`, reading the answer as a stream: ``on_text(index, text)`` is awaited
        for each text delta as it arrives, and the next read waits for it (a receiver that
        stops taking text stops the read, and the socket's window closes). Transient
        failures are retried only before the first delta went to ``on_text``. Not
        streamed (one :meth:`arun`) with ``n > 1`` or through a SOCKS proxy."""
        params = prepared.params
        if (params.get("n") or 1) > 1 or self._aio.target(self.endpoint).needs_thread:
            return await self.arun(prepared)
        parts: list[Completion] = []
        async for event in self._astream_once(
            prepared.messages,
            params,
            prepared.response_format,
            prepared.timeout,
            0,
            parts,
        ):
            await on_text(event.index, event.text)
        return parts[0]

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
        cache key, to hand to :meth:`complete` (``known_miss=``) so that it neither computes
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

    def _try_cache(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: dict[str, Any] | None,
        cache: bool | None,
        start: float,
    ) -> tuple[LMResponse | None, str | None]:
        """(the cached response or None, the request's cache key or None if uncached)."""
        if not self._use_cache(cache):
            return None, None
        found = self._cache_lookup(messages, params, response_format)
        if found is None:
            return None, None
        store, key = found
        hit = store.get(key)
        if hit is not None:
            response = self._from_cache(hit, start)
            if response is not None:
                self._note(messages, params, response_format, response)
                return response, key
        return None, key

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
        start = time.perf_counter()
        params = self._params(sampling)
        key = None
        found = (
            self._cache_lookup(messages, params, response_format)
            if self._use_cache(cache)
            else None
        )
        if found is not None:
            store, key = found
            hit = store.get(key)
            response = self._from_cache(hit, start) if hit is not None else None
            if response is not None:
                for index, text in enumerate(response.outputs):
                    yield StreamEvent(text, index)
                self._note(messages, params, response_format, response)
                yield StreamEvent(index=0, response=response)
                return
        n = params.get("n") or 1
        try:
            if n > 1 and not self._provider.supports_n:
                one = {k: v for k, v in params.items() if k != "n"}
                parts: list[Completion] = []
                for i in range(n):
                    parts.append(
                        (yield from self._stream_once(messages, one, response_format, timeout, i))
                    )
                completion = _merge(parts)
            else:
                completion = yield from self._stream_once(
                    messages, params, response_format, timeout, 0
                )
        except LMError:
            self._count("failures")
            raise
        response = self._finish(completion, start)
        if key is not None:
            self._cache_put(key, completion)
        self._note(messages, params, response_format, response)
        yield StreamEvent(index=0, response=response)

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
        start = time.perf_counter()
        params = self._params(sampling)
        hit, key = self._try_cache(messages, params, response_format, cache, start)
        if hit is not None:
            for index, text in enumerate(hit.outputs):
                yield StreamEvent(text, index)
            yield StreamEvent(index=0, response=hit)
            return
        n = params.get("n") or 1
        parts: list[Completion] = []
        try:
            if n > 1 and not self._provider.supports_n:
                one = {k: v for k, v in params.items() if k != "n"}
                for i in range(n):
                    async for event in self._astream_once(
                        messages, one, response_format, timeout, i, parts
                    ):
                        yield event
            else:
                async for event in self._astream_once(
                    messages, params, response_format, timeout, 0, parts
                ):
                    yield event
        except LMError:
            self._count("failures")
            raise
        completion = _merge(parts) if len(parts) > 1 else parts[0]
        response = self._finish(completion, start)
        if key is not None:
            self._cache_put(key, completion)
        self._note(messages, params, response_format, response)
        yield StreamEvent(index=0, response=response)

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

    # ---------------------------------------------------------------- internals
    def _params(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        overrides = settings.sampling_overrides()
        if not overrides and not sampling:
            return self.defaults
        return {**self.defaults, **overrides, **sampling}

    def _use_cache(self, per_call: bool | None) -> bool:
        if per_call is not None:
            return per_call
        return self.cache and settings.get("cache", True) is not False

    def _cache_lookup(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
    ) -> tuple[Cache, str] | None:
        """The cache and this request's key, or None if the request cannot be keyed
        (a parameter that is not JSON data): such a call simply goes uncached."""
        store = self.cache_store
        if store is None:
            store = self.cache_store = default_cache()
        request = {
            "provider": self.provider,
            "api_base": self.api_base,
            "model": self.model_name,
            "messages": messages,
            "response_format": response_format,
            "params": params,
        }
        try:
            return store, cache_key(request)
        except (TypeError, ValueError):
            return None

    def _cache_put(self, key: str, completion: Completion) -> None:
        assert self.cache_store is not None
        self.cache_store.put(
            key,
            {
                "outputs": completion.outputs,
                "finish_reasons": completion.finish_reasons,
                "model": completion.model,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "tool_calls": completion.tool_calls,
            },
        )

    def _from_cache(self, hit: Mapping[str, Any], start: float) -> LMResponse | None:
        try:
            outputs = list(hit["outputs"])
            finish = list(hit.get("finish_reasons") or [None] * len(outputs))
            model = str(hit.get("model") or self.model_name)
        except (KeyError, TypeError):
            return None  # an entry we cannot read is a miss
        self._count("cache_hits")
        elapsed = time.perf_counter() - start
        calls = hit.get("tool_calls")
        return LMResponse(outputs, ZERO_USAGE, model, finish, True, elapsed, calls or None)

    def _finish(self, completion: Completion, start: float) -> LMResponse:
        calls = max(1, len(completion.outputs)) if not self._provider.supports_n else 1
        usage = Usage(completion.prompt_tokens, completion.completion_tokens, calls)
        self._meter.add(usage)
        record_usage(usage, self.model)
        return LMResponse(
            completion.outputs,
            usage,
            completion.model,
            completion.finish_reasons,
            False,
            time.perf_counter() - start,
            completion.tool_calls,
        )

    def _note(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        response: LMResponse,
    ) -> None:
        kwargs = dict(params)
        if response_format is not None:
            kwargs["response_format"] = response_format
        entry = {
            "model": self.model,
            "messages": messages,
            "kwargs": kwargs,
            "outputs": response.outputs,
            "finish_reasons": response.finish_reasons,
            "usage": response.usage,
            "cost": response.usage.cost,
            "cache_hit": response.cache_hit,
            "latency_s": response.latency_s,
            "timestamp": time.time(),
        }
        self.history.append(entry)
        record_history(entry)  # the process-wide history (dspy_actors.inspect_history)

    def _count(self, name: str, amount: int = 1) -> None:
        c = self._counters
        with c.lock:
            setattr(c, name, getattr(c, name) + amount)

    def _on_retry(self, error: LMError, delay: float) -> None:
        self._count("retries")
        note_retry(error, delay)  # the runtime's lm.retry event, with the call's trace id

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
        return _BODY_ENCODER.encode(body).encode()

    def _complete_uncached(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        timeout: float | None,
        deadline: float | None = None,
    ) -> Completion:
        n = params.get("n") or 1
        if n > 1 and not self._provider.supports_n:
            one = {k: v for k, v in params.items() if k != "n"}
            content = self._body(messages, one, response_format, False)
            return _merge([self._post_with_retries(content, timeout, deadline) for _ in range(n)])
        return self._post_with_retries(
            self._body(messages, params, response_format, False), timeout, deadline
        )

    def _post_with_retries(
        self, content: bytes, timeout: float | None, deadline: float | None = None
    ) -> Completion:
        def attempt() -> Completion:
            limit = self.timeout if timeout is None else timeout
            if deadline is not None:  # never wait past the deadline, retries included
                limit = max(0.001, min(limit, deadline - time.monotonic()))
            return self._post(content, limit)

        return call_with_retries(
            attempt,
            self.retry_policy,
            rng=self._rng,
            on_retry=self._on_retry,
            deadline=deadline,
        )

    def _post(self, content: bytes, timeout: float | None) -> Completion:
        self._count("requests")
        try:
            r = self._clients.post(
                self.endpoint, content, timeout if timeout is not None else self.timeout
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, timeout) from exc
        return self._answer(r.status_code, r.headers, r.content)

    def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> Completion:
        """The completion in an HTTP answer, or the error it says (either transport's)."""
        if status >= 300:
            raise self._scrub(
                self._provider.error(
                    status, headers, body, endpoint=self.endpoint, model=self.model
                )
            )
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise MalformedResponse(
                f"HTTP {status} with a body that is not JSON: {body[:200]!r}",
                endpoint=self.endpoint,
                model=self.model,
            ) from exc
        return self._provider.parse(data, endpoint=self.endpoint, model=self.model)

    async def _apost_with_retries(
        self, content: bytes, timeout: float | None, deadline: float | None
    ) -> Completion:
        async def attempt() -> Completion:
            limit = self.timeout if timeout is None else timeout
            if deadline is not None:  # never wait past the deadline, retries included
                limit = max(0.001, min(limit, deadline - time.monotonic()))
            return await self._apost(content, limit)

        return await acall_with_retries(
            attempt, self.retry_policy, rng=self._rng, on_retry=self._on_retry, deadline=deadline
        )

    async def _apost(self, content: bytes, limit: float) -> Completion:
        self._count("requests")
        try:
            status, headers, body = await self._aio.post(self.endpoint, content, limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._aio_error(exc, limit) from exc
        return self._answer(status, headers, body)

    async def _astream_once(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        timeout: float | None,
        index_offset: int,
        into: list[Completion],
    ) -> AsyncIterator[StreamEvent]:
        """Yield the StreamEvents of one streamed request, then append its Completion to
        ``into``. Retries transient failures while nothing has been yielded yet."""
        content = self._body(messages, params, response_format, True)
        limit = timeout if timeout is not None else self.timeout
        if self._aio.target(self.endpoint).needs_thread:
            raise LMConnectionError(
                "astream() cannot go through a SOCKS proxy: use stream() in a thread",
                endpoint=self.endpoint,
                model=self.model,
            )
        policy = self.retry_policy
        attempt = 0
        while True:
            yielded = False
            try:
                self._count("requests")
                acc = self._provider.accumulator(endpoint=self.endpoint, model=self.model)
                try:
                    async with self._aio.stream(self.endpoint, content, limit) as r:
                        if r.status >= 300:
                            body = await r.read()
                            raise self._scrub(
                                self._provider.error(
                                    r.status,
                                    r.headers,
                                    body,
                                    endpoint=self.endpoint,
                                    model=self.model,
                                )
                            )
                        async for event, data in aiter_sse(r):
                            for index, text in acc.feed(event, data):
                                yielded = True
                                yield StreamEvent(text, index + index_offset)
                            if acc.finished:
                                break
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise self._aio_error(exc, limit) from exc
                if not acc.finished:
                    raise LMConnectionError(
                        "stream ended before its end marker",
                        endpoint=self.endpoint,
                        model=self.model,
                    )
                into.append(acc.completion())
                return
            except LMError as exc:
                if yielded or not exc.retryable or attempt >= policy.max_retries:
                    raise
                delay = retry_delay(exc, attempt, policy, self._rng)
                self._on_retry(exc, delay)
                await asyncio.sleep(delay)
                attempt += 1

    def _aio_error(self, exc: BaseException, limit: float) -> LMError:
        if isinstance(exc, TimeoutError):
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

    def _stream_once(
        self,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        timeout: float | None,
        index_offset: int,
    ) -> Generator[StreamEvent, None, Completion]:
        """Yield StreamEvents of one streamed request; return its Completion. Retries
        transient failures while nothing has been yielded yet."""
        content = self._body(messages, params, response_format, True)
        policy = self.retry_policy
        attempt = 0
        while True:
            yielded = False
            try:
                self._count("requests")
                acc = self._provider.accumulator(endpoint=self.endpoint, model=self.model)
                try:
                    with self._clients.stream(
                        self.stream_endpoint,
                        content,
                        timeout if timeout is not None else self.timeout,
                    ) as r:
                        if r.status_code >= 300:
                            r.read()
                            raise self._scrub(
                                self._provider.error(
                                    r.status_code,
                                    r.headers,
                                    r.content,
                                    endpoint=self.endpoint,
                                    model=self.model,
                                )
                            )
                        for event, data in iter_sse(r.iter_lines()):
                            for index, text in acc.feed(event, data):
                                yielded = True
                                yield StreamEvent(text, index + index_offset)
                            if acc.finished:
                                break
                except httpx.HTTPError as exc:
                    raise self._transport_error(exc, timeout) from exc
                if not acc.finished:
                    raise LMConnectionError(
                        "stream ended before its end marker",
                        endpoint=self.endpoint,
                        model=self.model,
                    )
                return acc.completion()
            except LMError as exc:
                if yielded or not exc.retryable or attempt >= policy.max_retries:
                    raise
                delay = retry_delay(exc, attempt, policy, self._rng)
                self._on_retry(exc, delay)
                time.sleep(delay)
                attempt += 1

    def _transport_error(self, exc: httpx.HTTPError, timeout: float | None) -> LMError:
        if isinstance(exc, httpx.TimeoutException):
            limit = timeout if timeout is not None else self.timeout
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


def _merge(parts: list[Completion]) -> Completion:
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


def _lm_from_state(state: dict[str, Any]) -> LM:
    state = dict(state)
    model = state.pop("model")
    return LM(model, **state)
