"""The bookkeeping around an :class:`~dspy_actors.lm.LM`'s requests: resolving the
sampling parameters, the cache lookup (one, shared by every entry point, through
``LM.prepare``) and put, and settling an answer: usage to the meters, the history.

``_Books`` is a mixin of ``LM`` (the attributes it declares are set by ``LM.__init__``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dspy_actors import _settings as settings
from dspy_actors.lm._history import record_history
from dspy_actors.lm._types import Completion, LMResponse
from dspy_actors.lm._usage import ZERO_USAGE, Usage, UsageMeter, record_usage
from dspy_actors.lm.cache import Cache, cache_key, default_cache


class _Books:
    """Look-up and settling (see the module docstring)."""

    model: str
    model_name: str
    provider: str
    api_base: str
    cache: bool
    cache_store: Cache | None
    defaults: dict[str, Any]
    history: deque[dict[str, Any]]
    _meter: UsageMeter
    _provider: Any

    if TYPE_CHECKING:

        def _count(self, name: str, amount: int = 1) -> None: ...  # _Sending's

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
