"""Adapters: signature + demos + inputs -> chat messages -> typed outputs."""

from dspy_actors.adapters._errors import AdapterParseError
from dspy_actors.adapters.base import Adapter, CompletionClient
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.adapters.json_adapter import JSONAdapter
from dspy_actors.adapters.two_step_adapter import TwoStepAdapter
from dspy_actors.adapters.xml_adapter import XMLAdapter

__all__ = [
    "Adapter",
    "AdapterParseError",
    "ChatAdapter",
    "CompletionClient",
    "JSONAdapter",
    "TwoStepAdapter",
    "XMLAdapter",
]
