"""The app's stores (parameters, dead letters, shared poison counts) and the ``store`` node
owning them: SQLite files in its data dir (the default), or one PostgreSQL database shared
by every replica (``dsa.start(store="postgresql://...")``).

With PostgreSQL, the app's stores share one connection pool, and a listener follows the
states other replicas save (see ``_postgres_replicas``). The database may be unreachable
when the app starts: the app starts anyway, and operations needing a store wait for it (up
to the pool's ``retry_for``), then fail with StoreError.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import supervisors
from dspy_actors.runtime._dead_letters import DeadLetterStore
from dspy_actors.runtime._parameter_store import ParameterStore
from dspy_actors.runtime._poison import PoisonCounts
from dspy_actors.runtime._store_backend import is_database_url

__all__ = ["StoreOwner", "Stores", "check_store_url"]


def check_store_url(store: str | None) -> None:
    """Fail early, naming the argument, on a ``store=`` that is no PostgreSQL URL."""
    if store is None:
        return
    if not is_database_url(store):
        shown = store.split("://", 1)[0] + "://..." if "://" in store else "a non-URL string"
        raise ValueError(
            f"dsa.start(store=...) takes a postgresql:// URL (or None for SQLite files in "
            f"data_dir), got {shown}"
        )
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "dsa.start(store='postgresql://...') needs psycopg 3 and psycopg_pool: "
            "pip install 'dspy-actors[postgres]'"
        ) from exc


class Stores:
    """The app's stores; reopened by the ``store`` actor when it restarts.

    ``on_saved(program)``: called (PostgreSQL only) when any replica saved a state of
    ``program`` (None: check every program), on the listener's thread.
    """

    def __init__(
        self,
        data_dir: Path,
        app_name: str,
        store_url: str | None = None,
        *,
        on_saved: Callable[[str | None], None] | None = None,
        retry_for: float = 10.0,
    ) -> None:
        self.data_dir = data_dir
        self.app_name = app_name
        self.store_url = store_url
        self.params: ParameterStore | None = None
        self.dead_letters: DeadLetterStore | None = None
        # Crash counts shared by replicas (PostgreSQL only; in memory with SQLite).
        self.poison_counts: PoisonCounts | None = None
        self._on_saved = on_saved
        self._retry_for = retry_for
        self._database: Any = None
        self._listener: Any = None

    @property
    def shared(self) -> bool:
        """Whether the stores live in a database shared by replicas (it may be down)."""
        return self.store_url is not None

    @property
    def where(self) -> str:
        """Where the stores live, for messages: the data dir, or the database's URL without
        its password."""
        if self.store_url is None:
            return str(self.data_dir)
        from dspy_actors._postgres_url import display_url

        return display_url(self.store_url)

    def open(self) -> None:
        if self.store_url is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.params = ParameterStore(self.data_dir / "parameters.sqlite3")
            self.dead_letters = DeadLetterStore(self.data_dir / "dead_letters.sqlite3")
            return
        from dspy_actors.runtime._postgres import PostgresDatabase
        from dspy_actors.runtime._postgres_replicas import SavedStateListener

        self._database = PostgresDatabase(self.store_url, retry_for=self._retry_for)
        self.params = ParameterStore(self._database)
        self.dead_letters = DeadLetterStore(self._database)
        self.poison_counts = PoisonCounts(self._database)
        if self._on_saved is not None:
            self._listener = SavedStateListener(
                self.store_url, self._on_saved, thread_name=f"{self.app_name}-pg-listen"
            ).start()

    def listening(self) -> bool:
        """Whether this app is listening for other replicas' saves (PostgreSQL only)."""
        return self._listener is not None and self._listener.connected.is_set()

    def location(self, filename: str) -> Any:
        """Where another store of the app lives: ``data_dir/filename``, or the app's
        PostgreSQL database (shared pool)."""
        if self._database is not None:
            return self._database
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir / filename

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for store in (self.params, self.dead_letters, self.poison_counts):
            if store is not None:
                store.close()
        if self._database is not None:
            self._database.close()
            self._database = None

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
