"""Quarantine: inputs that crashed their program too often, kept as dead letters.

Handles report an input that reached the poison threshold (``dead_letter``); the app lists
and releases letters (``app.dead_letters``/``app.replay_dead_letter``). A served agent's
quarantined tool call is a letter too (program ``tool:<name>``), released to the tool runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.modules.tool_runner import ToolRunner
from dspy_actors.runtime import _events as ev
from dspy_actors.runtime._dead_letters import DeadLetter
from dspy_actors.runtime._errors import ModuleCrashed
from dspy_actors.runtime._poison import PoisonTracker, fingerprint
from dspy_actors.runtime._stores import Stores
from dspy_actors.runtime._tools import TOOL_LETTER_PREFIX


class Quarantine:
    """Dead letters of one app: its poison counts, its store, its events."""

    def __init__(
        self, stores: Stores, poison: PoisonTracker, events: ev.EventBus, tools: ToolRunner
    ) -> None:
        self.stores = stores
        self.poison = poison
        self.events = events
        self.tools = tools

    def dead_letter(
        self, program: str, inputs: Mapping[str, Any], crash: ModuleCrashed, crashes: int
    ) -> str:
        """Quarantine ``inputs`` of ``program``; returns the letter's id."""
        store = self.stores.dead_letters
        cause = crash.__cause__ or crash
        if store is None:
            raise crash
        letter = store.add(
            program=program,
            module_path=crash.module_path,
            inputs=inputs,
            exception=cause,
            attempts=crashes,
        )
        self.poison.quarantine(fingerprint(program, inputs), letter.id)
        self.events.publish(
            ev.DeadLetterEvent(
                dead_letter_id=letter.id,
                program=program,
                module_path=crash.module_path,
                exception_type=letter.exception_type,
                attempts=crashes,
            )
        )
        return letter.id

    def letters(self, program: str | None = None) -> list[DeadLetter]:
        """Quarantined inputs not yet replayed (of one program, if given)."""
        store = self.stores.dead_letters
        return [] if store is None else store.list(program)

    def release(self, letter_id: str) -> DeadLetter | None:
        """Release a letter (KeyError if there is none): a program's input is returned, for
        the caller to call its program with again; a tool call is released to the agents'
        tool runner (None)."""
        store = self.stores.dead_letters
        letter = None if store is None else store.get(letter_id)
        if letter is None or store is None:
            raise KeyError(f"no dead letter {letter_id!r}")
        if letter.program.startswith(TOOL_LETTER_PREFIX):
            # A quarantined tool call: release it so agents may call it again.
            self.tools.release(letter.program.removeprefix(TOOL_LETTER_PREFIX), letter.inputs)
            store.mark_replayed(letter_id)
            return None
        self.poison.release(fingerprint(letter.program, letter.inputs))
        store.mark_replayed(letter_id)
        return letter
