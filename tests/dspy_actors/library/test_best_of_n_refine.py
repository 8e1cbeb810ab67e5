"""BestOfN and Refine against SimLM: DSPy's semantics in-process, fan-out when served."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.lm.cache import Cache
from dspy_actors.lm.errors import LMError
from dspy_actors.testing import SimLM, SimRequest
from dspy_actors.testing._faults import Fault
from tests.dspy_actors.library.conftest import StartApp

MakeLM = Callable[..., LM]


def _answers(*texts: str) -> Callable[[SimRequest], str]:
    """A responder answering `answer` with each of ``texts`` in turn (the last repeats)."""
    lock = threading.Lock()
    seen: list[int] = []

    def respond(request: SimRequest) -> str:
        with lock:
            i = len(seen)
            seen.append(i)
        text = texts[min(i, len(texts) - 1)]
        return f"[[ ## answer ## ]]\n{text}\n\n[[ ## completed ## ]]"

    return respond


def one_word(_inputs: dict[str, Any], pred: dsa.Prediction) -> float:
    return 1.0 if len(str(pred.answer).split()) == 1 else 0.0


def test_best_of_n_stops_at_the_first_attempt_reaching_the_threshold(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(_answers("it is Brussels", "the city of Brussels", "Brussels", "Paris"))
    settings.configure(lm=make_lm())
    best = dsa.BestOfN(dsa.Predict("question -> answer"), N=5, reward_fn=one_word, threshold=1.0)
    pred = best(question="Capital of Belgium?")
    assert pred.answer == "Brussels"
    assert len(sim_lm.requests) == 3  # the later attempts never ran
    for request in sim_lm.requests:
        assert request.body["temperature"] == 1.0
        assert "rollout_id" not in request.body  # part of the cache key only


def test_best_of_n_returns_the_best_when_none_reaches_the_threshold(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(_answers("a b c d", "a b", "a b c"))
    settings.configure(lm=make_lm())

    def shorter(_inputs: dict[str, Any], pred: dsa.Prediction) -> float:
        return -len(str(pred.answer).split())

    best = dsa.BestOfN(dsa.Predict("question -> answer"), N=3, reward_fn=shorter, threshold=0)
    assert best(question="q").answer == "a b"
    assert len(sim_lm.requests) == 3


def test_each_attempt_is_its_own_cache_entry_by_rollout_id(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(_answers("x y", "x y z", "w"))
    lm = make_lm(cache=True, cache_store=Cache(disk_path=None))
    settings.configure(lm=lm)
    best = dsa.BestOfN(dsa.Predict("question -> answer"), N=3, reward_fn=one_word, threshold=1.0)
    assert best(question="q").answer == "w"
    assert len(sim_lm.requests) == 3  # same prompt, three rollout ids: three cache keys
    assert best(question="q").answer == "w"
    assert len(sim_lm.requests) == 3  # and the second run is served from the cache
    # A rollout_id set by the caller shifts the ids: new keys, new requests.
    with dsa.context(rollout_id=10):
        best(question="q")
    assert len(sim_lm.requests) > 3
    assert all("rollout_id" not in r.body for r in sim_lm.requests)


def test_a_per_call_rollout_id_makes_a_new_cache_entry_and_is_not_sent(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    settings.configure(lm=make_lm(cache=True, cache_store=Cache(disk_path=None)))
    qa = dsa.Predict("question -> answer")
    qa(question="What is 1 + 1?")
    qa(question="What is 1 + 1?")
    assert len(sim_lm.requests) == 1  # cached
    qa(question="What is 1 + 1?", config={"rollout_id": 1, "temperature": 1.0})
    qa(question="What is 1 + 1?", config={"rollout_id": 1, "temperature": 1.0})
    assert len(sim_lm.requests) == 2  # a new key once, then cached under it
    assert "rollout_id" not in sim_lm.requests[-1].body
    assert sim_lm.requests[-1].body["temperature"] == 1.0


def test_best_of_n_tolerates_fail_count_failures_then_raises(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(_answers("ok"))
    settings.configure(lm=make_lm())
    sim_lm.inject(Fault.bad_request(), times=2)
    best = dsa.BestOfN(dsa.Predict("question -> answer"), N=3, reward_fn=one_word, threshold=1.0)
    assert best(question="q").answer == "ok"  # two failures tolerated (fail_count=N)

    sim_lm.inject(Fault.bad_request(), times=2)
    strict = dsa.BestOfN(
        dsa.Predict("question -> answer"), N=3, reward_fn=one_word, threshold=1.0, fail_count=1
    )
    with pytest.raises(LMError, match="bad request"):
        strict(question="q")

    sim_lm.inject(Fault.bad_request(), times=3)
    with pytest.raises(LMError):  # every attempt failed: the last error, never None
        dsa.BestOfN(dsa.Predict("question -> answer"), N=3, reward_fn=one_word, threshold=1)(
            question="q"
        )


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="N must be a positive int"):
        dsa.BestOfN(dsa.Predict("q -> a"), N=0, reward_fn=one_word, threshold=1.0)
    with pytest.raises(ValueError, match="fail_count"):
        dsa.Refine(dsa.Predict("q -> a"), N=2, reward_fn=one_word, threshold=1.0, fail_count=-1)


class TwoSteps(dsa.Module):
    def __init__(self) -> None:
        self.draft = dsa.Predict("question -> answer")

    def forward(self, question: str) -> dsa.Prediction:
        return self.draft(question=question)  # type: ignore[no-any-return]


def _refine_responder(advice_requests: list[SimRequest], answers: list[str]) -> Any:
    lock = threading.Lock()

    def respond(request: SimRequest) -> str:
        text = request.last_user_text
        if "[[ ## advice ## ]]" in text:
            with lock:
                advice_requests.append(request)
            advice = json.dumps({"draft": "Answer with one word only."})
            return (
                "[[ ## discussion ## ]]\ndraft was too wordy\n\n"
                f"[[ ## advice ## ]]\n{advice}\n\n[[ ## completed ## ]]"
            )
        with lock:
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"

    return respond


def test_refine_feeds_the_advice_from_a_failed_attempt_into_the_next(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    advice_requests: list[SimRequest] = []
    sim_lm.respond_with(_refine_responder(advice_requests, ["it is Brussels", "Brussels"]))
    settings.configure(lm=make_lm())
    refine = dsa.Refine(TwoSteps(), N=3, reward_fn=one_word, threshold=1.0)
    pred = refine(question="Capital of Belgium?")
    assert pred.answer == "Brussels"
    (advice_request,) = advice_requests
    asked = advice_request.last_user_text
    # The advisor sees the program's code, the predictor's inputs and outputs, the reward.
    assert "class TwoSteps" in asked
    assert "it is Brussels" in asked
    assert "def one_word" in asked
    assert re.search(r"\[\[ ## reward_value ## \]\]\n0\.0", asked)
    first, last = (r for r in sim_lm.requests if r is not advice_request)
    assert "hint_" not in first.last_user_text
    assert "[[ ## hint_ ## ]]\nAnswer with one word only." in last.last_user_text
    assert refine.dump_state().keys() == {"module.draft"}  # the advisor is no parameter


def test_served_best_of_n_runs_its_attempts_at_once(sim_lm: SimLM, start_app: StartApp) -> None:
    n = 4
    # Every attempt's request waits here until all n have arrived: attempts made one after
    # another would never get past the first (the barrier breaks and the test fails).
    barrier = threading.Barrier(n, timeout=20)
    answers = iter(["a b", "a b c", "done", "a b c d"])
    lock = threading.Lock()

    def respond(request: SimRequest) -> str:
        barrier.wait()
        with lock:
            answer = next(answers)
        return f"[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]"

    sim_lm.respond_with(respond)
    app = start_app()
    best = app.serve(
        "best",
        dsa.BestOfN(dsa.Predict("question -> answer"), N=n, reward_fn=one_word, threshold=1.0),
    )
    assert best.call(question="q").answer == "done"
    assert len(sim_lm.requests) == n
    assert sorted(r.body["temperature"] for r in sim_lm.requests) == [1.0] * n


def test_served_refine_advises_and_hints_through_the_actors(
    sim_lm: SimLM, start_app: StartApp
) -> None:
    advice_requests: list[SimRequest] = []
    sim_lm.respond_with(_refine_responder(advice_requests, ["two words", "one"]))
    app = start_app()
    refine = app.serve("refine", dsa.Refine(TwoSteps(), N=2, reward_fn=one_word, threshold=1.0))
    assert refine.call(question="q").answer == "one"
    assert len(advice_requests) == 1
    assert "[[ ## hint_ ## ]]" in sim_lm.requests[-1].last_user_text
