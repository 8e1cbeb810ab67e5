"""``ToolRunner``: run an agent's tool calls under supervision.

Each tool call runs in its own short-lived thread, so the agent waits for it with a timeout
and never forever: a tool that does not answer in time is *abandoned* (its thread is left
to finish on its own, counted, and keeps holding its concurrency slot until it does, so a
tool that hangs again and again cannot pile up unbounded threads). A failure, a timeout or
bad arguments become the *observation* the agent sees, as in DSPy, never an exception
that takes the agent down. A tool that fails ``quarantine_after`` times on the same
arguments is quarantined: later calls with those arguments are refused at once, and the
``on_quarantine`` hook (the runtime writes a dead letter) is told once.

The runtime gives served agents a runner wired to its event bus and dead-letter store
(:mod:`dspy_actors.runtime._tools`); in-process, an agent uses a plain one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Literal

from dspy_actors.signatures.custom_types._tool import Tool, ToolArgumentError
from dspy_actors.waiting import wait_future

__all__ = ["ToolOutcome", "ToolRunner", "ToolTimeout"]

Outcome = Literal["ok", "error", "timeout", "bad_arguments", "busy", "quarantined"]


class ToolTimeout(TimeoutError):
    """A tool did not answer within its timeout (it was abandoned)."""


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What one supervised tool call came to. ``observation`` is what the agent sees: the
    tool's value, or a text naming the tool and what went wrong."""

    tool: str
    call_id: str
    outcome: Outcome
    observation: Any
    latency_s: float
    error: BaseException | None = None
    dead_letter_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(slots=True)
class _ToolState:
    slots: threading.BoundedSemaphore
    counts: Counter[str] = field(default_factory=Counter)
    running: int = 0  # threads still running this tool, abandoned ones included


StartHook = Callable[[str, str, Mapping[str, Any]], None]  # tool, call id, args
EndHook = Callable[[ToolOutcome], None]
QuarantineHook = Callable[[Tool, Mapping[str, Any], BaseException, int], "str | None"]


