"""DSPy's evaluation behaviour: attribute names, inline single-thread runs, saved results,
EvaluationResult's construction and repr, answer_exact_match with several gold answers,
and majority() over a Prediction."""

from __future__ import annotations

import csv
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from dspy_actors.evaluate import Evaluate, EvaluationResult, ExampleResult, answer_exact_match
from dspy_actors.optimizers import majority
from dspy_actors.primitives import Example, Prediction

DEV = [
    Example(question="2 + 2?", answer="4").with_inputs("question"),
    Example(question="Capital of France?", answer="Paris").with_inputs("question"),
]


def answers(question: str) -> Prediction:
    return Prediction(answer={"2 + 2?": "4", "Capital of France?": "Lyon"}[question])


def test_dspy_attribute_names_and_per_call_overrides() -> None:
    evaluate = Evaluate(
        devset=DEV, metric=answer_exact_match, num_threads=3, display_progress=False
    )
    assert evaluate.num_threads == 3
    assert evaluate.display_progress is False
    assert evaluate.display_table is False
    assert evaluate.save_as_csv is None
    assert evaluate.save_as_json is None
    evaluate.num_threads = 2
    assert evaluate.concurrency == 2
    assert evaluate(answers).score == 50.0
    always = Evaluate(devset=DEV, display_progress=False)
    with pytest.raises(TypeError, match="needs a metric"):
        always(answers)
    assert always(answers, metric=lambda ex, pred: True).score == 100.0
    assert always(answers, metric=answer_exact_match, devset=DEV[:1]).score == 100.0


def test_one_thread_runs_inline_in_the_calling_thread() -> None:
    threads: list[threading.Thread] = []

    def program(question: str) -> Prediction:
        threads.append(threading.current_thread())
        return answers(question)

    Evaluate(devset=DEV, metric=answer_exact_match, num_threads=1, progress=False)(program)
    assert threads == [threading.current_thread()] * 2
    threads.clear()
    Evaluate(devset=DEV, metric=answer_exact_match, num_threads=2, progress=False)(program)
    assert threading.current_thread() not in threads


def test_save_as_csv_and_json_in_dspys_layout(tmp_path: Path) -> None:
    evaluate = Evaluate(
        devset=DEV,
        metric=answer_exact_match,
        display_progress=False,
        save_as_json=str(tmp_path / "r.json"),
    )
    evaluate(answers, save_as_csv=str(tmp_path / "r.csv"))
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows == [
        {
            "question": "2 + 2?",
            "example_answer": "4",
            "pred_answer": "4",
            "answer_exact_match": 1.0,
        },
        {
            "question": "Capital of France?",
            "example_answer": "Paris",
            "pred_answer": "Lyon",
            "answer_exact_match": 0.0,
        },
    ]
    table = list(csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8")))
    assert [r["pred_answer"] for r in table] == ["4", "Lyon"]
    assert [r["answer_exact_match"] for r in table] == ["1.0", "0.0"]


def test_a_failed_example_is_saved_with_no_prediction(tmp_path: Path) -> None:
    def broken(question: str) -> Prediction:
        raise RuntimeError("boom")

    class Strict:
        def __call__(self, example: Example, prediction: Any) -> bool:
            return False

    result = Evaluate(devset=DEV[:1], metric=Strict(), display_progress=False)(
        broken, save_as_json=str(tmp_path / "r.json")
    )
    assert result.results[0].error is not None
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows == [{"question": "2 + 2?", "answer": "4", "prediction": None, "Strict": 0.0}]


def test_evaluation_result_is_built_and_shown_as_in_dspy() -> None:
    pred = Prediction(answer="4")
    result = EvaluationResult(score=50.0, results=[(DEV[0], pred, 1.0), (DEV[1], None, 0.0)])
    assert repr(result) == "EvaluationResult(score=50.0, results=<list of 2 results>)"
    assert result.total == 2
    for example, prediction, score in result.results:  # DSPy's (example, prediction, score)
        assert example in DEV
        assert score in (0.0, 1.0)
        assert prediction in (pred, None)
    first = result.results[0]
    assert isinstance(first, ExampleResult)
    assert first.error is None
    score, results = result  # the tuple form still unpacks
    assert (score, len(results)) == (50.0, 2)


def test_answer_exact_match_accepts_a_list_of_gold_answers() -> None:
    example = Example(question="A landmark in Paris?", answer=["Eiffel Tower", "Louvre"])
    assert answer_exact_match(example, Prediction(answer="the louvre!"))
    assert answer_exact_match(example, Prediction(answer="Eiffel  tower"))
    assert not answer_exact_match(example, Prediction(answer="Notre Dame"))
    assert answer_exact_match(example, Prediction(answer="Eiffel"), frac=0.5)
    assert not answer_exact_match(example, Prediction(answer="Eiffel"), frac=0.9)


def test_majority_takes_a_prediction_and_normalize() -> None:
    pred = Prediction.from_completions(
        [{"answer": "Paris."}, {"answer": "Lyon"}, {"answer": "paris"}, {"answer": "Lyon"}]
    )
    assert majority(pred).answer == "Paris."  # normalized "paris" twice; earliest wins ties
    assert majority(pred, normalize=None).answer == "Lyon"  # as written, Lyon is most common
    assert majority(pred.completions).answer == "Paris."
    ignore_lyon = majority(pred, normalize=lambda v: None if v == "Lyon" else v.lower())
    assert ignore_lyon.answer == "Paris."
    assert (
        majority(
            [Prediction(answer="a"), None, Prediction(answer="b"), Prediction(answer="b")]
        ).answer
        == "b"
    )
    with pytest.raises(TypeError, match="takes a Prediction"):
        majority(42)  # type: ignore[arg-type]


def test_display_table_prints_to_the_stream() -> None:
    out = io.StringIO()
    Evaluate(devset=DEV, metric=answer_exact_match, display_progress=False, stream=out)(
        answers, display_table=True
    )
    assert "score 50.00% over 2 examples" in out.getvalue()
