"""Whole-program files: ``save(dir, save_program=True)`` and ``dspy_actors.load`` rebuild a
program from data and registered classes, never running code named by the file."""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.modules import ChainOfThought, Predict
from dspy_actors.primitives import Example, Module, Prediction, StateError
from dspy_actors.signatures import InputField, OutputField, Signature
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]


class Verdict(enum.Enum):
    OK = "ok"
    BAD = "bad"


class Person(BaseModel):
    name: str


class Judge(Signature):
    """Judge the answer."""

    answer: str = InputField(desc="the answer")
    verdict: Verdict = OutputField()
    score: int = OutputField(ge=0, le=5, default=0)
    notes: list[str] = OutputField(default_factory=list)


@dsa.register_module
class Program(Module):
    def __init__(self, hops: int) -> None:
        self.hops = hops
        self.tags = ("a", "b")
        self.draft = ChainOfThought("question -> answer: list[str] | None")
        self.judges = {"main": Predict(Judge)}
        self.who = Predict(Signature("text -> person: Person"))

    def forward(self, question: str) -> Prediction:
        return self.draft(question=question)  # type: ignore[no-any-return]


class Unregistered(Module):
    def __init__(self) -> None:
        self.qa = Predict("question -> answer")


def test_a_saved_program_loads_back_whole(tmp_path: Path, sim_lm: SimLM, make_lm: MakeLM) -> None:
    lm = make_lm()
    prog = Program(hops=3)
    prog.set_lm(lm)
    prog.draft.predict.demos = [Example(question="q", reasoning="r", answer=["x"])]
    prog.judges["main"].signature = Judge.with_instructions("Judge strictly.")
    prog.save(tmp_path / "prog", save_program=True)

    text = (tmp_path / "prog" / "program.json").read_text()
    assert "test-key" not in text  # never a client or key
    assert json.loads(text)["program"]["__module__"].endswith("test_program_files.Program")

    loaded = dsa.load(tmp_path / "prog", types=[Person, Verdict])
    assert isinstance(loaded, Program)
    assert loaded.hops == 3
    assert loaded.tags == ("a", "b")
    assert loaded.draft.predict.demos == prog.draft.predict.demos
    judge = loaded.judges["main"].signature
    assert judge.instructions == "Judge strictly."
    assert judge.output_fields["verdict"].annotation is Verdict
    assert judge.output_fields["score"].constraints == (("ge", 0), ("le", 5))
    assert judge.output_fields["score"].default == 0
    assert judge.output_fields["notes"].default_factory is list
    assert loaded.who.signature.output_fields["person"].annotation is Person
    assert loaded.draft.predict.lm is None  # the LM is set again by the loader's user
    loaded.set_lm(lm)
    assert loaded.dump_state() == prog.dump_state()
    sim_lm.respond_with(
        lambda req: '[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n["y"]\n\n[[ ## completed ## ]]'
    )
    assert loaded(question="again?").answer == ["y"]


def test_loading_names_unknown_classes_and_types(tmp_path: Path) -> None:
    Unregistered().save(tmp_path / "u", save_program=True)
    with pytest.raises(StateError, match=r"Unregistered', which is not registered"):
        dsa.load(tmp_path / "u")
    assert isinstance(dsa.load(tmp_path / "u", modules=[Unregistered]), Unregistered)
    Program(hops=1).save(tmp_path / "p", save_program=True)
    with pytest.raises(StateError, match=r"type 'Person', which is not known here"):
        dsa.load(tmp_path / "p", types=[Verdict])


def test_a_file_cannot_name_code_to_run(tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    payload = {
        "__metadata__": {"format": "dspy_actors.program", "version": 1},
        "program": {"__module__": "os.system", "attributes": {}},
    }
    (tmp_path / "evil" / "program.json").write_text(json.dumps(payload))
    with pytest.raises(StateError, match=r"'os.system', which is not registered"):
        dsa.load(tmp_path / "evil")


def test_values_that_are_not_data_are_refused_at_save(tmp_path: Path) -> None:
    prog = Unregistered()
    prog.search = lambda q: q  # type: ignore[attr-defined]
    with pytest.raises(StateError, match=r"self\.search holds a function"):
        prog.save(tmp_path / "x", save_program=True)
    formatted = Unregistered()
    formatted.qa = Predict(
        Signature({"question": InputField(format=str.upper), "answer": OutputField()})
    )
    with pytest.raises(StateError, match=r"field 'question' has a format= function"):
        formatted.save(tmp_path / "y", save_program=True)
    prog2 = Unregistered()
    prog2.save(tmp_path / "state.json")
    with pytest.raises(StateError, match=r"not a dspy_actors\.program file"):
        dsa.load(tmp_path / "state.json")


def test_the_packages_own_classes_are_named_by_their_public_path(tmp_path: Path) -> None:
    # A file names dspy_actors' classes without the marks of private modules, so a file
    # saved before a module was marked private (or after) loads either way.
    class Hidden(Predict):
        pass

    Hidden.__module__ = "dspy_actors.modules._hidden"
    Hidden.__qualname__ = "Hidden"
    Hidden("question -> answer").save(tmp_path / "h", save_program=True)
    data = json.loads((tmp_path / "h" / "program.json").read_text())
    assert data["program"]["__module__"] == "dspy_actors.modules.hidden.Hidden"
    assert type(dsa.load(tmp_path / "h")) is Hidden
