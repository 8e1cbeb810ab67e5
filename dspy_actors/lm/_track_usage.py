"""``track_usage()``: the LM usage of a block of code, by model (DSPy's ``track_usage``).

    with dsa.track_usage() as usage:
        program(question="...")
    usage.get_total_tokens()  # {"openai/gpt-4o-mini": {"prompt_tokens": ..., ...}}

It is a usage meter made active for the block, so it counts every LM call made for the
block wherever it runs: in this thread, in threads the block's calls fan out to, and in
the actors serving the calls the block makes (each call carries its active meters).
Cache hits cost nothing and count nothing. Nested trackers each count what is beneath them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspy_actors.lm._usage import Usage, UsageMeter, metering

__all__ = ["UsageTracker", "track_usage"]

_UNKNOWN_MODEL = "<unknown>"


class UsageTracker(UsageMeter):
    """A usage meter that also keeps each model's usage apart."""

    def __init__(self) -> None:
        super().__init__()
        self._by_model: dict[str, Usage] = {}

    def add_for(self, model: str | None, usage: Usage) -> None:
        key = model or _UNKNOWN_MODEL
        with self._lock:
            self._total = self._total + usage
            previous = self._by_model.get(key)
            self._by_model[key] = usage if previous is None else previous + usage

    def by_model(self) -> dict[str, Usage]:
        with self._lock:
            return dict(self._by_model)

    def get_total_tokens(self) -> dict[str, dict[str, Any]]:
        """Per model (``"openai/gpt-4o-mini"``): ``prompt_tokens``, ``completion_tokens``,
        ``total_tokens`` (DSPy's keys) and ``calls``, plus ``cost`` where known."""
        out: dict[str, dict[str, Any]] = {}
        for model, usage in self.by_model().items():
            entry: dict[str, Any] = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                "calls": usage.calls,
            }
            if usage.cost is not None:
                entry["cost"] = usage.cost
            out[model] = entry
        return out


@contextmanager
def track_usage() -> Iterator[UsageTracker]:
    """Count the LM usage of the block, by model; see the module docstring."""
    tracker = UsageTracker()
    with metering(tracker):
        yield tracker
