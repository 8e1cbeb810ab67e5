"""Custom field types: Image, Audio, History and Tool."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ValidationError

from dspy_actors.signatures import Audio, History, Image, Tool
from dspy_actors.signatures.custom_types._tool import ToolArgumentError

PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"


def test_image_from_url_file_and_bytes(tmp_path: Path) -> None:
    url = "https://example.com/cat.png"
    assert Image.from_url(url).url == url
    assert Image(url).url == url
    assert Image(url=url) == Image(url)

    path = tmp_path / "cat.jpg"
    path.write_bytes(PNG)
    from_file = Image.from_file(path)
    assert from_file.url == "data:image/jpeg;base64," + base64.b64encode(PNG).decode()
    assert Image(str(path)) == from_file
    assert Image(path) == from_file

    from_bytes = Image.from_bytes(PNG, mime_type="image/png")
    assert from_bytes.url.startswith("data:image/png;base64,")
    assert base64.b64decode(from_bytes.url.split(",", 1)[1]) == PNG
    assert Image(PNG) == from_bytes


def test_image_formats_as_an_image_url_part() -> None:
    img = Image.from_url("https://example.com/cat.png")
    assert img.format() == [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]
    assert "example.com" in repr(img)


def test_image_rejects_what_it_cannot_load(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="neither an http"):
        Image("not/a/file.png")
    with pytest.raises(ValueError, match="not found"):
        Image.from_file(tmp_path / "missing.png")


def test_audio_from_bytes_and_file(tmp_path: Path) -> None:
    wav = b"RIFF....WAVEfmt "
    audio = Audio.from_bytes(wav)
    assert audio.format() == [
        {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"},
        }
    ]
    path = tmp_path / "clip.mp3"
    path.write_bytes(wav)
    from_file = Audio.from_file(path)
    assert from_file.audio_format == "mp3"
    assert from_file.data == audio.data
    assert "base64 chars" in repr(audio)


def test_history_holds_turns() -> None:
    h = History(messages=[{"question": "hi", "answer": "hello"}])
    assert h.messages[0]["answer"] == "hello"
    with pytest.raises(ValidationError):
        History(messages="nope")  # type: ignore[arg-type]


def search(query: str, limit: int = 3, mode: Literal["fast", "deep"] = "fast") -> list[str]:
    """Search the web.

    Args:
        query: what to look for
        limit (int): how many results
            to return at most
        mode: how hard to look
    """
    return [f"{query}-{i}-{mode}" for i in range(limit)]


def test_tool_schema_from_type_hints_and_docstring() -> None:
    tool = Tool(search)
    assert tool.name == "search"
    assert tool.desc == "Search the web."
    assert tool.args["query"] == {"type": "string", "description": "what to look for"}
    assert tool.args["limit"]["type"] == "integer"
    assert tool.args["limit"]["description"] == "how many results to return at most"
    assert tool.args["mode"]["enum"] == ["fast", "deep"]
    assert tool.required == ["query"]
    schema = tool.to_openai()
    assert schema["function"]["name"] == "search"
    assert schema["function"]["parameters"]["required"] == ["query"]
    assert "search: Search the web." in tool.format()


def test_tool_call_validates_arguments() -> None:
    tool = Tool(search, name="web_search", desc="custom")
    assert tool.name == "web_search"
    assert tool.desc == "custom"
    assert tool(query="cats", limit="2") == ["cats-0-fast", "cats-1-fast"]  # "2" -> 2
    with pytest.raises(ToolArgumentError, match="missing required argument"):
        tool(limit=1)
    with pytest.raises(ToolArgumentError, match="unexpected argument"):
        tool(query="x", nope=1)
    with pytest.raises(ToolArgumentError, match="argument 'mode' of tool 'web_search'"):
        tool(query="x", mode="slow")
