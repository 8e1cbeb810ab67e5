"""BaseLM: DSPy's base class for an LM of your own.

Subclass it and implement ``forward(prompt=None, messages=None, **kwargs)`` returning an
OpenAI-shaped chat completion (``choices[i].message.content``, ``usage``, ``model``; a
dict or an object with those attributes), and, optionally, ``aforward`` with the same
arguments as a coroutine. Everything else comes from here, with DSPy's names:

- ``lm(prompt)`` / ``lm(messages=[...])`` returns the outputs (a list of strings, or of
  dicts when a choice carries tool calls or reasoning), records ``history`` and usage,
  and reports to the callbacks;
- ``model``, ``model_type``, ``cache``, ``num_retries``, ``callbacks`` and ``kwargs`` (the
  request defaults, ``temperature`` and ``max_tokens`` included) as DSPy sets them;
- ``copy(**changes)``, ``dump_state()`` / ``load_state(state)``, ``inspect_history(n)``.

The framework's own entry points, used by every predictor and by the actor runtime, are
``complete(messages, **kwargs)`` and ``acomplete(...)``: one call of ``forward`` (or
``aforward``) made into an :class:`~dspy_actors.lm.LMResponse`. As in DSPy, ``forward``
receives the call's own keyword arguments (not ``self.kwargs``: merging them is the
subclass's choice), the response is not cached, and a failure is not retried (wrap your
client's retries in ``forward``); a served LM still gets the runtime's circuit breaker,
fallbacks, rate limit, deadlines and ``lm.*`` events. An exception ``forward`` raises that
is not an :class:`~dspy_actors.lm.LMError` reaches the caller as :class:`LMForwardError`
(an ``LMError``, so the breaker counts it and a served module answers it rather than
crashing), with the original as its ``__cause__``.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import importlib
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, TextIO

from dspy_actors._callbacks import reporting_lm_call
from dspy_actors.lm._history import format_history, record_history
from dspy_actors.lm._types import LMResponse
from dspy_actors.lm._usage import Usage, record_usage
from dspy_actors.lm.errors import LMError, LMTimeout, MalformedResponse
from dspy_actors.lm.providers._tool_wire import openai_tool_calls
from dspy_actors.redaction import redact

__all__ = ["BaseLM", "LMForwardError"]

# Where dump_state records the class, as DSPy does, so load_state can rebuild a subclass.
LM_CLASS_STATE_KEY = "_dspy_lm_class"
MAX_HISTORY = 10_000
# Keyword arguments that steer the call itself and never reach forward().
_CALL_OPTIONS = ("cache", "timeout")


class LMForwardError(LMError):
    """A custom LM's ``forward``/``aforward`` raised something other than an ``LMError``
    (its ``__cause__``), or returned something that is not a chat completion."""


class BaseLM:
    """Base class of a custom LM (see the module docstring)."""

    #: Not a provider's wire format: JSONAdapter asks for ``json_object`` output.
    supports_json_schema: ClassVar[bool] = False
    #: Names the LM in the runtime's deployment key (breakers, rate limits, fallbacks).
    provider: ClassVar[str] = "custom"

    def __init__(
        self,
        model: str,
        model_type: str = "chat",
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: bool = True,
        callbacks: list[Any] | None = None,
        num_retries: int = 3,
        **kwargs: Any,
    ) -> None:
        """``model`` names the model; ``kwargs`` (with ``temperature`` and ``max_tokens``)
        are the request defaults kept in ``self.kwargs``, as in DSPy."""
        self.model = model
        self.model_type = model_type
        self.cache = cache
        self.callbacks = list(callbacks or [])
        self.num_retries = num_retries
        self.kwargs: dict[str, Any] = dict(temperature=temperature, max_tokens=max_tokens, **kwargs)
        self.history: list[dict[str, Any]] = []
        # Where the runtime's deployment key says this LM lives: its class, unless the
        # subclass sets the endpoint it talks to.
        self.api_base = f"{type(self).__module__}.{type(self).__qualname__}"

    @property
    def model_name(self) -> str:
        return self.model

    # ------------------------------------------------------------------ the subclass's part
    def forward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        """Return an OpenAI-shaped chat completion for one call."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        """The same, as a coroutine (optional: without it, async callers and the runtime
        run ``forward`` in a thread)."""
        raise NotImplementedError(f"{type(self).__name__} must implement aforward()")

    @classmethod
    def has_aforward(cls) -> bool:
        """Whether the subclass implements ``aforward`` (run on an event loop)."""
        return cls.aforward is not BaseLM.aforward

    # ------------------------------------------------------------------ calling it
    def __call__(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kw: Any
    ) -> list[Any]:
        """The outputs of one call: strings, or dicts where a choice has tool calls."""
        messages = _messages(prompt, messages)
        reporting = reporting_lm_call(self, messages, kw)
        if reporting is None:
            return _outputs(self.complete(messages, **kw))
        with reporting as report:
            report.outputs = _outputs(self.complete(messages, **kw))
        return report.outputs  # type: ignore[no-any-return]

    async def acall(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kw: Any
    ) -> list[Any]:
        """:meth:`__call__` from asyncio code."""
        return _outputs(await self.acomplete(_messages(prompt, messages), **kw))

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> LMResponse:
        """One call of ``forward`` as an :class:`LMResponse` (the framework's entry point:
        predictors call it). ``timeout`` is not passed on: a running ``forward`` cannot
        be cut short from outside (the runtime's deadline still answers its caller)."""
        start = time.perf_counter()
        sent = _sent(kwargs)
        try:
            raw = self.forward(prompt=None, messages=messages, **sent)
        except LMError:
            raise
        except Exception as error:
            raise self._forward_error("forward", error) from error
        return self._settle(raw, messages, sent, start)

    async def acomplete(self, messages: list[dict[str, Any]], **kwargs: Any) -> LMResponse:
        """:meth:`complete` on the running event loop: ``aforward`` if the subclass has
        one (cut to ``timeout`` seconds if given: ``LMTimeout``), else ``forward`` in a
        thread."""
        if not self.has_aforward():
            return await asyncio.to_thread(self.complete, messages, **kwargs)
        start = time.perf_counter()
        timeout = kwargs.get("timeout")
        sent = _sent(kwargs)
        try:
            async with asyncio.timeout(timeout):
                raw = await self.aforward(prompt=None, messages=messages, **sent)
        except TimeoutError as error:
            raise LMTimeout(
                f"{type(self).__name__}.aforward gave no answer within {timeout}s",
                model=self.model,
            ) from error
        except LMError:
            raise
        except Exception as error:
            raise self._forward_error("aforward", error) from error
        return self._settle(raw, messages, sent, start)

    def cached(self, messages: list[dict[str, Any]], **kwargs: Any) -> None:
        """The cached answer to this call: never one (a custom LM's answers are not cached,
        as in DSPy). Asked by the runtime's pooled LM before it sends a call."""
        return None

    def _forward_error(self, method: str, error: Exception) -> LMForwardError:
        text = redact(f"{type(error).__name__}: {error}")
        return LMForwardError(f"{type(self).__name__}.{method} raised {text}", model=self.model)

    def _settle(
        self, raw: Any, messages: list[dict[str, Any]], sent: dict[str, Any], start: float
    ) -> LMResponse:
        response = self._response(raw, start)
        record_usage(response.usage, self.model)
        self._note(raw, messages, sent, response)
        return response

    def _response(self, raw: Any, start: float) -> LMResponse:
        """The OpenAI-shaped ``raw`` as an LMResponse; MalformedResponse naming the class
        when it is not one."""
        data = _data(raw)
        choices = data.get("choices") if isinstance(data, Mapping) else None
        if not isinstance(choices, list) or not choices:
            raise MalformedResponse(
                f"{type(self).__name__}.forward returned {type(raw).__name__}, not a chat "
                "completion with choices[i].message.content",
                model=self.model,
            )
        outputs: list[str] = []
        finish: list[str | None] = []
        calls: list[list[dict[str, Any]]] = []
        for part in choices:
            choice = _data(part)
            message = _data(choice.get("message")) or {}
            text = message.get("content") if message else choice.get("text")
            outputs.append("" if text is None else str(text))
            finish.append(choice.get("finish_reason"))
            calls.append(openai_tool_calls(message) if message.get("tool_calls") else [])
        usage = _data(data.get("usage")) or {}
        return LMResponse(
            outputs,
            Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            str(data.get("model") or self.model),
            finish,
            False,
            time.perf_counter() - start,
            calls if any(calls) else None,
        )

    def _note(
        self, raw: Any, messages: list[dict[str, Any]], sent: dict[str, Any], response: LMResponse
    ) -> None:
        """A history entry with DSPy's fields (``prompt``, ``response``, ``uuid``,
        ``model_type``...) and the ones ``inspect_history`` reads."""
        entry = {
            "prompt": None,
            "messages": messages,
            "kwargs": {k: v for k, v in sent.items() if not k.startswith("api_")},
            "response": raw,
            "outputs": response.outputs,
            "finish_reasons": response.finish_reasons,
            "usage": response.usage,
            "cost": None,
            "cache_hit": False,
            "latency_s": response.latency_s,
            "timestamp": time.time(),
            "uuid": str(uuid.uuid4()),
            "model": self.model,
            "response_model": response.model,
            "model_type": self.model_type,
        }
        self.update_history(entry)

    def update_history(self, entry: dict[str, Any]) -> None:
        """Keep ``entry`` in this LM's history (bounded) and the process-wide one."""
        if len(self.history) >= MAX_HISTORY:
            del self.history[0]
        self.history.append(entry)
        record_history(entry)

    def inspect_history(self, n: int = 1, file: TextIO | None = None) -> str:
        """Print this LM's last ``n`` calls (messages by role, then outputs) to ``file``
        (default: stdout), as DSPy does; return the text too."""
        text = format_history(self.history[-n:] if n > 0 else [])
        print(text, file=file)
        return text

    # ------------------------------------------------------------------ state
    def copy(self, **kwargs: Any) -> BaseLM:
        """A shallow copy (clients shared) with its own history, callbacks and kwargs; each
        change sets the attribute of that name, and goes into ``kwargs`` if it is a request
        parameter there already or no attribute (None removes it), as in DSPy."""
        new = copy_module.copy(self)
        new.history = []
        new.callbacks = list(self.callbacks)
        new.kwargs = dict(self.kwargs)
        for key, value in kwargs.items():
            if hasattr(new, key):
                setattr(new, key, value)
            if key in new.kwargs or not hasattr(self, key):
                if value is None:
                    new.kwargs.pop(key, None)
                else:
                    new.kwargs[key] = value
        return new

    def dump_state(self) -> dict[str, Any]:
        """What :meth:`load_state` rebuilds the LM from (the class, model and kwargs;
        never an ``api_key``). A subclass with more state overrides both."""
        kwargs = {k: v for k, v in self.kwargs.items() if k not in ("api_key", LM_CLASS_STATE_KEY)}
        return {
            LM_CLASS_STATE_KEY: f"{type(self).__module__}.{type(self).__qualname__}",
            "model": self.model,
            "model_type": self.model_type,
            "cache": self.cache,
            "num_retries": self.num_retries,
            **kwargs,
        }

    @classmethod
    def load_state(cls, state: Mapping[str, Any], *, allow_custom_lm_class: bool = False) -> BaseLM:
        """Rebuild an LM from :meth:`dump_state`. On ``BaseLM`` itself the recorded class
        is imported only with ``allow_custom_lm_class=True`` (it runs that module's code:
        trusted state only); on a subclass, that subclass is built."""
        state = dict(state)
        class_path = state.pop(LM_CLASS_STATE_KEY, None)
        if cls is not BaseLM:
            return cls(**state)
        if class_path is None:
            raise ValueError("this LM state names no class (no _dspy_lm_class key)")
        if not allow_custom_lm_class:
            raise ValueError(
                f"refusing to import the LM class {class_path!r} named in this state; pass "
                "allow_custom_lm_class=True for state you trust"
            )
        module_name, _, name = str(class_path).rpartition(".")
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
        if not (isinstance(found, type) and issubclass(found, BaseLM)):
            raise TypeError(f"{class_path!r} is not a dspy_actors.BaseLM subclass")
        return found.load_state(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def _messages(prompt: str | None, messages: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if messages is not None:
        return messages
    if prompt is None:
        raise TypeError("an LM call needs a prompt or messages=[...]")
    return [{"role": "user", "content": prompt}]


def _sent(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's keyword arguments forward() gets: all but the call options."""
    return {k: v for k, v in kwargs.items() if k not in _CALL_OPTIONS}


def _outputs(response: LMResponse) -> list[Any]:
    """DSPy's outputs: the texts, or per choice a dict when it also has tool calls."""
    if not response.tool_calls:
        return list(response.outputs)
    return [
        {"text": text, "tool_calls": calls} if calls else {"text": text}
        for text, calls in zip(response.outputs, response.tool_calls, strict=True)
    ]


def _data(value: Any) -> Any:
    """A response part as a mapping: a dict as it is, a pydantic model dumped, another
    object's attributes; anything else as it is."""
    if value is None or isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    if hasattr(value, "__dict__"):
        return vars(value)
    return value
