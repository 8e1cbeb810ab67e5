"""The one seam through which evaluation and optimization fan their work out.

Every parallel map over examples (``Evaluate``, an optimizer's bootstrapping and candidate
rollouts, which all go through :func:`~dspy_actors.evaluate._parallel.parallel_map`) asks
:func:`current_executor` first. With none set (the default), the work runs on local threads.
Inside ``with use_executor(executor):`` it is handed to that executor instead, which may run
it anywhere (``dspy_actors.distributed.RayExecutor``: Ray tasks on any node of a cluster).

An executor gets a function and the items; it returns one :class:`Outcome` per item, in
input order. The function and items must then be serializable (closures are fine for Ray,
which pickles them with cloudpickle) and side-effect free: whatever ``fn`` changes in the
caller's memory is lost when it runs in another process, so a result must carry everything.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Executor", "Outcome", "current_executor", "use_executor"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True)
class Outcome(Generic[R_co]):
    """What one item's call gave: its ``value``, or the ``error`` it raised."""

    value: R_co | None = None
    error: BaseException | None = None


OutcomeCallback = Callable[[int, "Outcome[Any]"], None]
"""``on_outcome(index, outcome)``: called in the caller's thread as each item finishes."""


class Executor(Protocol):
    """Runs ``fn`` on every item, anywhere; see the module docstring."""

    def map_outcomes(
        self,
        fn: Callable[[T], R],
        items: Sequence[T],
        *,
        cancel: threading.Event | None = None,
        on_outcome: OutcomeCallback | None = None,
    ) -> list[Outcome[R]]:
        """One outcome per item, in input order. ``cancel`` set stops the work and raises
        :class:`~dspy_actors.evaluate._parallel.Cancelled`; an exception raised by
        ``on_outcome`` stops the remaining work and propagates."""
        ...


_current: contextvars.ContextVar[Executor | None] = contextvars.ContextVar(
    "dspy_actors_executor", default=None
)


def current_executor() -> Executor | None:
    """The executor set by the innermost :func:`use_executor` here, or None (local)."""
    return _current.get()


@contextmanager
def use_executor(executor: Executor | None) -> Iterator[None]:
    """Send the parallel maps run inside this block (in this thread, and in the threads
    they start) to ``executor``; None runs them locally."""
    token = _current.set(executor)
    try:
        yield
    finally:
        _current.reset(token)
