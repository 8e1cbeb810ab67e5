"""``AdapterParseError``: an LM completion that does not fit the signature."""

from __future__ import annotations

from typing import Any

from dspy_actors.signatures._type_names import annotation_name

__all__ = ["AdapterParseError"]

_MAX_SHOWN = 2000


class AdapterParseError(ValueError):
    """A completion could not be parsed: names the field, its expected type and the raw
    completion (truncated in the message, whole in ``raw_completion``)."""

    def __init__(
        self,
        field: str,
        expected_type: Any,
        raw_completion: str,
        *,
        reason: str = "",
        adapter: str = "",
        previous: AdapterParseError | None = None,
    ) -> None:
        self.field = field
        self.expected_type = expected_type
        self.raw_completion = raw_completion
        self.reason = reason
        self.adapter = adapter
        self.previous = previous
        type_name = annotation_name(expected_type)
        shown = (
            raw_completion
            if len(raw_completion) <= _MAX_SHOWN
            else raw_completion[:_MAX_SHOWN] + "..."
        )
        who = f"{adapter}: " if adapter else ""
        message = (
            f"{who}cannot parse field `{field}` (expected {type_name}) from the LM completion"
            f"{': ' + reason if reason else ''}\n--- raw completion ---\n{shown}\n---"
        )
        if previous is not None:
            first = previous.adapter or "a first adapter"
            message += (
                f"\n(tried after {first} failed on field `{previous.field}`: {previous.reason})"
            )
        super().__init__(message)

    def after(self, previous: AdapterParseError) -> AdapterParseError:
        """This error, noting that it happened on a fallback after ``previous``."""
        return AdapterParseError(
            self.field,
            self.expected_type,
            self.raw_completion,
            reason=self.reason,
            adapter=self.adapter,
            previous=previous,
        )
