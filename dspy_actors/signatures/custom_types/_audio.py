"""``Audio``: an audio input, from raw bytes or a file."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from dspy_actors.signatures.custom_types._base import ContentPart, CustomType

__all__ = ["Audio"]


class Audio(BaseModel, CustomType):
    """Audio sent as an ``input_audio`` content part: base64 ``data`` and its ``audio_format``
    (``"wav"``, ``"mp3"``...)."""

    model_config = ConfigDict(frozen=True)

    data: str
    audio_format: str = "wav"

    @classmethod
    def from_bytes(cls, data: bytes, audio_format: str = "wav") -> Audio:
        return cls(data=base64.b64encode(data).decode("ascii"), audio_format=audio_format)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], audio_format: str | None = None) -> Audio:
        """Audio read from disk; the format defaults to the file extension."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"Audio file not found: {str(p)!r}")
        fmt = audio_format or (p.suffix.lstrip(".").lower() or "wav")
        return cls.from_bytes(p.read_bytes(), fmt)

    def format(self) -> list[ContentPart]:
        return [
            {"type": "input_audio", "input_audio": {"data": self.data, "format": self.audio_format}}
        ]

    def __repr__(self) -> str:
        return f"Audio(audio_format={self.audio_format!r}, data=<{len(self.data)} base64 chars>)"

    def __str__(self) -> str:
        return repr(self)
