"""Tool calls of served agents: events, and quarantine to the dead letters.

An app owns one :class:`~dspy_actors.modules.tool_runner.ToolRunner` built here and hands
it to every call it serves (the ``tool_runner`` setting travels with the call's context),
so a served agent's tool calls publish ``tool.start`` / ``tool.end`` events, and a tool
that keeps failing on the same arguments is written to the app's dead-letter store (program
``tool:<name>``) and refused from then on.

Where a tool call waits: :func:`dspy_actors.modules.tool_runner.wait_for_tool`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dspy_actors.modules.tool_runner import ToolOutcome, ToolRunner
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._context import current
from dspy_actors.runtime._dead_letters import DeadLetterStore
from dspy_actors.signatures.custom_types._tool import Tool

__all__ = ["TOOL_LETTER_PREFIX", "ToolEnd", "ToolStart", "served_tool_runner"]

# The dead letters of quarantined tool calls are filed under program "tool:<name>".
TOOL_LETTER_PREFIX = "tool:"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolStart(ev.Event):
    """An agent called a tool."""

    topic: ClassVar[str] = "tool.start"
    tool: str
    call_id: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolEnd(ev.Event):
    """A tool call ended: ``outcome`` is ok, error, timeout (abandoned), bad_arguments,
    busy (no concurrency slot in time) or quarantined."""

    topic: ClassVar[str] = "tool.end"
    tool: str
    call_id: str
    outcome: str
    latency_s: float = 0.0
    error_type: str = ""
    message: str = ""
    dead_letter_id: str | None = None

    def log_level(self) -> str:
        return "info" if self.outcome == "ok" else "warning"


def served_tool_runner(
    publish: Callable[[ev.Event], None],
    listening: Callable[[], bool],
    dead_letters: Callable[[], DeadLetterStore | None],
    **options: Any,
) -> ToolRunner:
    """A runner that publishes tool events (while anyone ``listening``) and quarantines to
    the store ``dead_letters()`` returns."""

    def trace_id() -> str | None:
        ctx = current()
        return None if ctx is None else ctx.trace_id

    def on_start(tool: str, call_id: str, args: Mapping[str, Any]) -> None:
        if listening():
            publish(ToolStart(trace_id=trace_id(), tool=tool, call_id=call_id, args=dict(args)))

    def on_end(outcome: ToolOutcome) -> None:
        if not listening():
            return
        error = outcome.error
        publish(
            ToolEnd(
                trace_id=trace_id(),
                tool=outcome.tool,
                call_id=outcome.call_id,
                outcome=outcome.outcome,
                latency_s=outcome.latency_s,
                error_type="" if error is None else type(error).__name__,
                message="" if error is None else str(error)[:500],
                dead_letter_id=outcome.dead_letter_id,
            )
        )

    def on_quarantine(
        tool: Tool, args: Mapping[str, Any], error: BaseException, failures: int
    ) -> str | None:
        store = dead_letters()
        if store is None:
            return None
        program = f"{TOOL_LETTER_PREFIX}{tool.name}"
        letter = store.add(
            program=program, module_path=tool.name, inputs=args, exception=error, attempts=failures
        )
        publish(
            ev.DeadLetterEvent(
                trace_id=trace_id(),
                dead_letter_id=letter.id,
                program=program,
                module_path=tool.name,
                exception_type=letter.exception_type,
                attempts=failures,
            )
        )
        return letter.id

    return _DeadlineBoundRunner(
        on_start=on_start,
        on_end=on_end,
        on_quarantine=on_quarantine,
        **options,
    )


class _DeadlineBoundRunner(ToolRunner):
    """Tool calls of a served call end by that call's deadline at the latest."""

    def run(
        self, tool: Tool, args: Mapping[str, Any], *, timeout: float | None = None
    ) -> ToolOutcome:
        ctx = current()
        remaining = None if ctx is None else ctx.remaining()
        if remaining is not None:
            timeout = remaining if timeout is None else min(timeout, remaining)
        # A streamed call announces its tool calls (handle.stream's StatusMessages).
        tap = None if ctx is None or ctx.streaming is None else ctx.streaming.root
        if tap is not None:
            tap.say("tool_start_status_message", tool, dict(args))
        outcome = super().run(tool, args, timeout=timeout)
        if tap is not None:
            tap.say("tool_end_status_message", outcome.observation)
        return outcome
