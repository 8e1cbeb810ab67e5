"""The one shape of an LM slot host's actor: what an event loop (``_lm_loop.LMLoop``) and a
worker process (``_lm_process.LMProcess``) share.

A host is what runs the requests of its :class:`~dspy_actors.runtime._lm_pool.Slot`\\ s (an
asyncio loop in a thread, a worker process). Its actor, under the LM pool's supervisor,
owns it as an Erlang port is owned by the process that opened it: the actor opens the host
and offers its slots to the dispatcher; on any exit (a stop, or a crash its supervisor
restarts it after) it closes the host and withdraws the slots, so the requests they held,
unanswered, are retried once on another slot (then failed with ``LMWorkerCrashed``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, TypeVar

import supervisors
from dspy_actors.runtime._lm_pool import Dispatcher, LMPublisher, Slot

__all__ = ["Publisher", "SlotHost", "SlotHostActor"]

# Where a host reports its requests (counts; lm.* events while someone listens): this
# actor only hands it over.
Publisher = LMPublisher


class SlotHost(Protocol):
    """What a host actor owns (``EventLoopThread``, ``WorkerProcess``)."""

    @property
    def slots(self) -> list[Slot]: ...

    def stop(self) -> None:
        """End the host: whatever it still runs is left unanswered."""

    def abandon_requests(self, reason: str) -> None:
        """Withdraw the host's slots from the dispatcher (their requests are retried)."""


HostT = TypeVar("HostT", bound=SlotHost)


class SlotHostActor(supervisors.SupervisedActor, Generic[HostT]):
    """Owns one host of ``slots`` slots: opens it on start, offers its slots to the pool,
    and on any exit ends it and withdraws its slots. Subclasses say how to open one
    (``_open``), what else ``describe`` tells of it (``_details``) and what it is called
    in the reasons its requests are retried with (``what``)."""

    what: ClassVar[str] = "the LM slot host"
    ended_by_crash: ClassVar[str] = "crashed"

    def __init__(
        self, name: str, dispatcher: Dispatcher, slots: int, publisher: Publisher | None = None
    ) -> None:
        super().__init__()
        self._name = name
        self._dispatcher = dispatcher
        self._slots = slots
        self._publisher = publisher
        self.host: HostT | None = None

    def _open(self) -> HostT:
        """A started host (raise to fail the actor's start)."""
        raise NotImplementedError

    def _details(self, host: HostT) -> dict[str, Any]:
        """What ``describe`` adds about a running host."""
        return {}

    def on_start(self) -> None:
        host = self._open()
        self.host = host
        for slot in host.slots:
            self._dispatcher.add_worker(slot)

    def describe(self) -> dict[str, Any]:
        """The host's slot count and whatever its kind adds (a loop's in-flight count, a
        process's pid: chaos tests kill by it)."""
        host = self.host
        return {"slots": self._slots, **({} if host is None else self._details(host))}

    def _end(self, reason: str) -> None:
        host, self.host = self.host, None
        if host is not None:
            host.stop()
            host.abandon_requests(reason)

    def on_stop(self) -> None:
        self._end(f"{self.what} was stopped")

    def on_failure(self, _type: Any, value: Any, _tb: Any) -> None:
        self._end(f"{self.what} {self.ended_by_crash}: {value}")
