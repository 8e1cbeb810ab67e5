"""State files saved by DSPy 3.4.1 (fixtures/, made by make_dspy_fixtures.py with the real
DSPy) load into the equivalent dspy-actors program; others, and pickle, are refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.testing import SimLM

FIXTURES = Path(__file__).parent / "fixtures" / "dspy_3_4_1"
MakeLM = Callable[..., LM]


class RAG(dsa.Module):
    """The same program as the fixture's, written for dspy-actors."""

    def __init__(self) -> None:
        self.generate = dsa.ChainOfThought("context: list[str], question -> answer")
        self.hops = [dsa.Predict("question -> query"), dsa.Predict("question -> query")]

    def forward(self, question: str) -> dsa.Prediction:
        return self.generate(context=[], question=question)  # type: ignore[no-any-return]


def test_a_dspy_saved_program_loads_demos_instructions_and_field_texts() -> None:
    rag = RAG().load(FIXTURES / "rag.json")
    generate = rag.generate.predict
    assert generate.signature.instructions == "Answer from the context only."
    assert [d.to_dict() for d in generate.demos] == [
        {
            "context": ["Brussels is the capital of Belgium."],
            "question": "What is the capital of Belgium?",
            "reasoning": "The context says so.",
            "answer": "Brussels",
        },
        {"question": "What is 2 + 2?", "answer": "4", "augmented": True},
    ]
    fields = generate.signature.fields
    assert fields["answer"].desc == "a short answer"
    assert fields["answer"].prefix == "Answer:"
    # DSPy's placeholder description means none: the field keeps its own.
    assert (
        fields["reasoning"].desc == dsa.ChainOfThought("q -> a").signature.fields["reasoning"].desc
    )
    assert [d.to_dict() for d in rag.hops[0].demos] == [
        {"question": "Who wrote Hamlet?", "query": "Hamlet author"}
    ]
    assert rag.hops[1].demos == []


def test_lone_predictor_files_load_too() -> None:
    qa = dsa.Predict("question -> answer").load(FIXTURES / "predict.json")
    assert [d.to_dict() for d in qa.demos] == [{"question": "What is 1 + 1?", "answer": "2"}]
    cot = dsa.ChainOfThought("question -> answer").load(FIXTURES / "cot.json")
    assert cot.predict.demos[0]["reasoning"] == "r"


def test_the_loaded_program_uses_its_demos_against_the_lm(sim_lm: SimLM, make_lm: MakeLM) -> None:
    settings.configure(lm=make_lm())
    rag = RAG().load(FIXTURES / "rag.json")
    rag(question="What is 3 + 3?")
    messages = sim_lm.requests[-1].messages
    text = json.dumps(messages)
    assert "Answer from the context only." in messages[0]["content"]
    assert "Brussels is the capital of Belgium." in text


def test_a_file_for_a_different_program_is_refused_clearly() -> None:
    with pytest.raises(
        dsa.StateError, match=r"saved by DSPy for a different program.*'generate\.predict'"
    ):
        dsa.ChainOfThought("question -> answer").load(FIXTURES / "rag.json")
    with pytest.raises(dsa.StateError, match=r"has 2 signature fields in the file but 3 here"):
        dsa.Predict("context, question -> answer").load(FIXTURES / "predict.json")
    before = dsa.Predict("question -> answer")
    with pytest.raises(dsa.StateError):
        RAG().load(FIXTURES / "cot.json")
    assert before.demos == []


def test_pickle_is_refused_on_save_and_load_and_never_read(tmp_path: Path) -> None:
    qa = dsa.Predict("question -> answer")
    with pytest.raises(dsa.StateError, match=r"never reads or writes pickle.*\.json"):
        qa.save(tmp_path / "program.pkl")
    assert not (tmp_path / "program.pkl").exists()
    trap = tmp_path / "program.pkl"
    trap.write_bytes(b"\x80\x04\x95not really a pickle")
    with pytest.raises(dsa.StateError, match="never reads or writes pickle"):
        qa.load(trap)
    whole = tmp_path / "saved_program"
    whole.mkdir()
    with pytest.raises(dsa.StateError, match=r"loads with dspy_actors\.load"):
        qa.load(whole)


def test_our_own_files_still_round_trip(tmp_path: Path) -> None:
    rag = RAG().load(FIXTURES / "rag.json")
    rag.save(tmp_path / "ours.json")
    again = RAG().load(tmp_path / "ours.json")
    assert again.dump_state() == rag.dump_state()
    shutil.copy(FIXTURES / "rag.json", tmp_path / "theirs.json")
    assert RAG().load(tmp_path / "theirs.json").dump_state() == rag.dump_state()


def test_a_dspy_saved_refine_loads_into_refine_and_best_of_n() -> None:
    def reward(_inputs: dict[str, object], _pred: dsa.Prediction) -> float:
        return 1.0

    for wrapper in (dsa.Refine, dsa.BestOfN):
        program = wrapper(
            dsa.ChainOfThought("question -> answer"), N=3, reward_fn=reward, threshold=1
        )
        program.load(FIXTURES / "refine_cot.json")
        assert program.module.predict.demos[0].to_dict() == {
            "question": "q",
            "reasoning": "r",
            "answer": "a",
        }
