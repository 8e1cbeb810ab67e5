"""Child specifications: what a supervisor starts, and how it restarts and stops it."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import pykka

from supervisors._actor import supervised

RestartType = Literal["permanent", "transient", "temporary"]
ShutdownType = float | Literal["brutal_kill", "infinity"]
ChildType = Literal["worker", "supervisor"]
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")

ActorFactory = Callable[..., pykka.ActorRef[Any]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay restarts of a crash-looping child: exponential from ``min_delay`` to ``max_delay``.

    The n-th consecutive restart waits ``min(max_delay, min_delay * 2**(n-1))``, scaled by a
    random factor in ``[1 - jitter, 1 + jitter]``. The count resets once the child has run
    for ``reset_after`` seconds (default: ``max_delay``) before crashing again.
    Restarts still count toward the supervisor's intensity when they happen.
    """

    min_delay: float = 0.01
    max_delay: float = 5.0
    jitter: float = 0.1
    reset_after: float | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.min_delay <= self.max_delay) or not math.isfinite(self.max_delay):
            raise ValueError(
                f"Backoff needs 0 <= min_delay <= max_delay < inf, got "
                f"min_delay={self.min_delay!r}, max_delay={self.max_delay!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff jitter must be within [0, 1], got {self.jitter!r}")

    def delay(self, consecutive_restarts: int, rng: random.Random) -> float:
        """Seconds to wait before the ``consecutive_restarts``-th restart in a row (1-based)."""
        exponent = max(consecutive_restarts - 1, 0)
        base = min(self.max_delay, self.min_delay * (2.0 ** min(exponent, 64)))
        return base * (1.0 + self.jitter * (2.0 * rng.random() - 1.0))

    @property
    def reset_seconds(self) -> float:
        return self.max_delay if self.reset_after is None else self.reset_after


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How a supervisor starts, restarts and stops one child (OTP's child spec).

    ``start`` is a Pykka actor class (started with ``args``/``kwargs``; a plain
    ``ThreadingActor`` class is wrapped with :func:`supervised`) or a factory returning the
    ``ActorRef`` of a supervised actor. ``restart``: ``permanent`` always restarts,
    ``transient`` only after an abnormal exit (crash or killed), ``temporary`` never.
    ``shutdown``: seconds to wait for a graceful stop before abandoning the child,
    ``"brutal_kill"`` to not wait at all, ``"infinity"`` to wait as long as it takes
    (the default for supervisors). ``name``: if set, the child's live ref is registered under
    it in the supervisor's registry, re-pointed on every restart.
    """

    id: str
    start: type[pykka.Actor] | ActorFactory
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    restart: RestartType = "permanent"
    shutdown: ShutdownType | None = None
    type: ChildType = "worker"
    backoff: Backoff | None = None
    name: str | None = None
    start_timeout: float = 5.0

    def __post_init__(self) -> None:
        where = f"ChildSpec(id={self.id!r})"
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"{where}: id must be a non-empty string")
        if self.restart not in RESTART_TYPES:
            raise ValueError(
                f"{where}: restart must be one of {RESTART_TYPES}, got {self.restart!r}"
            )
        if self.type not in ("worker", "supervisor"):
            raise ValueError(f"{where}: type must be 'worker' or 'supervisor', got {self.type!r}")
        if self.shutdown is None:
            object.__setattr__(self, "shutdown", "infinity" if self.type == "supervisor" else 5.0)
        elif isinstance(self.shutdown, str):
            if self.shutdown not in ("brutal_kill", "infinity"):
                raise ValueError(
                    f"{where}: shutdown must be seconds, 'brutal_kill' or 'infinity', "
                    f"got {self.shutdown!r}"
                )
        elif isinstance(self.shutdown, bool) or not (
            isinstance(self.shutdown, int | float) and 0 < self.shutdown < math.inf
        ):
            raise ValueError(
                f"{where}: shutdown must be a positive number of seconds, 'brutal_kill' or "
                f"'infinity', got {self.shutdown!r}"
            )
        if isinstance(self.start, type):
            if not issubclass(self.start, pykka.Actor):
                raise TypeError(f"{where}: start class {self.start.__name__} is not a Pykka actor")
        elif not callable(self.start):
            raise TypeError(
                f"{where}: start must be an actor class or a factory, got {self.start!r}"
            )
        if not self.start_timeout > 0:
            raise ValueError(f"{where}: start_timeout must be positive, got {self.start_timeout!r}")

    def start_actor(self, extra_args: tuple[Any, ...] = ()) -> pykka.ActorRef[Any]:
        """Start one instance (in the calling thread; the supervisor's)."""
        args = (*extra_args, *self.args)
        if isinstance(self.start, type):
            actor_class: type[pykka.ThreadingActor] = supervised(self.start)
            return actor_class.start(*args, **self.kwargs)
        ref = self.start(*args, **self.kwargs)
        if not isinstance(ref, pykka.ActorRef):
            raise TypeError(f"factory of child {self.id!r} returned {ref!r}, not an ActorRef")
        return ref
