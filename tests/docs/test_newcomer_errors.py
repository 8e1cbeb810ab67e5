"""The errors a newcomer meets first name the cause and the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dspy_actors as dsa
from dspy_actors.lm.errors import AuthenticationError
from dspy_actors.primitives import StateError
from dspy_actors.testing import SimLM


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


# -- no API key -----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_keys")
@pytest.mark.parametrize(
    ("model", "env_var"),
    [
        ("openai/gpt-4o-mini", "OPENAI_API_KEY"),
        ("gpt-4o-mini", "OPENAI_API_KEY"),
        ("anthropic/claude-3-5-haiku-latest", "ANTHROPIC_API_KEY"),
    ],
)
def test_a_hosted_provider_without_a_key_says_which_variable_to_set(
    model: str, env_var: str
) -> None:
    # Raised when the LM is made: no request can have gone out.
    with pytest.raises(AuthenticationError) as caught:
        dsa.LM(model)
    assert str(caught.value).startswith(
        f"no key was configured for {model}; set {env_var} or pass api_key="
    )


@pytest.mark.usefixtures("no_keys")
def test_a_key_from_the_environment_or_the_argument_is_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsa.LM("openai/gpt-4o-mini", api_key="sk-given").close()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    dsa.LM("openai/gpt-4o-mini").close()


@pytest.mark.usefixtures("no_keys")
def test_local_and_self_hosted_servers_need_no_key() -> None:
    with SimLM() as sim:
        lm = dsa.LM("openai/local-model", api_base=sim.openai_base, cache=False)
        assert lm("What is 2 + 2?") == ["4"]
        lm.close()
    dsa.LM("ollama_chat/llama3.2").close()  # its default api_base is localhost


@pytest.mark.usefixtures("no_keys")
def test_the_demo_on_a_provider_without_a_key_exits_with_the_fix() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspy_actors.cli", "demo", "--lm", "openai/gpt-4o-mini"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )
    assert result.returncode == 2
    assert "set OPENAI_API_KEY or pass api_key=" in result.stderr
    assert "Traceback" not in result.stderr


# -- inputs by position ---------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimLM]:
    with SimLM() as server:
        yield server


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (dsa.Predict("question -> answer"), "'question'"),
        (dsa.ChainOfThought("context, question -> answer"), "'context', 'question'"),
    ],
)
def test_a_predictor_called_by_position_names_its_input_fields(
    module: dsa.Module, names: str
) -> None:
    with pytest.raises(TypeError) as caught:
        module("What is 2 + 2?")
    message = str(caught.value)
    assert "takes its inputs by keyword, not by position" in message
    assert f"its inputs are {names}" in message
    assert "call it as module(" in message


def test_a_module_whose_forward_takes_positions_still_takes_them(sim: SimLM) -> None:
    class Echo(dsa.Module):
        def __init__(self) -> None:
            self.qa = dsa.Predict("question -> answer")

        def forward(self, question: str) -> dsa.Prediction:
            return self.qa(question=question)

    lm = dsa.LM("openai/m", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.context(lm=lm):
        assert Echo()("What is 2 + 2?").answer == "4"
        with pytest.raises(TypeError, match="positional argument"):
            Echo()("a", "b")  # Python's own error: forward takes one
    lm.close()


def test_a_served_program_called_by_position_names_its_inputs(sim: SimLM, tmp_path: Path) -> None:
    lm = dsa.LM("openai/m", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.start(lm=lm, data_dir=tmp_path, lm_max_in_flight=2) as app:
        qa = app.serve("qa", dsa.ChainOfThought("question -> answer"))
        steps = app.program("steps", [("intent", dsa.Predict, {"signature": "message -> intent"})])
        before = sim.request_count
        with pytest.raises(TypeError, match=r"its inputs are 'question': call it as qa\.call\("):
            qa.call("What is 2 + 2?")
        with pytest.raises(TypeError, match=r"'message': call it as steps\.call\(message=\.\.\.\)"):
            steps.call("Hello")
        assert sim.request_count == before  # refused before anything was sent
        assert qa.call(question="What is 2 + 2?").answer == "4"
    lm.close()


# -- state loaded into the wrong program ------------------------------------------------------


class DraftThenAnswer(dsa.Module):
    def __init__(self) -> None:
        self.draft = dsa.Predict("question -> draft")
        self.answer = dsa.ChainOfThought("question, draft -> answer")

    def forward(self, question: str) -> dsa.Prediction:
        return self.answer(question=question, draft=self.draft(question=question).draft)


def test_a_programs_state_loaded_into_one_predictor_says_so() -> None:
    state = DraftThenAnswer().dump_state()
    with pytest.raises(StateError) as caught:
        dsa.Predict("question -> answer").load_state(state)
    message = str(caught.value)
    assert "the state of a program with predictors ['answer.predict', 'draft']" in message
    assert "state['answer.predict']" in message


def test_one_predictors_state_loaded_into_a_program_says_so() -> None:
    state = dsa.Predict("question -> draft").dump_state()
    with pytest.raises(StateError) as caught:
        DraftThenAnswer().load_state(state)
    message = str(caught.value)
    assert "this is one predictor's state" in message
    assert "program.draft.load_state(state)" in message


def test_a_state_file_of_another_program_says_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "program.json"
    DraftThenAnswer().save(path)
    assert json.loads(path.read_text())["__metadata__"]["program"] == "DraftThenAnswer"
    with pytest.raises(StateError, match=r"the state of a program with predictors \['answer"):
        dsa.Predict("question -> answer").load(path)
    DraftThenAnswer().load(path)  # the right program loads it


# -- serving: the usual slips ------------------------------------------------------------------


def test_serving_a_class_instead_of_an_instance_says_so(sim: SimLM, tmp_path: Path) -> None:
    lm = dsa.LM("openai/m", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.start(lm=lm, data_dir=tmp_path, lm_max_in_flight=2) as app:
        with pytest.raises(TypeError, match=r"got the class ChainOfThought: pass an instance"):
            app.serve("qa", dsa.ChainOfThought)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"step 'answer': Predict\(\) failed: .*"
                           r"arguments go in its third item"):  # fmt: skip
            app.program("p", [("answer", dsa.Predict)])
    lm.close()


def test_a_changed_program_under_a_saved_name_says_how_to_start_afresh(
    sim: SimLM, tmp_path: Path
) -> None:
    lm = dsa.LM("openai/m", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.start(lm=lm, data_dir=tmp_path, lm_max_in_flight=2) as app:
        app.serve("qa", dsa.Predict("question -> answer"))
        with pytest.raises(ValueError, match="a program named 'qa' is already served"):
            app.serve("qa", dsa.ChainOfThought("question -> answer"))
    # A later process, same data_dir, a changed program under the same name:
    with dsa.start(lm=lm, data_dir=tmp_path, lm_max_in_flight=2) as app:
        with pytest.raises(StateError) as caught:
            app.serve("qa", DraftThenAnswer())
        message = str(caught.value)
        assert f"the state saved for 'qa' in {str(tmp_path)!r} was saved from a different" in (
            message
        )
        assert "pass load_saved_state=False" in message
        qa = app.serve("qa", DraftThenAnswer(), load_saved_state=False)  # the fix works
        assert qa.call(question="What is 2 + 2?").answer == "4"
    lm.close()


def test_a_pipeline_upgrade_with_misplaced_state_names_the_step(sim: SimLM, tmp_path: Path) -> None:
    lm = dsa.LM("openai/m", api_base=sim.openai_base, api_key="k", cache=False)
    with dsa.start(lm=lm, data_dir=tmp_path, lm_max_in_flight=2) as app:
        steps = app.program(
            "p", [("answer", dsa.ChainOfThought, {"signature": "question -> answer"})]
        )
        flat = dsa.Predict("question -> answer").dump_state()  # not keyed by step path
        with pytest.raises(StateError, match=r"step 'answer' of 'p': .* keyed by step"):
            steps.upgrade({"answer": flat})
        assert steps.version == 1  # nothing changed
        good = dsa.ChainOfThought("question -> answer").dump_state()["predict"]
        assert steps.upgrade({"answer.predict": good}) == 2
    lm.close()


# -- a removed option -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 8, 64])
def test_lm_workers_was_removed_and_the_error_names_what_replaces_it(
    tmp_path: Path, workers: int
) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    with pytest.raises(TypeError) as caught:
        dsa.start(data_dir=tmp_path, lm_workers=workers)  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"dsa.start(lm_workers={workers})" in message
    assert "lm_max_in_flight=N" in message  # bounds the calls in flight now
    assert "lm_max_queue=N" in message
    assert "lm_processes=N" in message  # LM HTTP off this process
    # Refused before anything started: no app, no thread left behind.
    assert {t.ident for t in threading.enumerate()} <= threads_before
    assert list(tmp_path.iterdir()) == []


def test_lm_processes_takes_its_slots_from_lm_max_in_flight(tmp_path: Path) -> None:
    expected = r"between 0 and lm_max_in_flight \(2: each process takes at least one call\), got 3"
    with pytest.raises(ValueError, match=expected):
        dsa.start(data_dir=tmp_path, lm_processes=3, lm_max_in_flight=2)