class ToolRunner:
    """Runs tool calls with a per-tool timeout and concurrency limit (a tool's own
    ``timeout``/``max_concurrency``, else these defaults), turning every failure into an
    observation. Thread-safe: many agents may share one runner."""

    def __init__(
        self,
        *,
        default_timeout: float = 30.0,
        default_max_concurrency: int = 16,
        quarantine_after: int = 3,
        on_start: StartHook | None = None,
        on_end: EndHook | None = None,
        on_quarantine: QuarantineHook | None = None,
        thread_name_prefix: str = "tool",
    ) -> None:
        if default_timeout <= 0 or default_max_concurrency < 1 or quarantine_after < 1:
            raise ValueError(
                "ToolRunner needs default_timeout > 0, default_max_concurrency >= 1 and "
                f"quarantine_after >= 1 (got {default_timeout}, {default_max_concurrency}, "
                f"{quarantine_after})"
            )
        self.default_timeout = default_timeout
        self.default_max_concurrency = default_max_concurrency
        self.quarantine_after = quarantine_after
        self.on_start = on_start
        self.on_end = on_end
        self.on_quarantine = on_quarantine
        self.thread_name_prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._tools: dict[str, _ToolState] = {}
        self._failures: Counter[tuple[str, str]] = Counter()
        self._quarantined: dict[tuple[str, str], str | None] = {}
        self._threads: set[threading.Thread] = set()
        self._ids = itertools.count(1)

    # -- public -------------------------------------------------------------------------
    def run(
        self, tool: Tool, args: Mapping[str, Any], *, timeout: float | None = None
    ) -> ToolOutcome:
        """Call ``tool`` with ``args``; never raises for anything the tool or its arguments
        do, and never waits longer than the timeout (``timeout`` caps the tool's own, e.g.
        to a call's remaining deadline)."""
        call_id = f"{tool.name}-{next(self._ids)}"
        limit = tool.timeout or self.default_timeout
        limit = limit if timeout is None else max(0.0, min(limit, timeout))
        started = time.monotonic()
        args = dict(args) if isinstance(args, Mapping) else args
        if self.on_start is not None:
            self.on_start(tool.name, call_id, args if isinstance(args, dict) else {})
        outcome = self._run(tool, args, call_id, limit, started)
        if self.on_end is not None:
            self.on_end(outcome)
        return outcome

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tool: calls by outcome, and ``running`` (threads still in the tool, abandoned
        ones included)."""
        with self._lock:
            return {
                name: {**state.counts, "running": state.running}
                for name, state in self._tools.items()
            }

    def quarantined(self) -> dict[tuple[str, str], str | None]:
        """Quarantined (tool, arguments-as-JSON) pairs and their dead-letter ids."""
        with self._lock:
            return dict(self._quarantined)

    def release(self, tool_name: str, args: Mapping[str, Any]) -> bool:
        """Let ``tool_name`` run with ``args`` again (after fixing the tool)."""
        key = (tool_name, _fingerprint(args))
        with self._lock:
            self._failures.pop(key, None)
            return self._quarantined.pop(key, "") != ""

    def join(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for every tool thread to end; True if all did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    # -- one call ------------------------------------------------------------------------
    def _run(
        self, tool: Tool, args: Any, call_id: str, limit: float, started: float
    ) -> ToolOutcome:
        def outcome(
            kind: Outcome,
            observation: Any,
            error: BaseException | None = None,
            letter: str | None = None,
        ) -> ToolOutcome:
            with self._lock:
                self._state(tool).counts[kind] += 1
            return ToolOutcome(
                tool.name, call_id, kind, observation, time.monotonic() - started, error, letter
            )

        try:
            parsed = tool.validate_args(args)
        except ToolArgumentError as exc:
            return outcome("bad_arguments", _error_text(tool.name, exc), exc)
        key = (tool.name, _fingerprint(parsed))
        with self._lock:
            state = self._state(tool)
            if key in self._quarantined:
                letter = self._quarantined[key]
                text = (
                    f"Execution error in {tool.name}: these arguments are quarantined after "
                    f"{self._failures[key]} failures"
                    + (f" (dead letter {letter})" if letter else "")
                )
                state.counts["quarantined"] += 1
                return ToolOutcome(tool.name, call_id, "quarantined", text, 0.0, None, letter)
        if not state.slots.acquire(timeout=limit):
            busy = ToolTimeout(
                f"tool {tool.name!r} is at its concurrency limit and no slot freed in {limit:.3g}s"
            )
            return outcome("busy", _error_text(tool.name, busy), busy)
        # One budget for the whole call: time spent waiting for a slot counts against it.
        left = max(0.0, limit - (time.monotonic() - started))
        future: Future[Any] = Future()
        thread = threading.Thread(
            target=self._thread_main,
            args=(tool, parsed, future, state),
            name=f"{self.thread_name_prefix}-{call_id}",
            daemon=True,  # an abandoned, hung tool must not keep the process alive
        )
        with self._lock:
            state.running += 1
            self._threads.add(thread)
        thread.start()
        try:
            value = wait_for_tool(future, left)
        except FutureTimeout:
            hung = ToolTimeout(f"tool {tool.name!r} did not answer within {limit:.3g}s")
            letter = self._count_failure(tool, parsed, key, hung)
            return outcome("timeout", _error_text(tool.name, hung), hung, letter)
        except Exception as exc:
            letter = self._count_failure(tool, parsed, key, exc)
            return outcome("error", _error_text(tool.name, exc), exc, letter)
        with self._lock:
            self._failures.pop(key, None)
        return outcome("ok", value)

    def _thread_main(
        self, tool: Tool, parsed: dict[str, Any], future: Future[Any], state: _ToolState
    ) -> None:
        try:
            result = asyncio.run(tool.func(**parsed)) if tool.is_async else tool.func(**parsed)
        except BaseException as exc:  # the agent gets it as an observation
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            state.slots.release()
            with self._lock:
                state.running -= 1
                self._threads.discard(threading.current_thread())

    def _count_failure(
        self, tool: Tool, parsed: Mapping[str, Any], key: tuple[str, str], error: BaseException
    ) -> str | None:
        with self._lock:
            self._failures[key] += 1
            failures = self._failures[key]
            if failures < self.quarantine_after or key in self._quarantined:
                return None
            self._quarantined[key] = None  # claimed: only one caller writes the letter
        letter = None
        if self.on_quarantine is not None:
            letter = self.on_quarantine(tool, parsed, error, failures)
        with self._lock:
            if key in self._quarantined:
                self._quarantined[key] = letter
        return letter

    def _state(self, tool: Tool) -> _ToolState:
        state = self._tools.get(tool.name)
        if state is None:
            slots = tool.max_concurrency or self.default_max_concurrency
            state = self._tools[tool.name] = _ToolState(threading.BoundedSemaphore(slots))
        return state


def wait_for_tool(future: Future[Any], timeout: float) -> Any:
    """The one place an agent waits for a tool, for at most ``timeout`` seconds (raising
    ``concurrent.futures.TimeoutError``). Served, an agent's ``forward`` runs on a forward
    greenlet, which this parks so its module actor serves other calls meanwhile; elsewhere
    the calling thread blocks."""
    return wait_future(future, timeout)


def _fingerprint(args: Mapping[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, default=repr, ensure_ascii=False)


def _error_text(tool: str, error: BaseException) -> str:
    # DSPy's observation for a failed tool call.
    return f"Execution error in {tool}: {type(error).__name__}: {error}"
