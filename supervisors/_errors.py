"""The exceptions of the supervisors package: one per distinct OTP error case."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisors._exit import ExitReason


class SupervisorError(Exception):
    """Base class of every error raised by this package."""


class StartError(SupervisorError):
    """A child (or a whole supervisor) failed to start. ``child_id`` names it."""

    def __init__(self, child_id: str, cause: BaseException | str) -> None:
        self.child_id = child_id
        self.cause = cause
        super().__init__(f"child {child_id!r} failed to start: {cause!r}")


class AlreadyPresent(SupervisorError):
    """``start_child`` with an id whose spec exists but is not running (OTP ``already_present``)."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(
            f"a child spec with id {child_id!r} is already present (not running); "
            "use restart_child or delete_child first"
        )


class AlreadyStarted(SupervisorError):
    """``start_child`` with the id of a running child (OTP ``already_started``)."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"a child with id {child_id!r} is already running")


class ChildNotFound(SupervisorError):
    """No child with that id (OTP ``not_found``)."""

    def __init__(self, child_id: object, supervisor: str) -> None:
        self.child_id = child_id
        super().__init__(f"supervisor {supervisor!r} has no child {child_id!r}")


class ChildRunning(SupervisorError):
    """``restart_child``/``delete_child`` on a running child (OTP ``running``)."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is running; terminate_child it first")


class ChildRestarting(SupervisorError):
    """``restart_child``/``delete_child`` on a child awaiting restart (OTP ``restarting``)."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"child {child_id!r} is waiting to be restarted")


class MaxChildrenReached(SupervisorError):
    """A DynamicSupervisor already runs ``max_children`` children (Elixir ``:max_children``)."""

    def __init__(self, supervisor: str, max_children: int) -> None:
        super().__init__(f"supervisor {supervisor!r} already has max_children={max_children}")


class TaskQueueFull(SupervisorError):
    """A TaskSupervisor's queue of waiting tasks is full: overload answered fast."""


class RestartIntensityExceeded(SupervisorError):
    """A supervisor saw more than ``intensity`` restarts within ``period`` seconds and gave up.

    This is the crash reason a supervisor exits with, so that its parent's strategy applies.
    """

    def __init__(self, supervisor: str, intensity: int, period: float, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {intensity} restart(s) in "
            f"{period:g} s (last failing child {child_id!r})"
        )


class SupervisorExited(SupervisorError):
    """The supervisor a handle points to is no longer running; ``reason`` says why."""

    def __init__(self, supervisor: str, reason: ExitReason | None) -> None:
        self.supervisor = supervisor
        self.reason = reason
        super().__init__(
            f"supervisor {supervisor!r} is not running"
            + (f" (it exited: {reason})" if reason is not None else "")
        )


class ActorCrashed(SupervisorError):
    """Raised to an ``ask`` caller whose message made the actor die with a BaseException."""


class NotRegistered(SupervisorError):
    """No live actor is registered under a name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no live actor is registered as {name!r}")


class AlreadyRegistered(SupervisorError):
    """A unique-key registry already maps this name to a live actor."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"the name {name!r} is already registered to a live actor")
