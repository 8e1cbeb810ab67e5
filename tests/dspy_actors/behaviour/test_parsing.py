"""DSPy's parsing behaviour: missing Optional/default outputs, Enum names, near-JSON,
images nested in pydantic inputs, and Image's content check. LM calls go to SimLM."""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from dspy_actors import _settings as settings
from dspy_actors.adapters import AdapterParseError, ChatAdapter, JSONAdapter
from dspy_actors.lm import LM
from dspy_actors.modules import Predict
from dspy_actors.signatures import Image, InputField, OutputField, Signature
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class Partial(Signature):
    """Answer."""

    question: str = InputField()
    answer: str = OutputField()
    confidence: float | None = OutputField()
    tags: list[str] = OutputField(default_factory=list)
    source: str = OutputField(default="unknown")


def test_chat_adapter_fills_left_out_optional_and_default_outputs() -> None:
    parsed = ChatAdapter().parse(Partial, "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]")
    assert parsed == {"answer": "Paris", "confidence": None, "tags": [], "source": "unknown"}


def test_default_factory_gives_a_fresh_value_each_time() -> None:
    first = ChatAdapter().parse(Partial, "[[ ## answer ## ]]\nA")
    second = ChatAdapter().parse(Partial, "[[ ## answer ## ]]\nB")
    assert first["tags"] == []
    assert first["tags"] is not second["tags"]


def test_a_required_output_left_out_is_still_an_error() -> None:
    with pytest.raises(AdapterParseError, match="no `\\[\\[ ## answer ## \\]\\]` section"):
        ChatAdapter().parse(Partial, "[[ ## source ## ]]\nwiki")
    with pytest.raises(AdapterParseError, match="no key 'answer'"):
        JSONAdapter().parse(Partial, '{"source": "wiki"}')


def test_json_adapter_fills_left_out_optional_and_default_outputs() -> None:
    parsed = JSONAdapter().parse(Partial, '{"answer": "Paris", "confidence": 0.5}')
    assert parsed == {"answer": "Paris", "confidence": 0.5, "tags": [], "source": "unknown"}


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


def test_enum_outputs_parse_by_value_or_by_member_name() -> None:
    sig = Signature("thing -> color: Color")
    adapter = ChatAdapter()
    assert adapter.parse(sig, "[[ ## color ## ]]\ng")["color"] is Color.GREEN
    assert adapter.parse(sig, "[[ ## color ## ]]\nRED")["color"] is Color.RED
    assert adapter.parse(sig, "[[ ## color ## ]]\nColor.GREEN")["color"] is Color.GREEN
    assert JSONAdapter().parse(sig, '{"color": "RED"}')["color"] is Color.RED
    with pytest.raises(AdapterParseError, match=r"'blue' is not a value of Color \['r', 'g'\]"):
        adapter.parse(sig, "[[ ## color ## ]]\nblue")


@pytest.mark.parametrize(
    "completion",
    [
        "{'answer': '100%'}",  # Python-literal quotes
        '{"answer": "100%",}',  # trailing comma
        '{"answer": "100%"',  # unclosed brace
        'Sure! {answer: "100%"}',  # unquoted key, prose around
    ],
)
def test_json_adapter_repairs_near_json(completion: str) -> None:
    sig = Signature("question -> answer")
    assert JSONAdapter().parse(sig, completion) == {"answer": "100%"}


def test_json_adapter_still_rejects_text_without_an_object() -> None:
    with pytest.raises(AdapterParseError, match="not a JSON object"):
        JSONAdapter().parse(Signature("question -> answer"), "I cannot answer that.")


class Listing(BaseModel):
    title: str
    photos: list[Image]


def test_images_nested_in_a_pydantic_input_go_out_as_image_parts(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    listing = Listing(
        title="Flat", photos=[Image.from_url("https://x.test/a.png"), Image.from_bytes(PNG)]
    )
    pred = Predict(Signature("listing: Listing -> summary"))(listing=listing, lm=make_lm())
    assert pred.summary
    content = sim_lm.requests[-1].messages[-1]["content"]
    assert isinstance(content, list)
    image_urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert image_urls == ["https://x.test/a.png", listing.photos[1].url]
    text = "".join(p["text"] for p in content if p["type"] == "text")
    assert '"title": "Flat"' in text
    assert "base64" not in text  # the image data is not repeated as JSON text


def test_image_bytes_must_be_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="are not an image"):
        Image(b"not an image")
    with pytest.raises(ValueError, match="are not an image"):
        Image.from_bytes(b"not an image")
    assert Image(PNG).url.startswith("data:image/png;base64,")
    assert Image(b"\xff\xd8\xff\xe0rest").url.startswith("data:image/jpeg;base64,")
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.png.*are not an image"):
        Image.from_path(bad)
    good = tmp_path / "pic.png"
    good.write_bytes(PNG)
    assert Image.from_path(good) == Image.from_file(good) == Image(PNG)


def test_output_constraints_are_shown_and_checked(sim_lm: SimLM, make_lm: MakeLM) -> None:
    class Score(Signature):
        essay: str = InputField()
        score: int = OutputField(ge=0, le=10)

    system = ChatAdapter().format(Score, [], {"essay": "x"})[0]["content"]
    assert "Constraints: greater than or equal to: 0, less than or equal to: 10" in system
    assert ChatAdapter().parse(Score, "[[ ## score ## ]]\n7") == {"score": 7}
    with pytest.raises(AdapterParseError, match="less than or equal to 10"):
        ChatAdapter().parse(Score, "[[ ## score ## ]]\n11")
    settings.configure(lm=make_lm())
    sim_lm.respond_with(lambda req: "[[ ## score ## ]]\n4\n\n[[ ## completed ## ]]")
    assert Predict(Score)(essay="short").score == 4
