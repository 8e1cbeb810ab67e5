"""Apps for the library tests: started on the test's SimLM (``sim_lm``), stopped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dspy_actors.lm import LM
from dspy_actors.runtime.app import App, start

StartApp = Callable[..., App]


@pytest.fixture
def start_app(tmp_path: Path, make_lm: Callable[..., LM]) -> Iterator[StartApp]:
    apps: list[App] = []

    def make(**kw: Any) -> App:
        kw.setdefault("lm", make_lm())
        kw.setdefault("data_dir", tmp_path / f"app{len(apps)}")
        kw.setdefault("lm_max_in_flight", 8)
        app = start(**kw)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()
