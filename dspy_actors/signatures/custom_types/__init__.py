"""Custom field types that adapters format specially: images, audio, chat history, tools."""

from dspy_actors.signatures.custom_types._audio import Audio
from dspy_actors.signatures.custom_types._base import ContentPart, CustomType
from dspy_actors.signatures.custom_types._citations import Citation, Citations, Document
from dspy_actors.signatures.custom_types._code import Code
from dspy_actors.signatures.custom_types._history import History
from dspy_actors.signatures.custom_types._image import Image
from dspy_actors.signatures.custom_types._reasoning import Reasoning
from dspy_actors.signatures.custom_types._tool import Tool

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
