"""A served program follows the latest state saved for it in a shared store.

Called when another replica saved a state (``_postgres_replicas``): if the store now holds
a newer version than the one this replica serves, the program is upgraded to it, blue/green,
exactly as a local ``handle.upgrade`` would (its calls in flight drain first), without
saving the state again (it is in the store already).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dspy_actors import redaction

if TYPE_CHECKING:
    from dspy_actors.runtime.app import App, ServedProgram

__all__ = ["follow_saved_state"]

_log = redaction.get_logger("dspy_actors.runtime.replicas")


def follow_saved_state(app: App, program: ServedProgram, drain_timeout: float = 60.0) -> bool:
    """Upgrade ``program`` to the latest saved version if newer; True if it upgraded."""
    if program.stopped:
        return False
    store = app.parameters
    latest = store.latest_version(program.name)
    if latest is None or latest <= (program.state_version or 0):
        return False
    state = store.load(program.name, latest)
    if state is None:
        return False  # deleted in the meantime
    version = app.upgrade(program, state, drain_timeout=drain_timeout, saved_version=latest)
    _log.info("program.followed", program=program.name, state_version=latest, version=version)
    return True
