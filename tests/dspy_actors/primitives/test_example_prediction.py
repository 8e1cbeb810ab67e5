"""Example and Prediction: dict-like records, inputs/labels, completions."""

from __future__ import annotations

import pytest

from dspy_actors.primitives import Example, Prediction


def test_example_access_and_dict_behaviour() -> None:
    ex = Example(question="2+2?", answer="4")
    assert ex.question == "2+2?"
    assert ex["answer"] == "4"
    assert "question" in ex
    assert len(ex) == 2
    assert list(ex) == ["question", "answer"]
    assert ex.get("missing", "d") == "d"
    ex.extra = 1
    ex["other"] = 2
    assert ex.keys() == ["question", "answer", "extra", "other"]
    del ex["other"]
    assert "other" not in ex
    with pytest.raises(AttributeError, match="no field 'nope'"):
        _ = ex.nope


def test_with_inputs_inputs_and_labels() -> None:
    ex = Example({"question": "q", "context": "c"}, answer="a").with_inputs("question", "context")
    assert ex.input_keys == frozenset({"question", "context"})
    assert ex.inputs().to_dict() == {"question": "q", "context": "c"}
    assert ex.labels().to_dict() == {"answer": "a"}
    with pytest.raises(ValueError, match="with_inputs"):
        Example(a=1).inputs()


def test_copy_without_and_equality() -> None:
    ex = Example(a=1, b=2).with_inputs("a")
    copy = ex.copy(b=3)
    assert copy.b == 3
    assert ex.b == 2
    assert copy.input_keys == frozenset({"a"})
    assert ex.without("b").to_dict() == {"a": 1}
    assert Example(a=1, b=2) == Example(b=2, a=1)
    assert Example(a=1) != Example(a=2)
    assert hash(Example(a=1, b=[1])) == hash(Example(b=[1], a=1))
    assert Example(Example(a=1), b=2).to_dict() == {"a": 1, "b": 2}


def test_dspy_prefixed_keys_are_bookkeeping() -> None:
    ex = Example(a=1, dspy_uuid="x")
    assert ex.keys() == ["a"]
    assert ex.keys(include_dspy=True) == ["a", "dspy_uuid"]


def test_prediction_completions() -> None:
    pred = Prediction.from_completions([{"answer": "4"}, {"answer": "5"}, {"answer": "4"}])
    assert pred.answer == "4"
    assert len(pred.completions) == 3
    assert pred.completions.answer == ["4", "5", "4"]
    assert pred.completions[1].answer == "5"
    assert [p.answer for p in pred.completions] == ["4", "5", "4"]
    assert "2 more completions" in repr(pred)
    single = Prediction(answer="x")
    assert single.completions.answer == ["x"]
    with pytest.raises(ValueError, match="at least one"):
        Prediction.from_completions([])


def test_prediction_score_converts_to_float() -> None:
    assert float(Prediction(score=0.5)) == 0.5
    with pytest.raises(TypeError, match="score"):
        float(Prediction(answer=1))
