"""Custom field types that adapters format specially: images, audio, chat history, tools."""

from dspy_actors.signatures.custom_types.audio import Audio
from dspy_actors.signatures.custom_types.base import ContentPart, CustomType
from dspy_actors.signatures.custom_types.citations import Citation, Citations, Document
from dspy_actors.signatures.custom_types.code import Code
from dspy_actors.signatures.custom_types.history import History
from dspy_actors.signatures.custom_types.image import Image
from dspy_actors.signatures.custom_types.reasoning import Reasoning
from dspy_actors.signatures.custom_types.tool import Tool

__all__ = [
    "Audio",
    "Citation",
    "Citations",
    "Code",
    "ContentPart",
    "CustomType",
    "Document",
    "History",
    "Image",
    "Reasoning",
    "Tool",
]
