"""Adapters: signature + demos + inputs -> chat messages -> typed outputs."""

from dspy_actors.adapters.base import Adapter, CompletionClient
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.adapters.errors import AdapterParseError
from dspy_actors.adapters.json_adapter import JSONAdapter

__all__ = ["Adapter", "AdapterParseError", "ChatAdapter", "CompletionClient", "JSONAdapter"]
