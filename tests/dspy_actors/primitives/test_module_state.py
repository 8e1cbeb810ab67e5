"""Module: parameters by path, copies, and JSON state that never holds secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dspy_actors.lm._lm import LM
from dspy_actors.modules import ChainOfThought, Predict
from dspy_actors.primitives import Example, Module, Prediction, StateError
from dspy_actors.signatures import Image


class Pipeline(Module):
    def __init__(self) -> None:
        super().__init__()
        self.retrieve = Predict("question -> queries: list[str]")
        self.answer = ChainOfThought("question, context -> answer")
        self.steps = [Predict("a -> b"), Predict("b -> c")]
        self.by_name = {"judge": Predict("answer -> ok: bool")}

    def forward(self, question: str) -> Prediction:
        return Prediction(answer=question)


def test_named_parameters_and_predictors_walk_attributes() -> None:
    prog = Pipeline()
    names = [n for n, _ in prog.named_predictors()]
    assert names == ["retrieve", "answer.predict", "steps[0]", "steps[1]", "by_name['judge']"]
    assert [n for n, _ in prog.named_parameters()] == names
    assert len(prog.predictors()) == 5
    assert [n for n, _ in prog.named_sub_modules()][:3] == ["self", "self.retrieve", "self.answer"]
    assert [n for n, _ in prog.attribute_sub_modules()][:3] == ["self", "retrieve", "answer"]
    single = Predict("q -> a")
    assert single.named_predictors() == [("self", single)]


def test_module_without_super_init_still_meters() -> None:
    class Bare(Module):
        def __init__(self) -> None:  # no super().__init__()
            self.p = Predict("q -> a")

        def forward(self, q: str) -> str:
            return q

    bare = Bare()
    assert bare(q="x") == "x"
    assert bare.usage.calls == 0


def test_deepcopy_copies_state_and_shares_the_lm() -> None:
    prog = Pipeline()
    lm = LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-secret")
    prog.set_lm(lm)
    prog.retrieve.demos = [Example(question="q", queries=["x"])]
    copy = prog.deepcopy()
    assert copy is not prog
    assert copy.retrieve is not prog.retrieve
    assert copy.retrieve.demos == prog.retrieve.demos
    assert copy.retrieve.demos is not prog.retrieve.demos
    assert copy.retrieve.lm is lm
    assert copy.get_lm() is lm
    assert copy.usage_meter is not prog.usage_meter
    copy.retrieve.demos.append(Example(question="q2", queries=[]))
    assert len(prog.retrieve.demos) == 1
    reset = prog.reset_copy()
    assert all(p.demos == [] for p in reset.predictors())
    assert len(prog.retrieve.demos) == 1
    lm.close()


def test_dump_state_is_json_and_never_holds_the_api_key(tmp_path: Path) -> None:
    prog = Pipeline()
    lm = LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-very-secret")
    prog.set_lm(lm)
    prog.answer.predict.demos = [
        Example(question="2+2?", context="math", reasoning="add", answer="4"),
        Example(question="pic?", context=Image.from_url("https://x.test/a.png"), answer="cat"),
    ]
    state = prog.dump_state()
    text = json.dumps(state)  # JSON-compatible all the way down
    assert "sk-very-secret" not in text
    assert state["retrieve"]["lm"] == {"model": "openai/gpt-4o-mini"}
    assert state["answer.predict"]["demos"][1]["context"] == {"url": "https://x.test/a.png"}
    path = tmp_path / "prog.json"
    prog.save(path)
    assert "sk-very-secret" not in path.read_text()
    saved = json.loads(path.read_text())
    assert saved["__metadata__"]["format"] == "dspy_actors.module_state"
    lm.close()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    prog = Pipeline()
    prog.retrieve.demos = [Example(question="q", queries=["a", "b"])]
    prog.answer.predict.signature = prog.answer.predict.signature.with_instructions("Be brief.")
    prog.save(tmp_path / "p.json")

    fresh = Pipeline().load(tmp_path / "p.json")
    assert fresh.retrieve.demos == [Example(question="q", queries=["a", "b"])]
    assert isinstance(fresh.retrieve.demos[0], Example)
    assert fresh.answer.predict.signature.instructions == "Be brief."
    assert fresh.dump_state() == prog.dump_state()


def test_load_state_that_does_not_match_names_the_predictor() -> None:
    state = Pipeline().dump_state()
    missing = dict(state)
    del missing["steps[1]"]
    with pytest.raises(StateError, match=r"no state for predictor\(s\) \['steps\[1\]'\]"):
        Pipeline().load_state(missing)
    extra = {**state, "ghost": state["retrieve"]}
    with pytest.raises(StateError, match=r"unknown predictor\(s\) \['ghost'\]"):
        Pipeline().load_state(extra)
    wrong_fields = json.loads(json.dumps(state))
    wrong_fields["answer.predict"]["signature"]["fields"][0]["name"] = "query"
    with pytest.raises(StateError, match=r"predictor 'answer.predict': signature fields"):
        Pipeline().load_state(wrong_fields)


def test_load_rejects_files_that_are_not_state(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(StateError, match="not a JSON state file"):
        Pipeline().load(bad)
    other: dict[str, Any] = {"hello": 1}
    bad.write_text(json.dumps(other))
    with pytest.raises(StateError, match=r"not a dspy_actors\.module_state file"):
        Pipeline().load(bad)


def test_loaded_image_demos_are_sent_as_images_again(tmp_path: Path) -> None:
    from dspy_actors.adapters import ChatAdapter

    predict = Predict("photo: Image -> caption")
    predict.demos = [Example(photo=Image.from_url("https://x.test/a.png"), caption="a cat")]
    predict.save(tmp_path / "p.json")
    loaded = Predict("photo: Image -> caption").load(tmp_path / "p.json")
    assert loaded.demos[0]["photo"] == {"url": "https://x.test/a.png"}  # plain JSON data
    new_photo = {"photo": Image("https://x.test/b.png")}
    demo_user = ChatAdapter().format(loaded.signature, loaded.demos, new_photo)[1]
    assert {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}} in demo_user[
        "content"
    ]
