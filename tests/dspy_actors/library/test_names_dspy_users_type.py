"""Module.batch, asyncify, inspect_history, callbacks and track_usage, against SimLM."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.lm._history import clear_history
from dspy_actors.testing import SimLM
from dspy_actors.testing._faults import Fault
from tests.dspy_actors.library.conftest import StartApp

MakeLM = Callable[..., LM]


def test_module_batch_runs_each_examples_inputs(sim_lm: SimLM, make_lm: MakeLM) -> None:
    settings.configure(lm=make_lm())
    qa = dsa.Predict("question -> answer")
    examples = [
        dsa.Example(question=f"What is {i} + {i}?", answer=str(2 * i)).with_inputs("question")
        for i in range(6)
    ]
    results = qa.batch(examples, num_threads=3)
    assert [r.answer for r in results] == [str(2 * i) for i in range(6)]
    assert all("[[ ## answer ## ]]" not in r.answer for r in results)

    sim_lm.inject(
        Fault.bad_request(), times=1, match=lambda r: "What is 0 + 0?" in r.last_user_text
    )
    results, failed, errors = qa.batch(examples, return_failed_examples=True)
    assert results[0] is None
    assert len(failed) == 1
    assert len(errors) == 1
    assert failed[0]["question"] == "What is 0 + 0?"


def test_asyncify_runs_the_program_off_the_loop_with_the_callers_settings(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    qa = dsa.asyncify(dsa.Predict("question -> answer"))

    async def main() -> list[Any]:
        with dsa.context(lm=make_lm()):  # an override, not configure: it must travel
            return list(await asyncio.gather(*(qa(question=f"What is {i} + 1?") for i in range(4))))

    results = asyncio.run(main())
    assert [r.answer for r in results] == ["1", "2", "3", "4"]


def test_inspect_history_prints_the_last_calls_of_any_lm(
    sim_lm: SimLM, make_lm: MakeLM, capsys: Any
) -> None:
    clear_history()
    first, second = make_lm(), make_lm(model="openai/other-model")
    dsa.Predict("question -> answer")(question="What is 1 + 1?", lm=first)
    dsa.Predict("question -> answer")(question="What is 2 + 5?", lm=second)
    text = dsa.inspect_history(n=2)
    printed = capsys.readouterr().out
    assert text in printed
    assert text.index("openai/sim-model") < text.index("openai/other-model")
    assert "What is 2 + 5?" in text
    assert "[[ ## answer ## ]]\n7" in text
    assert "test-key" not in text
    assert dsa.inspect_history(n=1).count("User message:") == 1


class Recorder(dsa.BaseCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.lock = threading.Lock()

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(("module_start", type(instance).__name__, inputs))

    def on_module_end(
        self, call_id: str, outputs: Any, exception: BaseException | None = None
    ) -> None:
        with self.lock:
            self.events.append(("module_end", outputs, exception))

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(("lm_start", instance.model, inputs["messages"][-1]["content"]))

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self.lock:
            self.events.append(("lm_end", outputs, exception))


class Broken(dsa.BaseCallback):
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        raise RuntimeError("callback bug")


def test_callbacks_see_module_type_inputs_outputs_and_lm_calls(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    recorder = Recorder()
    settings.configure(lm=make_lm(), callbacks=[recorder, Broken()])
    cot = dsa.ChainOfThought("question -> answer")
    pred = cot(question="What is 2 + 2?")
    kinds = [e[0] for e in recorder.events]
    assert kinds == [
        "module_start",
        "module_start",
        "lm_start",
        "lm_end",
        "module_end",
        "module_end",
    ]
    assert recorder.events[0][1:] == (
        "ChainOfThought",
        {"args": (), "kwargs": {"question": "What is 2 + 2?"}},
    )
    assert recorder.events[1][1] == "Predict"
    assert "What is 2 + 2?" in recorder.events[2][2]
    assert "[[ ## answer ## ]]" in recorder.events[3][1][0]
    assert recorder.events[-1][1] is pred

    recorder.events.clear()
    sim_lm.inject(Fault.bad_request())
    try:
        dsa.Predict("question -> answer")(question="q")
    except dsa.LMError:
        pass
    assert [e[0] for e in recorder.events] == ["module_start", "lm_start", "lm_end", "module_end"]
    assert isinstance(recorder.events[-1][2], dsa.LMError)


def test_callbacks_hear_of_served_calls_too(sim_lm: SimLM, start_app: StartApp) -> None:
    recorder = Recorder()
    settings.configure(callbacks=[recorder])
    app = start_app()
    qa = app.serve("qa", dsa.Predict("question -> answer"))
    pred = qa.call(question="What is 3 + 3?")
    kinds = [e[0] for e in recorder.events]
    assert kinds == ["module_start", "lm_start", "lm_end", "module_end"]
    assert recorder.events[0][1:] == (
        "Predict",
        {"args": (), "kwargs": {"question": "What is 3 + 3?"}},
    )
    assert recorder.events[-1][1] == pred


def test_track_usage_counts_by_model_in_threads_and_served_calls(
    sim_lm: SimLM, make_lm: MakeLM, start_app: StartApp
) -> None:
    first, second = make_lm(), make_lm(model="openai/other-model")
    qa = dsa.Predict("question -> answer")
    app = start_app(lm=first)
    served = app.serve("qa", dsa.Predict("question -> answer"))
    with dsa.track_usage() as usage:
        qa(question="What is 1 + 1?", lm=first)
        dsa.Parallel(num_threads=2)([(qa, {"question": "q", "lm": second})] * 2)
        served.call(question="What is 4 + 4?")
        with dsa.track_usage() as inner:
            qa(question="What is 2 + 2?", lm=second)
    qa(question="not tracked", lm=first)
    totals = usage.get_total_tokens()
    assert set(totals) == {"openai/sim-model", "openai/other-model"}
    assert totals["openai/sim-model"]["calls"] == 2
    assert totals["openai/other-model"]["calls"] == 3
    for entry in totals.values():
        assert entry["total_tokens"] == entry["prompt_tokens"] + entry["completion_tokens"] > 0
    assert inner.get_total_tokens()["openai/other-model"]["calls"] == 1
    assert set(inner.get_total_tokens()) == {"openai/other-model"}


def test_dspy_settings_we_do_not_have_say_what_to_use_instead() -> None:
    with pytest.raises(TypeError, match=r"track_usage: wrap the code in `with dspy_actors"):
        dsa.configure(track_usage=True)
    with pytest.raises(TypeError, match=r"num_threads= to Evaluate, Parallel or Module.batch"):
        dsa.configure(num_threads=8)
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['nonsense'\]"):
        dsa.configure(nonsense=1)
