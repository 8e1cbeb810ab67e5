"""Parallel, MultiChainComparison and majority against SimLM, in-process and served."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.lm.errors import LMError
from dspy_actors.primitives.prediction import Completions
from dspy_actors.testing import SimLM, SimRequest
from dspy_actors.testing._faults import Fault
from tests.dspy_actors.library.conftest import StartApp

MakeLM = Callable[..., LM]


def test_parallel_returns_results_in_order_with_none_for_failures(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    settings.configure(lm=make_lm())
    qa = dsa.Predict("question -> answer")
    sim_lm.inject(
        Fault.bad_request(), times=1, match=lambda r: "What is 3 + 3?" in r.last_user_text
    )
    examples: list[Any] = [
        dsa.Example(question="What is 1 + 1?").with_inputs("question"),
        {"question": "What is 2 + 2?"},
        {"question": "What is 3 + 3?"},
    ]
    results = dsa.Parallel(num_threads=3)([(qa, e) for e in examples])
    assert [r.answer if r is not None else None for r in results] == ["2", "4", None]

    sim_lm.inject(Fault.bad_request(), times=1, match=lambda r: "3 + 3" in r.last_user_text)
    results, failed, errors = dsa.Parallel(return_failed_examples=True)([(qa, e) for e in examples])
    assert results[2] is None
    assert failed == [examples[2]]
    assert isinstance(errors[0], LMError)


def test_a_pair_past_the_parallel_timeout_fails_with_fan_out_timeout() -> None:
    release = threading.Event()

    class Stuck(dsa.Module):
        def forward(self, question: str) -> dsa.Prediction:
            release.wait(30.0)  # held until the fan-out has given up on it
            return dsa.Prediction(answer=question)

    class Quick(dsa.Module):
        def forward(self, question: str) -> dsa.Prediction:
            return dsa.Prediction(answer=question)

    pairs = [(Quick(), {"question": "a"}), (Stuck(), {"question": "b"})]
    try:
        results, failed, errors = dsa.Parallel(
            num_threads=2, timeout=0.2, return_failed_examples=True
        )(pairs)
    finally:
        release.set()
    assert results[0] is not None
    assert results[0].answer == "a"
    assert results[1] is None
    assert failed == [{"question": "b"}]
    assert len(errors) == 1
    assert isinstance(errors[0], dsa.FanOutTimeout)
    assert "did not finish within 0.2s" in str(errors[0])


def test_parallel_stops_at_max_errors_with_a_clear_error(sim_lm: SimLM, make_lm: MakeLM) -> None:
    settings.configure(lm=make_lm())
    sim_lm.inject(Fault.bad_request(), times=100)
    qa = dsa.Predict("question -> answer")
    pairs = [(qa, {"question": f"q{i}"}) for i in range(20)]
    with pytest.raises(dsa.ParallelError, match=r"max_errors=2") as caught:
        dsa.Parallel(num_threads=2, max_errors=2)(pairs)
    assert len(caught.value.errors) >= 2
    assert sim_lm.stats.requests < 20  # it stopped starting pairs


def test_parallel_with_no_errors_allowed_runs_every_good_pair(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    settings.configure(lm=make_lm())
    qa = dsa.Predict("question -> answer")
    pairs = [(qa, {"question": f"What is {i} + 1?"}) for i in range(5)]
    results = dsa.Parallel(num_threads=2, max_errors=0)(pairs)
    assert [r.answer for r in results] == ["1", "2", "3", "4", "5"]


def test_parallel_refuses_a_bad_pair_clearly() -> None:
    with pytest.raises(TypeError, match="pair 0 has a str example"):
        dsa.Parallel()([(dsa.Predict("q -> a"), "not an example")])


class FanOut(dsa.Module):
    """A composite whose forward runs one branch per question, in parallel."""

    def __init__(self) -> None:
        self.qa = dsa.Predict("question -> answer")

    def forward(self, questions: list[str]) -> dsa.Prediction:
        results = dsa.Parallel(num_threads=len(questions))(
            [(self.qa, {"question": q}) for q in questions]
        )
        return dsa.Prediction(answers=[r.answer for r in results])


def test_served_parallel_branches_run_on_the_actors_at_once(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    n = 5
    barrier = threading.Barrier(n, timeout=20)  # passes only if all n requests are in flight

    def respond(request: SimRequest) -> str:
        barrier.wait()
        return f"[[ ## answer ## ]]\n{request.last_user_text.split('#')[-1][:2].strip()}\n\n" + (
            "[[ ## completed ## ]]"
        )

    sim_lm.respond_with(respond)
    app = start_app()
    fan = app.serve("fan", FanOut())
    pred = fan.call(questions=[f"question #{i}" for i in range(n)])
    assert len(pred.answers) == n
    assert len(sim_lm.requests) == n


def test_multi_chain_comparison_shows_each_attempt_and_answers(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    settings.configure(lm=make_lm())
    completions = [
        {"reasoning": "add two and two\nmore", "answer": "4"},
        {"reasoning": "count on fingers", "answer": "5"},
        dsa.Prediction(rationale="recall the table", answer="4"),
    ]
    mcc = dsa.MultiChainComparison("question -> answer", M=3)
    pred = mcc(completions=completions, question="What is 2 + 2?")
    assert pred.answer == "4"
    assert isinstance(pred.rationale, str)
    text = sim_lm.requests[-1].last_user_text
    assert "«I'm trying to add two and two I'm not sure but my prediction is 4»" in text
    assert "[[ ## reasoning_attempt_3 ## ]]" in text
    assert sim_lm.requests[-1].body["temperature"] == 0.7
    with pytest.raises(ValueError, match="got 2 completions but was built with M=3"):
        mcc(completions=completions[:2], question="q")


def test_majority_counts_normalized_answers_earliest_first() -> None:
    preds = [
        dsa.Prediction(answer="The Paris."),
        dsa.Prediction(answer="London"),
        dsa.Prediction(answer="paris"),
        dsa.Prediction(answer="London"),
    ]
    assert dsa.majority(preds).answer == "The Paris."  # tie: the earliest wins
    completions = dsa.Prediction.from_completions(
        [{"answer": "x"}, {"answer": "y"}, {"answer": "y"}]
    )
    assert dsa.majority(completions).answer == "y"
    assert dsa.majority(Completions([{"a": "1", "b": "z"}]), field="a").a == "1"
    assert dsa.majority(preds, normalize=None).answer == "London"
    assert dsa.majority is dsa.optimizers.majority  # one majority, Ensemble's reduce_fn too
