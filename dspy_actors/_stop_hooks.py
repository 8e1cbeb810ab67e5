"""What an app runs when it stops, registered by the parts attached to it from outside
(its consoles, metrics, tracing): ``App.stop`` calls :func:`run_stop_hooks` before it stops
the tree, so none of them outlives the app (a server thread, a subscription)."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["forget_stop_hook", "on_stop", "run_stop_hooks"]

_hooks: dict[int, list[Callable[[], None]]] = {}
_lock = threading.Lock()


def on_stop(app: object, hook: Callable[[], None]) -> None:
    """Run ``hook()`` when ``app`` stops (once; hooks run newest first)."""
    with _lock:
        _hooks.setdefault(id(app), []).append(hook)


def forget_stop_hook(app: object, hook: Callable[[], None]) -> None:
    """Drop a hook (its part was stopped by hand first)."""
    with _lock:
        hooks = _hooks.get(id(app), [])
        if hook in hooks:
            hooks.remove(hook)
        if not hooks:
            _hooks.pop(id(app), None)


def run_stop_hooks(app: object) -> None:
    """Run and drop ``app``'s hooks; one that raises does not keep the others from running."""
    with _lock:
        hooks = _hooks.pop(id(app), [])
    for hook in reversed(hooks):
        try:
            hook()
        except Exception:  # a part that fails to stop must not keep the app from stopping
            pass
