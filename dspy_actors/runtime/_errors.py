"""Errors the runtime answers calls with. Each says what happened and where."""

from __future__ import annotations

from dspy_actors.redaction import redact


class RuntimeCallError(Exception):
    """Base class of the errors a served call can end with (besides the module's own)."""


class Overloaded(RuntimeCallError):
    """Too much work in flight: the call was refused at once instead of queued."""

    def __init__(self, where: str, limit: int) -> None:
        self.where = where
        self.limit = limit
        super().__init__(f"{where} is overloaded: {limit} calls already in flight; retry later")


class DeadlineExceeded(RuntimeCallError):
    """The call's deadline passed before it finished."""

    def __init__(self, trace_id: str, where: str) -> None:
        self.trace_id = trace_id
        self.where = where
        super().__init__(f"deadline exceeded at {where} (trace {trace_id})")


class ModuleCrashed(RuntimeCallError):
    """The module actor handling the call crashed (or was stopped) before answering.

    ``caused_by_call`` is True when this call's own handling raised the crash (a candidate
    poison input), False when the call was only in flight while the actor died.
    ``repeatable`` is True when the call is safe to send again as it is: it was only in
    flight on a *predictor* (its LM calls have no side effects) when the actor died; the
    runtime then resends it by itself (runtime/_calls.py).
    """

    def __init__(
        self,
        module_path: str,
        reason: str,
        *,
        caused_by_call: bool = False,
        repeatable: bool = False,
    ) -> None:
        self.module_path = module_path
        self.reason = reason = redact(reason)  # it quotes the crash, which may quote a key
        self.caused_by_call = caused_by_call
        self.repeatable = repeatable and not caused_by_call
        super().__init__(f"module {module_path!r} crashed while handling the call: {reason}")


class ModuleUnavailable(RuntimeCallError):
    """No live actor serves the module now (restarting, or the program was stopped)."""

    def __init__(self, module_path: str) -> None:
        self.module_path = module_path
        super().__init__(f"module {module_path!r} is not available (restarting or stopped)")


class DeadLettered(RuntimeCallError):
    """The input crashed the module too many times and was quarantined as a dead letter."""

    def __init__(self, module_path: str, dead_letter_id: str, crashes: int) -> None:
        self.module_path = module_path
        self.dead_letter_id = dead_letter_id
        super().__init__(
            f"input crashed module {module_path!r} {crashes} times; quarantined as dead "
            f"letter {dead_letter_id} (list with app.dead_letters(), replay with "
            "app.replay_dead_letter(id))"
        )


class AppStopped(RuntimeCallError):
    """The app no longer serves calls: it was stopped, or its supervision tree exited."""

    def __init__(self, app: str, program: str, why: str) -> None:
        self.app = app
        self.program = program
        self.why = why
        super().__init__(f"app {app!r} has stopped, so {program!r} cannot be called: {why}")


class UnencodableInput(RuntimeCallError, ValueError):
    """An input holds text that no request can carry (a lone surrogate, which UTF-8 cannot
    encode): the call is refused before it reaches a module, naming where the text is."""

    def __init__(self, program: str, where: str, detail: str) -> None:
        self.program = program
        self.where = where
        super().__init__(f"input {where} of {program!r} cannot be sent: {detail}")
