"""Names that survive restarts: a stable name resolves to whichever actor is alive now."""

from __future__ import annotations

import threading
from typing import Any, Literal

import pykka

from supervisors._actor import ask, monitor
from supervisors._errors import AlreadyRegistered, NotRegistered
from supervisors._exit import Down
from supervisors._lifecycle import lifecycle_of

Ref = pykka.ActorRef[Any]


class Registry:
    """Maps names to live ``ActorRef``s. Thread-safe; lookups never return a dead ref.

    ``keys="unique"`` (default): one actor per name, as a process registry; supervisors
    re-point a child's name to its new ref on every restart. ``keys="duplicate"``: many
    actors per key, for publish/subscribe (:meth:`dispatch` tells every live one).
    Supervised actors are removed when they exit (via a monitor); for plain Pykka actors the
    liveness check on lookup keeps the promise.
    """

    def __init__(self, keys: Literal["unique", "duplicate"] = "unique") -> None:
        if keys not in ("unique", "duplicate"):
            raise ValueError(f"keys must be 'unique' or 'duplicate', got {keys!r}")
        self.keys = keys
        self._lock = threading.Lock()
        self._entries: dict[str, list[Ref]] = {}

    def register(self, name: str, ref: Ref) -> None:
        """Map ``name`` to ``ref`` (unique: replacing a dead entry; AlreadyRegistered if live)."""
        with self._lock:
            refs = [r for r in self._entries.get(name, ()) if r.is_alive()]
            if self.keys == "unique" and refs and refs[0] is not ref:
                raise AlreadyRegistered(name)
            if ref not in refs:
                refs.append(ref)
            self._entries[name] = refs
        try:
            lifecycle_of(ref)
        except TypeError:
            return  # A plain Pykka actor: lookups check liveness instead.
        monitor(ref, lambda down: self._on_down(name, down))

    def _on_down(self, name: str, down: Down) -> None:
        self.unregister(name, down.actor)

    def unregister(self, name: str, ref: Ref | None = None) -> None:
        """Remove ``name`` (only its entry for ``ref``, if given). Missing names are ignored."""
        with self._lock:
            refs = self._entries.get(name)
            if refs is None:
                return
            remaining = [] if ref is None else [r for r in refs if r is not ref]
            if remaining:
                self._entries[name] = remaining
            else:
                del self._entries[name]

    def whereis(self, name: str) -> Ref | None:
        """The live ref registered as ``name`` (the first, for duplicate keys), or None."""
        refs = self._entries.get(name)
        if refs:
            for ref in refs:
                if not ref.actor_stopped.is_set():
                    return ref
        return None

    def lookup(self, name: str) -> Ref:
        """Like :meth:`whereis`, but raises :class:`NotRegistered` with the name."""
        ref = self.whereis(name)
        if ref is None:
            raise NotRegistered(name)
        return ref

    def lookup_all(self, key: str) -> list[Ref]:
        """Every live ref registered under ``key``."""
        return [r for r in self._entries.get(key, ()) if r.is_alive()]

    def dispatch(self, key: str, message: Any) -> int:
        """Tell ``message`` to every live actor under ``key``; returns how many received it."""
        sent = 0
        for ref in self.lookup_all(key):
            try:
                ref.tell(message)
                sent += 1
            except pykka.ActorDeadError:
                pass  # Died between lookup and tell: it no longer subscribes.
        return sent

    def ask(self, name: str, message: Any, *, timeout: float) -> Any:
        """Resolve ``name`` now and ask its actor (see :func:`supervisors.ask`)."""
        return ask(self.lookup(name), message, timeout=timeout)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, refs in self._entries.items() if any(r.is_alive() for r in refs))


registry = Registry()
"""The process-wide default registry that supervisors register named children in."""
