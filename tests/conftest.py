"""Suite-wide guards: every test runs under a timeout (pytest-timeout, see pyproject) and
fails if it leaves Pykka actors or threads behind.

A fixture or helper that owns a long-lived thread on purpose (a session-scoped loopback
server, say) names its threads with a prefix listed in ``ALLOWED_THREAD_PREFIXES``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator

import pykka
import pytest

# Tests never write to the user's real LM cache directory.
os.environ["DSPY_ACTORS_CACHE_DIR"] = tempfile.mkdtemp(prefix="dspy-actors-test-cache-")

# The LM honours proxy variables as httpx does, where nothing is exempt by default: on a
# machine with HTTP(S)_PROXY set, the tests' loopback servers must still be reached directly.
for _name in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_name, "").split(",") if h.strip()]
    os.environ[_name] = ",".join([*_hosts, "127.0.0.1", "localhost", "::1"])

# Threads that legitimately outlive a single test (session-scoped fixtures).
ALLOWED_THREAD_PREFIXES: tuple[str, ...] = ("sim-lm-session",)

# Actors and threads stop asynchronously: give them this long to finish before calling it a leak.
LEAK_GRACE_SECONDS = 5.0


def _live_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t.is_alive() and not t.name.startswith(ALLOWED_THREAD_PREFIXES)
    }


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``xdist_group`` working on pytest 9 (``--dist loadgroup``, see pyproject).

    pytest-xdist 3.8 marks a grouped test by appending ``@group`` to ``item._nodeid``,
    which pytest 9 no longer reads (the id lives in ``item._id``): the groups were
    silently ignored, and a module's Ray cluster started once per worker it reached. A
    worker appends the suffix the same way here; where xdist's own suffix took (pytest
    8), this does nothing.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    from _pytest.nodeid import NodeId  # pytest 9's structured id (no public setter)

    for item in items:
        groups = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        if groups and not item.nodeid.endswith("@" + "_".join(groups)):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def no_leaked_actors_or_threads() -> Iterator[None]:
    """Fail the test if it leaves running Pykka actors or extra threads behind."""
    actors_before = set(pykka.ActorRegistry.get_all())
    threads_before = _live_threads()
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        leaked_actors = [r for r in pykka.ActorRegistry.get_all() if r not in actors_before]
        leaked_threads = [t for t in _live_threads() - threads_before if t.is_alive()]
        if not leaked_actors and not leaked_threads:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    # Clean up so one leaking test does not make every later test fail too.
    for ref in leaked_actors:
        try:
            ref.stop(block=True, timeout=1.0)
        except Exception:
            pass
    names = sorted(t.name for t in leaked_threads)
    pytest.fail(
        f"test leaked {len(leaked_actors)} actor(s) {[str(r) for r in leaked_actors][:10]} "
        f"and {len(names)} thread(s) {names[:10]}",
        pytrace=False,
    )
