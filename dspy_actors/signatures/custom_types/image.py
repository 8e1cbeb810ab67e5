"""``Image``: an image input, from a URL, a file path or raw bytes."""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from dspy_actors.signatures.custom_types.base import ContentPart, CustomType

__all__ = ["Image"]


class Image(BaseModel, CustomType):
    """An image, sent to the LM as an ``image_url`` content part.

    ``Image("https://...")``, ``Image("photo.png")`` (read and inlined as a data URL),
    ``Image(b"...png bytes...")``, or the explicit ``from_url``/``from_file``/``from_bytes``.
    """

    model_config = ConfigDict(frozen=True)

    url: str

    def __init__(self, source: str | bytes | os.PathLike[str] | None = None, **data: Any) -> None:
        if source is not None:
            data["url"] = source
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _from_source(cls, value: Any) -> Any:
        if isinstance(value, dict) and "url" in value:
            value = {**value, "url": _to_url(value["url"])}
            return value
        if isinstance(value, str | bytes | os.PathLike):
            return {"url": _to_url(value)}
        return value

    @classmethod
    def from_url(cls, url: str) -> Image:
        """An image the LM provider fetches itself (``http(s)://`` or ``data:`` URL)."""
        return cls(url=url)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Image:
        """An image read from disk and inlined as a base64 data URL."""
        return cls(url=_file_url(Path(path)))

    @classmethod
    def from_bytes(cls, data: bytes, mime_type: str = "image/png") -> Image:
        """An image from raw bytes, inlined as a base64 data URL."""
        return cls(url=_data_url(data, mime_type))

    def format(self) -> list[ContentPart]:
        return [{"type": "image_url", "image_url": {"url": self.url}}]

    def __repr__(self) -> str:
        shown = (
            self.url
            if len(self.url) <= 60
            else self.url[:40] + "...(" + str(len(self.url)) + " chars)"
        )
        return f"Image(url={shown!r})"

    __str__ = __repr__


def _data_url(data: bytes, mime_type: str) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def _file_url(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"Image file not found: {str(path)!r}")
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    return _data_url(path.read_bytes(), mime)


def _to_url(source: Any) -> str:
    if isinstance(source, bytes):
        return _data_url(source, "image/png")
    if isinstance(source, os.PathLike):
        return _file_url(Path(source))
    if not isinstance(source, str):
        raise ValueError(f"an Image needs a URL, a file path or bytes, not {type(source).__name__}")
    if source.startswith(("http://", "https://", "data:")):
        return source
    if Path(source).is_file():
        return _file_url(Path(source))
    raise ValueError(f"{source[:80]!r} is neither an http(s)/data URL nor an existing image file")
