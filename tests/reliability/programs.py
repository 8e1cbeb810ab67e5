"""Programs and app settings the reliability suite shares."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.runtime.app import App
from dspy_actors.testing import SimLM, lm_on

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
def start_app(sim_lm: SimLM, tmp_path: Path) -> Iterator[StartApp]:
    """Start apps on the test's SimLM (stores in tmp_path); all stopped at the end."""
    apps: list[App] = []
    lms: list[dsa.LM] = []

    def make(**kw: Any) -> App:
        if "lm" not in kw:
            kw["lm"] = lm_on(sim_lm)
            lms.append(kw["lm"])
        kw.setdefault("data_dir", tmp_path / f"app{len(apps)}")
        kw.setdefault("lm_workers", 16)
        app = dsa.start(**kw)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()
    for lm in lms:
        lm.close()
