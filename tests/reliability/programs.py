"""Programs and app settings the reliability suite shares."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime.app import App

StartApp = Callable[..., App]


class Retriever(dsa.Module):
    """A plain-Python first step: a few passages about the question."""

    def forward(self, question: str) -> dsa.Prediction:
        return dsa.Prediction(context=[f"passage {i} about {question}" for i in range(2)])


PIPELINE: list[tuple[str, Any, dict[str, Any]]] = [
    ("retrieve", Retriever, {}),
    ("answer", dsa.Predict, {"signature": "context: list[str], question -> answer"}),
]


class Poison(dsa.Module):
    """Crashes (a bug, not a bad input) on questions starting with "poison"; answers others."""

    crashes = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self.qa = dsa.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        if question.startswith("poison"):
            with Poison.lock:
                Poison.crashes += 1
            raise RuntimeError("cannot digest this input")
        return self.qa(question=question)


class NeverStarts(dsa.Module):
    """A module whose every start fails: its actor crash-loops from the first start."""

    starts = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()

    def forward(self, question: str) -> Any:  # pragma: no cover - never reached
        return dsa.Prediction(answer=question)

    def __deepcopy__(self, memo: dict[int, Any]) -> NeverStarts:
        with NeverStarts.lock:
            NeverStarts.starts += 1
            if NeverStarts.starts > 1:  # the first copy is app.serve's template
                raise RuntimeError("this module cannot start")
        return NeverStarts()


@pytest.fixture
def start_app(make_app: StartApp) -> StartApp:
    """The plugin's ``make_app`` (an LM on the test's SimLM, stores in tmp_path, all
    stopped after), with 16 LM worker threads unless told otherwise."""

    def make(**kw: Any) -> App:
        kw.setdefault("lm_max_in_flight", 16)
        return make_app(**kw)

    return make
