"""Streaming answers: DSPy's ``streamify`` and ``StreamListener`` in-process, and
``handle.stream`` / ``handle.astream`` through the actor runtime, on one machinery (a
bounded buffer per stream: a reader that stops reading stops the LM's HTTP read).
See docs/streaming.md."""

from dspy_actors.streaming._listener import StreamListener
from dspy_actors.streaming.messages import (
    ModuleStatusMessages,
    StatusMessage,
    StatusMessageProvider,
    StreamingInterrupted,
    StreamResponse,
)
from dspy_actors.streaming.streamify import streamify

__all__ = [
    "ModuleStatusMessages",
    "StatusMessage",
    "StatusMessageProvider",
    "StreamListener",
    "StreamResponse",
    "StreamingInterrupted",
    "streamify",
]
