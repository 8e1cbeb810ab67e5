"""Custom field types that adapters format specially: images, audio, chat history, tools."""

from dspy_actors.signatures.custom_types.audio import Audio
from dspy_actors.signatures.custom_types.base import ContentPart, CustomType
from dspy_actors.signatures.custom_types.history import History
from dspy_actors.signatures.custom_types.image import Image
from dspy_actors.signatures.custom_types.tool import Tool

__all__ = ["Audio", "ContentPart", "CustomType", "History", "Image", "Tool"]
