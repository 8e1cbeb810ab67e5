"""Why an actor stopped, and the notification monitors receive when it does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pykka

ExitKind = Literal["normal", "shutdown", "crash", "killed"]


@dataclass(frozen=True, slots=True)
class ExitReason:
    """The reason an actor exited, as OTP names them.

    - ``normal``: the actor stopped itself (or was stopped by someone other than its
      supervisor) without error.
    - ``shutdown``: its supervisor (or ``terminate_child``) asked it to stop.
    - ``crash``: an exception escaped a hook or handler; ``exception`` holds it.
    - ``killed``: it was abandoned: ``brutal_kill``, or it did not stop within its
      ``shutdown`` time (Python cannot kill a thread, so it may still be running).

    ``crash`` and ``killed`` are *abnormal*: transient children restart only on those.
    """

    kind: ExitKind
    exception: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.kind in ("crash", "killed")

    @classmethod
    def crash(cls, exception: BaseException) -> ExitReason:
        return cls("crash", exception)

    def __str__(self) -> str:
        if self.exception is None:
            return self.kind
        return f"{self.kind}: {self.exception!r}"


NORMAL = ExitReason("normal")
SHUTDOWN = ExitReason("shutdown")
KILLED = ExitReason("killed")


@dataclass(frozen=True, slots=True)
class Down:
    """Delivered to a monitor when the monitored actor has exited (OTP's ``'DOWN'``)."""

    monitor: MonitorRef
    actor: pykka.ActorRef[Any]
    reason: ExitReason


@dataclass(frozen=True, slots=True, eq=False)
class MonitorRef:
    """Identifies one monitor, to remove it with :func:`supervisors.demonitor`."""

    actor_urn: str
