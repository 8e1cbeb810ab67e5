"""What users plug in, served end to end through the public API: their own ``dsa.Adapter``
subclass (its prompt is what the LM receives, its parser makes the served answer) and a
custom type made known with ``dsa.register_type`` (saved with a program, loaded, then
formatted into the prompt and parsed out of the completion of a served call)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

import dspy_actors as dsa
from dspy_actors.testing import SimLM, SimRequest
from tests.dspy_actors.runtime.conftest import StartApp


class LinesAdapter(dsa.Adapter):
    """A user's layout: every output on one line, ``name = value`` (values as JSON when
    they are not plain text)."""

    name = "LinesAdapter"

    def output_structure(self, signature: type[dsa.Signature]) -> str:
        return "\n".join(f"{name} = <{name}>" for name in signature.output_fields)

    def output_instruction(self, signature: type[dsa.Signature]) -> str:
        names = ", ".join(signature.output_fields)
        return f"Answer with one line per output, `name = value`, for: {names}."

    def format_outputs(
        self, signature: type[dsa.Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        return "\n".join(
            f"{name} = {values.get(name, missing)}" for name in signature.output_fields
        )

    def parse(self, signature: type[dsa.Signature], completion: str) -> dict[str, Any]:
        lines = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition("=") for line in completion.splitlines())
            if value
        )
        parsed: dict[str, Any] = {}
        for name, field in signature.output_fields.items():
            if name not in lines:
                raise dsa.AdapterParseError(
                    name, field.annotation, completion, reason="no such line", adapter=self.name
                )
            try:
                parsed[name] = TypeAdapter(field.annotation).validate_python(
                    lines[name] if field.annotation is str else json.loads(lines[name])
                )
            except (ValueError, ValidationError) as exc:
                raise dsa.AdapterParseError(
                    name, field.annotation, completion, reason=str(exc), adapter=self.name
                ) from exc
        return parsed


def lines_responder(request: SimRequest) -> str:
    """Answers a LinesAdapter prompt (and nothing else: a ChatAdapter prompt gets a
    completion LinesAdapter cannot parse)."""
    if "one line per output" not in request.last_user_text:
        return "[[ ## answer ## ]]\nnot in lines\n\n[[ ## completed ## ]]"
    return 'answer = Paris\nconfidence = 0.75\nsources = ["atlas", "wiki"]'


def test_a_user_adapter_subclass_formats_the_served_prompt_and_parses_the_answer(
    start_app: StartApp, sim: SimLM
) -> None:
    sim.respond_with(lines_responder)
    dsa.configure(adapter=LinesAdapter())
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer, confidence: float, sources: list[str]"))

    result = qa.call(question="What is the capital of France?")

    assert (result.answer, result.confidence, result.sources) == ("Paris", 0.75, ["atlas", "wiki"])
    prompt = sim.requests[-1]
    system = prompt.messages[0]["content"]
    assert "answer = <answer>\nconfidence = <confidence>\nsources = <sources>" in system
    assert "What is the capital of France?" in prompt.last_user_text
    # The adapter's parse errors reach the caller as the served call's error.
    sim.respond_with(lambda request: "answer = Paris\nconfidence = very\nsources = []")
    with pytest.raises(dsa.AdapterParseError) as caught:
        qa.call(question="again")
    assert caught.value.field == "confidence"
    assert caught.value.adapter == "LinesAdapter"


class Evidence(BaseModel):
    source: str
    year: int


class Verdict(BaseModel):
    label: str
    score: float


class Judge(dsa.Signature):
    """Judge the claim against the evidence."""

    claim: str = dsa.InputField()
    evidence: Evidence = dsa.InputField()
    verdict: Verdict = dsa.OutputField()


def verdict_responder(request: SimRequest) -> str:
    return '[[ ## verdict ## ]]\n{"label": "supported", "score": 0.9}\n\n[[ ## completed ## ]]'


def test_a_registered_type_loads_with_its_program_and_is_formatted_and_parsed_when_served(
    start_app: StartApp, sim: SimLM, tmp_path: Path
) -> None:
    dsa.Predict(Judge).save(tmp_path / "judge", save_program=True)
    with pytest.raises(dsa.StateError, match="register_type"):
        dsa.load(tmp_path / "judge")  # the file names types nothing made known yet
    assert dsa.register_type(Evidence) is Evidence
    assert dsa.register_type(Verdict) is Verdict
    loaded = dsa.load(tmp_path / "judge")
    assert isinstance(loaded, dsa.Predict)

    sim.respond_with(verdict_responder)
    app = start_app()
    judge = app.serve("judge", loaded)
    result = judge.call(
        claim="The bridge opened in 1932.", evidence=Evidence(source="x", year=1932)
    )

    assert result.verdict == Verdict(label="supported", score=0.9)
    assert isinstance(result.verdict, Verdict)
    prompt = sim.requests[-1]
    # The input is formatted as its model's JSON, the output asked for by its schema.
    assert '[[ ## evidence ## ]]\n{\n  "source": "x",\n  "year": 1932\n}' in prompt.last_user_text
    assert '"title":"Verdict"' in prompt.last_user_text
    assert "Judge the claim against the evidence." in prompt.messages[0]["content"]


def test_register_type_needs_a_name_for_a_type_without_one() -> None:
    with pytest.raises(TypeError, match="give a name"):
        dsa.register_type(object())
