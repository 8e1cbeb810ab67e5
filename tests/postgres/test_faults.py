"""Faults of a shared PostgreSQL store: the database unreachable at start, restarted under
load, its connections killed. Calls that do not need the store keep working; store writes
are retried or fail with our StoreError; nothing is half-written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import dspy_actors as dsa
from dspy_actors.lm import LM
from dspy_actors.runtime._parameter_store import ParameterStore, StoreError
from dspy_actors.runtime.app import program_state
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing.postgres import PostgresCluster
from dspy_actors.testing.sim_lm import SimLM

DEMO = "What colour is the sky on a clear day?"


@pytest.fixture
def lm(sim_lm_session: SimLM) -> Iterator[LM]:
    client = LM("openai/sim-model", api_base=sim_lm_session.openai_base, api_key="k", cache=False)
    yield client
    client.close()


def _demo_state() -> dict[str, Any]:
    state = program_state(dsa.Predict("question -> answer"))
    state["self"]["demos"] = [{"question": DEMO, "answer": "blue"}]
    return state


def test_unreachable_at_start_serves_then_catches_up_when_it_is_back(
    lm: LM, tmp_path: Path
) -> None:
    """Nothing listens on the port at start: the app starts and serves the module's own
    state; store operations fail clearly; once the database is up, the program follows the
    state saved there."""
    cluster = PostgresCluster()  # not started yet: nothing listens on its port
    url = cluster.url
    with dsa.start(lm=lm, data_dir=tmp_path, store=url, store_retry_for=0.5) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        assert qa.call(question="still works?").answer  # no store needed for a call
        with pytest.raises(StoreError) as caught:
            app.parameters.save("qa", _demo_state())
        message = str(caught.value)
        assert "parameter_store" in message
        assert "nothing was written" in message
        assert f"127.0.0.1:{cluster.port}/postgres" in message
        try:
            cluster.start()
            with ParameterStore(url) as other_replica:
                saved = other_replica.save("qa", _demo_state())
            # The listener connects, checks every program, and follows the saved state.
            wait_until(lambda: qa.version == 2)
            assert app.parameters.latest_version("qa") == saved
        finally:
            app.stop()
            cluster.stop()


def test_connections_killed_are_replaced_and_the_listener_resyncs(
    lm: LM, postgres_url: str, tmp_path: Path
) -> None:
    with dsa.start(lm=lm, data_dir=tmp_path / "a", store=postgres_url) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        first = app.parameters.latest_version("qa")
        wait_until(app.stores.listening)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 2  # the pool's connection and the listener's
        # The pool hands out a live connection (the dead one is checked and replaced).
        assert app.parameters.load("qa", first) is not None
        # Another replica saves while this one may still be reconnecting its listener:
        # caught by the notification, or by the check every program gets on reconnect.
        with ParameterStore(postgres_url) as other_replica:
            saved = other_replica.save("qa", _demo_state())
        wait_until(lambda: qa.version == 2)
        assert app.parameters.latest_version("qa") == saved


def test_database_restarted_under_load(
    lm: LM, postgres_cluster: PostgresCluster, postgres_url: str, tmp_path: Path
) -> None:
    """Callers keep calling and saving while the server restarts. Every call answers; every
    save returns a version that loads back whole, or raises StoreError; no torn rows."""
    with dsa.start(lm=lm, data_dir=tmp_path, store=postgres_url, store_retry_for=30) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        store = app.parameters
        stop = threading.Event()
        saved: list[tuple[int, int]] = []  # (version, marker)
        errors: list[BaseException] = []
        calls = [0]
        lock = threading.Lock()

        def saver(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                marker = worker * 1_000_000 + n
                try:
                    version = store.save("load", {"marker": marker, "pad": "x" * 2000})
                except StoreError as exc:
                    errors.append(exc)
                    continue
                with lock:
                    saved.append((version, marker))

        def caller(worker: int) -> None:
            while not stop.is_set():
                qa.call(question=f"q{worker}")
                with lock:
                    calls[0] += 1

        threads = [
            *(threading.Thread(target=saver, args=(i,), name=f"saver-{i}") for i in range(4)),
            *(threading.Thread(target=caller, args=(i,), name=f"caller-{i}") for i in range(4)),
        ]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(saved) >= 20)
            before = (len(saved), calls[0])
            postgres_cluster.restart()
            # Saves and calls go on after the restart (saves retried on new connections).
            wait_until(lambda: len(saved) >= before[0] + 20 and calls[0] >= before[1] + 20)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
        for error in errors:  # a failure is ours, and says what happened to the write
            assert isinstance(error, StoreError)
            assert "parameter_store" in str(error)
        for version, marker in saved:
            state = store.load("load", version)
            assert state == {"marker": marker, "pad": "x" * 2000}
        versions = [v.version for v in store.versions("load")]
        assert len(versions) == len(set(versions))
        # Every row is whole: its state parses (load returned dicts above) and matches.
        assert {v for v, _ in saved} <= set(versions)
