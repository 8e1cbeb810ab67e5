"""The app's SQLite stores (parameters, dead letters) and the ``store`` node owning them."""

from __future__ import annotations

from pathlib import Path

import supervisors
from dspy_actors.runtime.dead_letters import DeadLetterStore
from dspy_actors.runtime.parameter_store import ParameterStore


class Stores:
    """The app's SQLite stores; reopened by the ``store`` actor when it restarts."""

    def __init__(self, data_dir: Path, app_name: str) -> None:
        self.data_dir = data_dir
        self.app_name = app_name
        self.params: ParameterStore | None = None
        self.dead_letters: DeadLetterStore | None = None

    def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.params = ParameterStore(self.data_dir / "parameters.sqlite3")
        self.dead_letters = DeadLetterStore(self.data_dir / "dead_letters.sqlite3")

    def close(self) -> None:
        for store in (self.params, self.dead_letters):
            if store is not None:
                store.close()

    def parameters(self) -> ParameterStore:
        """The parameter store (RuntimeError while it is not open)."""
        store = self.params
        if store is None:
            raise RuntimeError(f"app {self.app_name!r}: the parameter store is not open")
        return store


class StoreOwner(supervisors.SupervisedActor):
    """The ``store`` node: owns the stores' lifetime (they are thread-safe objects)."""

    def __init__(self, stores: Stores) -> None:
        super().__init__()
        self.stores = stores

    def on_start(self) -> None:
        self.stores.open()

    def on_stop(self) -> None:
        self.stores.close()

    def on_failure(self, *_exc: object) -> None:
        self.stores.close()
