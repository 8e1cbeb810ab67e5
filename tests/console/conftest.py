"""A served app with a console, for the console's API and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import dspy_actors as dsa
from dspy_actors.console import Console
from dspy_actors.testing import SimLM

# A key of the shape providers issue (never a real one): it must appear on no page.
API_KEY = "sk-proj-" + "Q7vR2mXk9LpT4sWz8NbYc3Hd6JfGa1Ue5KoVi0PqZr" + "T3BlbkFJ"


class Fragile(dsa.Module):
    """Crashes (a bug, not bad input) on the questions in ``broken``: poison until fixed."""

    broken: ClassVar[set[str]] = set()

    def forward(self, question: str) -> dsa.Prediction:
        if question in Fragile.broken:
            raise RuntimeError(f"cannot digest {question!r} (key {API_KEY})")
        return dsa.Prediction(answer=f"fixed: {question}")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Any]:
    with (
        SimLM() as sim,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key=API_KEY, cache=False),
            data_dir=tmp_path / "data",
            poison_threshold=2,
        ) as app,
    ):
        yield app


@pytest.fixture
def console(app: Any) -> Iterator[Console]:
    with app.console(announce=None) as console:
        yield console
