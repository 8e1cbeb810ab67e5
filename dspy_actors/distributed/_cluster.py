"""The executor of an app started with ``ray_address``: one :class:`RayExecutor` per app,
made on the first run that needs it, so every run of the app shares its connection, its
cluster-wide rate limiter and its stats. ``app.stop()`` closes it: a connection it made
is ended (``ray.shutdown``; the cluster stays up), so no Ray driver outlives the app."""

from __future__ import annotations

import threading
import weakref
from functools import partial
from typing import Any

from dspy_actors._stop_hooks import on_stop
from dspy_actors.distributed._ray_executor import RayExecutor
from dspy_actors.runtime._app_config import AppConfig

__all__ = ["app_cluster_executor"]

_executors: weakref.WeakKeyDictionary[Any, RayExecutor] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def app_cluster_executor(app: object, config: AppConfig) -> RayExecutor | None:
    """``app``'s executor on the cluster at ``config.ray_address`` (with the app's
    ``rate_limit``), or None if the app was started without one (local threads)."""
    if config.ray_address is None:
        return None
    with _lock:
        found = _executors.get(app)
        if found is None:
            found = _executors[app] = RayExecutor(config.ray_address, rate_limit=config.rate_limit)
            on_stop(app, partial(_close, app))
        return found


def _close(app: object) -> None:
    """At ``app.stop()`` (after its runs were cancelled): disconnect from the cluster."""
    with _lock:
        executor = _executors.pop(app, None)
    if executor is not None:
        executor.close()
