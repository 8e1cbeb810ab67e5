"""What a stream yields: DSPy's ``StreamResponse`` and ``StatusMessage``, and the
``StatusMessageProvider`` that words the status messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy_actors.lm.errors import LMError

__all__ = ["StatusMessage", "StatusMessageProvider", "StreamResponse", "StreamingInterrupted"]


@dataclass(frozen=True, slots=True)
class StreamResponse:
    """A piece of one output field's text, as the LM streams it.

    ``predict_name`` names the predictor whose field it is (served: its module path, such
    as ``"rag.answer"``; in-process: its name in ``named_predictors()``);
    ``is_last_chunk`` is true on the field's last piece (whose ``chunk`` may be empty)."""

    predict_name: str
    signature_field_name: str
    chunk: str
    is_last_chunk: bool


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """A status message (a module or a tool started or ended)."""

    message: str


class StreamingInterrupted(LMError):
    """A stream ended before its answer: part of it had reached the consumer when what
    was producing it failed (an LM event loop, a module actor), so it is not retried (the
    consumer would see text twice); or its consumer went away. An LM error, so that a
    module seeing it fails the call without counting the input as poison."""

    retryable = False


class StatusMessageProvider:
    """Words the status messages of a stream; subclass and override what you need. A
    method returning None sends no message. As DSPy's: by default only tool calls are
    announced (``handle.stream`` uses :class:`ModuleStatusMessages`, which adds modules)."""

    def tool_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        return f"Calling tool {getattr(instance, 'name', instance)}..."

    def tool_end_status_message(self, outputs: Any) -> str | None:
        return "Tool calling finished! Querying the LLM with tool calling results..."

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        return None

    def module_end_status_message(self, outputs: Any) -> str | None:
        return None

    def lm_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        return None

    def lm_end_status_message(self, outputs: Any) -> str | None:
        return None


class ModuleStatusMessages(StatusMessageProvider):
    """Also announces each module's start and end (``instance`` is the module's path when
    served, the module itself in-process)."""

    def module_start_status_message(self, instance: Any, inputs: dict[str, Any]) -> str | None:
        return f"Calling {_name(instance)}..."

    def module_end_status_message(self, outputs: Any) -> str | None:
        return "Finished."


def _name(instance: Any) -> str:
    return instance if isinstance(instance, str) else type(instance).__name__
