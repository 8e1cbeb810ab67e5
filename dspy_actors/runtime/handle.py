"""ProgramHandle: how callers use a served program, from any thread or from asyncio.

A handle holds a program *name*, never an actor ref: every call resolves the program's
current entry actor, so handles keep working across restarts and upgrades.

The caller does the work of a call: it sends the ``Call`` to the module's entry actor and
waits for the reply; for a pipeline (``app.program``) it drives the call through the steps'
actors itself, one after the other (runtime/_pipeline.py), all on the version current when
the attempt started. No actor sits between the caller and the modules. That logic is one
plan (runtime/_plans.py) with two drivers: ``call`` blocks the calling thread; ``acall``
awaits the reply futures on the caller's event loop and holds no thread while in flight.

- ``call(**inputs)`` blocks for the Prediction; ``acall`` is awaitable (no thread per
  call); ``submit`` returns a future (run on the app's executor); ``batch`` runs many
  inputs at a bounded concurrency.
- A call never hangs: it ends by its deadline (``timeout``) at the latest.
- A call that could not reach the module (restarting) is retried until it can (a later
  step of a pipeline is resent by itself, so the steps before it do not run again). A call
  in flight on a *predictor* whose actor died is sent to it again (it is safe to repeat:
  ``ModuleCrashed.repeatable``, at most ``calls.REPEAT_LIMIT`` times). A call in flight in
  a user-written ``forward`` when its module crashed fails with ``ModuleCrashed``, or is
  retried (from the first step) if the call is idempotent: until its deadline, at most
  ``REPEAT_LIMIT`` times (or ``max_crash_retries``, if the program sets it). An input
  that itself crashes the module ``poison_threshold`` times is quarantined as a dead
  letter (``DeadLettered``).
- At most ``max_in_flight`` calls per program: past it, ``Overloaded`` at once. A call
  leaves its slot when it ends, also when an awaiting ``acall`` is cancelled.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from dspy_actors.lm._usage import Usage
from dspy_actors.runtime._calls import REPEAT_LIMIT, send_call
from dspy_actors.runtime._context import CallContext, capture
from dspy_actors.runtime._errors import DeadLettered, ModuleCrashed, ModuleUnavailable, Overloaded
from dspy_actors.runtime._input_check import check_encodable
from dspy_actors.runtime._pipeline import pipeline_plan
from dspy_actors.runtime._plans import AwaitReply, Pause, Plan, arun_plan, run_plan
from dspy_actors.runtime._poison import fingerprint
from dspy_actors.runtime._streaming import AsyncStreaming, Streaming
from dspy_actors.streaming._channel import DEFAULT_CAPACITY, StreamingChannel
from dspy_actors.streaming._listener import StreamListener
from dspy_actors.streaming._tap import StreamTap
from dspy_actors.streaming.messages import ModuleStatusMessages, StatusMessageProvider

if TYPE_CHECKING:
    import supervisors
    from dspy_actors.runtime._errors import ModuleCrashed as _Crash
    from dspy_actors.runtime._poison import PoisonTracker
    from dspy_actors.runtime._served import ServedProgram

# While a module restarts, calls that could not reach it are retried this often.
_UNAVAILABLE_RETRY_SECONDS = 0.002
_UNAVAILABLE_RETRY_LIMIT_SECONDS = 5.0


def _crash_retry_limit(program: ServedProgram) -> int:
    """How many crashes an idempotent call of ``program`` rides out. By default as many
    as its deadline allows, capped at ``REPEAT_LIMIT``: a count alone (it was 3) failed a
    third of the calls of a composite whose own actor was killed every 200 ms."""
    limit = program.max_crash_retries
    return REPEAT_LIMIT if limit is None else limit


def _positional_call_error(program: ServedProgram, args: tuple[Any, ...]) -> TypeError:
    """A served program takes its inputs by keyword: name the ones its entry takes."""
    from dspy_actors.primitives._positional_inputs import input_names, keyword_only_error

    return keyword_only_error(
        f"program {program.name!r}",
        input_names(program.entry_module()),
        args,
        call_as=f"{program.name}.call",
    )


# The options of call_with/acall_with: passed to call/acall, they are a mistake unless the
# program's entry names an input so (then they are that input).
_CALL_OPTIONS = frozenset({"timeout", "idempotent", "trace_id"})


def _option_as_input_error(program: ServedProgram, inputs: Mapping[str, Any]) -> TypeError | None:
    """The error for a call option passed to ``call``/``acall`` as if it were an input (None
    if every such name is an input of the program's entry module)."""
    from dspy_actors.primitives._positional_inputs import input_names

    names = set(input_names(program.entry_module()))
    mistaken = sorted(key for key in _CALL_OPTIONS.intersection(inputs) if key not in names)
    if not mistaken:
        return None
    options = ", ".join(f"{key}={inputs[key]!r}" for key in mistaken)
    return TypeError(
        f"{program.name}.call got {', '.join(mistaken)}, which program {program.name!r} "
        f"does not take as an input (its inputs are {sorted(names)}); to set the call's "
        f"option, use {program.name}.call_with({{...inputs...}}, {options})"
    )


def _reject_options_as_inputs(program: ServedProgram, inputs: Mapping[str, Any]) -> None:
    """Raise :func:`_option_as_input_error`'s error if ``inputs`` hold a call option."""
    if not _CALL_OPTIONS.isdisjoint(inputs):  # qa.call(question=..., timeout=1)?
        error = _option_as_input_error(program, inputs)
        if error is not None:
            raise error


class ProgramHost(Protocol):
    """What a handle needs of the app serving its program (``App`` is one)."""

    @property
    def registry(self) -> supervisors.Registry: ...
    @property
    def poison(self) -> PoisonTracker: ...
    @property
    def executor(self) -> Executor: ...
    def raise_if_stopped(self, program: str) -> None: ...
    def default_overrides(self) -> dict[str, Any]: ...
    def dead_letter(
        self, program: str, inputs: Mapping[str, Any], crash: _Crash, crashes: int
    ) -> str: ...
    def upgrade(
        self, program: ServedProgram, state_or_module: Any, *, drain_timeout: float = ...
    ) -> int: ...
    def stop_program(self, name: str) -> None: ...


class ProgramHandle:
    """A served program, by name. Created by ``app.program`` / ``app.serve``."""

    def __init__(self, app: ProgramHost, program: ServedProgram) -> None:
        self._app = app
        self._program = program
        self.name = program.name

    @property
    def version(self) -> int:
        """This app's version of the program: 1 when served, one more at each upgrade (its
        own or one followed from another replica). A count kept per app, not shared."""
        return self._program.version

    @property
    def state_version(self) -> int | None:
        """The parameter-store version of the state new calls reach (the same number on
        every replica sharing the store; it changes at an upgrade's switch, with
        ``version``), or None if it was never saved."""
        return self._program.served_state_version

    @property
    def usage(self) -> Usage:
        """Tokens (and cost, where known) of every LM call the program's calls made, over
        its whole service: across module restarts and upgrades. Cache hits add nothing."""
        return self._program.usage()

    def usage_by_module(self) -> dict[str, Usage]:
        """Usage by module path (``"rag"``, ``"rag.answer"``, ``"p.draft"``): a composite's
        includes that of its sub-modules, as in-process ``Module.usage`` does."""
        return self._program.usage_by_module()

    # Calls. ------------------------------------------------------------------------------

    def call(self, *args: Any, **inputs: Any) -> Any:
        """Run the program on ``inputs`` and return its Prediction (or raise its error).

        Options of the call (``timeout``, ``idempotent``, ``trace_id``) go to
        :meth:`call_with`; passed here they are a TypeError saying so, unless the program
        takes an input of that name."""
        if args:  # qa.call("...") for qa.call(question="...")
            raise _positional_call_error(self._program, args)
        _reject_options_as_inputs(self._program, inputs)
        return self.call_with(inputs)

    def call_with(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
        **overrides: Any,
    ) -> Any:
        """``call`` with options: ``timeout`` (seconds; the deadline for every hop beneath),
        ``idempotent`` (retry after a crash), ``trace_id``, and settings ``overrides``
        such as ``lm=`` or ``temperature=`` for this call only."""
        ctx = self._context(timeout, trace_id, overrides)
        return run_plan(self._call_plan(inputs, ctx, idempotent))

    async def acall(self, **inputs: Any) -> Any:
        """``await handle.acall(...)`` from asyncio code: the call holds no thread while
        in flight (the reply futures are awaited on the running loop). Cancelling the
        awaiting task frees the call's slots (the program's and the module's)."""
        _reject_options_as_inputs(self._program, inputs)
        return await self.acall_with(inputs)

    async def acall_with(
        self,
        inputs: Mapping[str, Any],
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
        **overrides: Any,
    ) -> Any:
        """``acall`` with the options of :meth:`call_with`."""
        ctx = self._context(timeout, trace_id, overrides)
        return await arun_plan(self._call_plan(inputs, ctx, idempotent))

    def stream(self, *args: Any, **inputs: Any) -> Streaming:
        """Run the program on ``inputs``, yielding its answer as it is made: a
        ``StatusMessage`` when a module starts or ends, a ``StreamResponse`` for each
        piece of each output field's text, and last the Prediction. See
        docs/streaming.md; :meth:`stream_with` takes options."""
        if args:
            raise _positional_call_error(self._program, args)
        _reject_options_as_inputs(self._program, inputs)
        return self.stream_with(inputs)

    def stream_with(
        self,
        inputs: Mapping[str, Any],
        *,
        stream_listeners: Sequence[StreamListener] = (),
        status_message_provider: StatusMessageProvider | None = None,
        buffer: int = DEFAULT_CAPACITY,
        timeout: float | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
        **overrides: Any,
    ) -> Streaming:
        """``stream`` with options: ``stream_listeners`` (only these fields stream; each
        listener's ``predict_name`` is matched against module paths), the
        ``status_message_provider``, ``buffer`` (pieces held for a slow reader before the
        LM's HTTP read pauses), and the options of :meth:`call_with`."""
        channel, ctx = self._streamed_context(
            stream_listeners, status_message_provider, buffer, timeout, trace_id, overrides
        )
        return Streaming(self._call_plan(inputs, ctx, idempotent), channel)

    def astream(self, **inputs: Any) -> AsyncStreaming:
        """``async for piece in handle.astream(...)``: :meth:`stream` on the running event
        loop, holding no thread while in flight."""
        _reject_options_as_inputs(self._program, inputs)
        return self.astream_with(inputs)

    def astream_with(
        self,
        inputs: Mapping[str, Any],
        *,
        stream_listeners: Sequence[StreamListener] = (),
        status_message_provider: StatusMessageProvider | None = None,
        buffer: int = DEFAULT_CAPACITY,
        timeout: float | None = None,
        idempotent: bool | None = None,
        trace_id: str | None = None,
        **overrides: Any,
    ) -> AsyncStreaming:
        """``astream`` with the options of :meth:`stream_with`."""
        channel, ctx = self._streamed_context(
            stream_listeners, status_message_provider, buffer, timeout, trace_id, overrides
        )
        return AsyncStreaming(self._call_plan(inputs, ctx, idempotent), channel)

    def _streamed_context(
        self,
        listeners: Sequence[StreamListener],
        status: StatusMessageProvider | None,
        buffer: int,
        timeout: float | None,
        trace_id: str | None,
        overrides: Mapping[str, Any],
    ) -> tuple[StreamingChannel, CallContext]:
        channel = StreamingChannel(buffer)
        tap = StreamTap(channel, status or ModuleStatusMessages(), listeners)
        return channel, self._context(timeout, trace_id, overrides).streamed_by(tap)

    def submit(self, **inputs: Any) -> Future[Any]:
        """Start a call; the future gets its Prediction or error.

        The call runs as if made here, like :meth:`call`: with this thread's (or task's)
        ``dsa.context(...)`` overrides, the trace and deadline of the call being handled,
        and the usage meters in force (the executor's thread runs it in a copy of this
        context)."""
        _reject_options_as_inputs(self._program, inputs)
        caller = contextvars.copy_context()
        return self._app.executor.submit(caller.run, self.call_with, inputs)

    def _context(
        self, timeout: float | None, trace_id: str | None, overrides: Mapping[str, Any]
    ) -> CallContext:
        return capture(
            timeout=self._program.call_timeout if timeout is None else timeout,
            trace_id=trace_id,
            **{**self._app.default_overrides(), **overrides},
        )

    def _call_plan(
        self,
        inputs: Mapping[str, Any],
        ctx: CallContext,
        idempotent: bool | None,
    ) -> Plan[Any]:
        """One call, with its retries, as a plan (runtime/_plans.py) for either driver."""
        program = self._program
        app = self._app
        retry_crashes = program.idempotent if idempotent is None else idempotent
        check_encodable(program.name, inputs)
        key: str | None = None  # the input's fingerprint: computed only when it matters
        if app.poison.any_quarantined():
            key = fingerprint(program.name, inputs)
            dead = app.poison.quarantined(key)
            if dead is not None:
                raise DeadLettered(program.name, dead, app.poison.threshold)
        crashes_seen = 0
        repeats = 0  # lost in flight on a predictor (the entry, or a pipeline's first step)
        unavailable_since: float | None = None
        while True:
            app.raise_if_stopped(program.name)  # a tree that is gone: fail now, say why
            # (Upgrades switch entry_name before version: never an old entry with a new
            # version, so the version's drain counts this call.)
            version, entry = program.version, program.entry_name
            if not program.gate.enter(version):
                raise Overloaded(f"program {program.name!r}", program.gate.limit)
            try:
                if program.steps:
                    return (
                        yield from pipeline_plan(
                            app.registry,
                            program.name,
                            entry,
                            program.steps,
                            inputs,
                            ctx,
                            partial(program.gone, version),
                        )
                    )
                reply = send_call(app.registry, entry, inputs, ctx)
                return (yield AwaitReply(reply, ctx, program.name, kind="program"))
            except ModuleUnavailable:
                # Never reached a module (a pipeline: its first step): safe to retry, until
                # it is back or time runs out.
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                remaining = ctx.remaining()
                if program.stopped or now - unavailable_since > _UNAVAILABLE_RETRY_LIMIT_SECONDS:
                    raise
                if remaining is not None and remaining <= _UNAVAILABLE_RETRY_SECONDS:
                    raise
            except ModuleCrashed as crash:
                unavailable_since = None  # it reached a module: a fresh wait if it retries
                if crash.caused_by_call:
                    key = key or fingerprint(program.name, inputs)
                    count = app.poison.crashed(key)
                    if count >= app.poison.threshold:
                        letter = app.dead_letter(program.name, inputs, crash, count)
                        raise DeadLettered(program.name, letter, count) from crash
                if crash.repeatable and repeats < REPEAT_LIMIT:
                    repeats += 1
                    continue
                crashes_seen += 1
                if not retry_crashes or crashes_seen > _crash_retry_limit(program):
                    raise
                remaining = ctx.remaining()
                if remaining is not None and remaining <= 0:
                    raise  # its deadline bounds its retries: the crash says what happened
                continue
            finally:
                program.gate.leave(version)
            yield Pause(_UNAVAILABLE_RETRY_SECONDS)  # (outside the gate: not in flight)

    def batch(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 16,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run every input, at most ``concurrency`` at once; results in input order.

        With ``return_exceptions=True`` a failed input's slot holds its exception;
        otherwise the first failure (in input order) is raised after all have finished.
        """
        from dspy_actors.runtime._stream import Stream

        results = (
            Stream.from_iterable(list(inputs))
            .through(self, concurrency=concurrency, return_exceptions=True)
            .to_list()
        )
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    # Changes. ----------------------------------------------------------------------------

    def upgrade(self, state_or_module: Any, *, drain_timeout: float = 60.0) -> int:
        """Hot-swap the program: new learned state (a dict from ``dump_state``) or a new
        module. Calls in flight finish on the old version; later calls run the new one.
        Returns the new version number."""
        return self._app.upgrade(self._program, state_or_module, drain_timeout=drain_timeout)

    def stop(self) -> None:
        """Stop serving this program (its calls in flight are answered first)."""
        self._app.stop_program(self.name)

    def __repr__(self) -> str:
        return f"ProgramHandle({self.name!r}, version={self.version})"
