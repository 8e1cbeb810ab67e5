"""DSPy's module behaviour: sub-module names, parameters(), per-module history, reset(),
the warning for a direct forward() call, and an LM given as a string."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from dspy_actors import _settings as settings
from dspy_actors.lm import LM
from dspy_actors.modules import ChainOfThought, Predict
from dspy_actors.primitives import Example, Module, Prediction
from dspy_actors.testing import SimLM

MakeLM = Callable[..., LM]


class Pipeline(Module):
    def __init__(self) -> None:
        self.draft = ChainOfThought("question -> answer")
        self.checks = [Predict("answer -> verdict")]
        self.by_name = {"final": Predict("answer -> polished")}

    def forward(self, question: str) -> Prediction:
        answer = self.draft(question=question).answer
        self.checks[0](answer=answer)
        return self.by_name["final"](answer=answer)  # type: ignore[no-any-return]


def test_named_sub_modules_use_dspys_names() -> None:
    prog = Pipeline()
    names = [n for n, _ in prog.named_sub_modules()]
    # Breadth first, as DSPy walks: containers are looked into, not named themselves.
    assert names == [
        "self",
        "self.draft",
        "self.draft.predict",
        "self.checks[0]",
        "self.by_name[final]",
    ]
    only_predict = [n for n, _ in prog.named_sub_modules(type_=Predict)]
    assert only_predict == ["self.draft.predict", "self.checks[0]", "self.by_name[final]"]
    prog.draft._compiled = True  # type: ignore[attr-defined]
    assert "self.draft.predict" not in [n for n, _ in prog.named_sub_modules(skip_compiled=True)]


def test_parameters_lists_every_predictor() -> None:
    prog = Pipeline()
    assert prog.parameters() == [p for _, p in prog.named_parameters()]
    assert len(prog.parameters()) == 3


def test_each_module_keeps_the_history_of_calls_beneath_it(sim_lm: SimLM, make_lm: MakeLM) -> None:
    settings.configure(lm=make_lm())
    prog = Pipeline()
    prog(question="2 + 2?")
    assert len(prog.history) == 3
    assert len(prog.draft.history) == 1
    assert len(prog.draft.predict.history) == 1
    assert len(prog.checks[0].history) == 1
    entry = prog.draft.history[0]
    assert entry["messages"] == sim_lm.requests[0].messages
    assert entry["outputs"] == prog.draft.predict.history[0]["outputs"]
    assert entry["model"] == "openai/sim-model"
    shown = prog.inspect_history(3)
    assert "[[ ## question ## ]]\n2 + 2?" in shown
    assert "[response]" in shown
    copy = prog.deepcopy()
    assert copy.history == []  # a copy records its own calls


def test_reset_clears_demos_and_lm(make_lm: MakeLM) -> None:
    predict = Predict("question -> answer")
    predict.lm = make_lm()
    predict.demos = [Example(question="q", answer="a")]
    predict.reset()
    assert predict.lm is None
    assert predict.demos == []


def test_reset_copy_keeps_the_lm_an_optimizer_needs(make_lm: MakeLM) -> None:
    predict = Predict("question -> answer")
    predict.lm = make_lm()
    predict.demos = [Example(question="q", answer="a")]
    fresh = predict.reset_copy()
    assert fresh.lm is predict.lm
    assert fresh.demos == []


def test_calling_forward_directly_warns(
    sim_lm: SimLM, make_lm: MakeLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dspy_actors.module")
    settings.configure(lm=make_lm())

    class Outer(Module):
        def __init__(self) -> None:
            self.inner = Predict("question -> answer")

        def forward(self, question: str) -> Prediction:
            return self.inner(question=question)  # type: ignore[no-any-return]

    class Sub(Outer):
        def forward(self, question: str) -> Prediction:
            return super().forward(question=question)

    Outer()(question="fine")
    Sub()(question="fine too")  # super().forward inside forward is not a direct call
    assert "directly" not in caplog.text
    Outer().forward(question="direct")
    assert "Calling module.forward(...) on Outer directly is discouraged" in caplog.text
    assert len(sim_lm.requests) == 3


def test_an_lm_given_as_a_string_is_rejected_up_front(sim_lm: SimLM) -> None:
    with pytest.raises(ValueError, match=r"not the string 'openai/gpt-4o-mini': use dspy_actors"):
        Predict("question -> answer")(question="hi", lm="openai/gpt-4o-mini")
    with pytest.raises(ValueError, match="not the string"):
        Pipeline().set_lm("openai/gpt-4o-mini")
    with pytest.raises(ValueError, match=r"configure\(lm=dspy_actors.LM\('openai/gpt-4o-mini'\)\)"):
        settings.configure(lm="openai/gpt-4o-mini")
    with pytest.raises(ValueError, match="not the string"), settings.context(lm="openai/x"):
        pass
    assert settings.get("lm") is None
    assert sim_lm.requests == []
