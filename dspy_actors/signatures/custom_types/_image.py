"""``Image``: an image input, from a URL, a file path or raw bytes."""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from dspy_actors.signatures.custom_types._base import ContentPart, CustomType

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
    def from_path(cls, path: str | os.PathLike[str]) -> Image:
        """DSPy's name for :meth:`from_file`."""
        return cls.from_file(path)

    @classmethod
    def from_bytes(cls, data: bytes, mime_type: str | None = None) -> Image:
        """An image from raw bytes, inlined as a base64 data URL. The bytes must be an
        image (PNG, JPEG, GIF, WebP, BMP, TIFF or ICO); the type is read from them unless
        ``mime_type`` is given."""
        return cls(url=_data_url(data, mime_type or _sniff_image(data)))

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


# Leading bytes of the image formats LM providers accept.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
)


def _sniff_image(data: bytes) -> str:
    """The MIME type of image bytes; a clear error for bytes that are not an image."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    raise ValueError(
        f"the {len(data)} bytes given to Image are not an image (expected PNG, JPEG, GIF, "
        f"WebP, BMP, TIFF or ICO data; they start with {data[:8]!r})"
    )


def _file_url(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"Image file not found: {str(path)!r}")
    data = path.read_bytes()
    try:
        mime = _sniff_image(data)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r}: {exc}") from None
    return _data_url(data, mimetypes.guess_type(path.name)[0] or mime)


def _to_url(source: Any) -> str:
    if isinstance(source, bytes):
        return _data_url(source, _sniff_image(source))
    if isinstance(source, os.PathLike):
        return _file_url(Path(source))
    if not isinstance(source, str):
        raise ValueError(f"an Image needs a URL, a file path or bytes, not {type(source).__name__}")
    if source.startswith(("http://", "https://", "data:")):
        return source
    if Path(source).is_file():
        return _file_url(Path(source))
    raise ValueError(f"{source[:80]!r} is neither an http(s)/data URL nor an existing image file")
