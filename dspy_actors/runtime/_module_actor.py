"""ModuleActor: hosts one module instance and serves many calls in flight.

Two ways a call runs, chosen by what the module is:

- A *predictor* (it has ``steps``, as Predict and ChainOfThought do): the actor runs the
  steps up to the first LM call (in its own thread, or in the caller's when the caller
  took an idle actor's turn: ``supervisors.tell_inline``); answers it from the cache at once, or
  sends it to the LM pool and goes on serving other calls. When the LM reply arrives (as a
  later message), the steps resume. No thread waits on the LM on the actor's behalf.
- Any other module (a composite with a user-written ``forward``): its ``forward`` runs on
  a *forward greenlet* in the actor's thread, with the call's context restored; its
  sub-modules are proxies that send calls to their own actors. When ``forward`` waits (a
  sub-module's reply, or any future through ``dspy_actors.waiting.wait_future``), the greenlet
  is parked and the actor goes on serving other calls; the future's completion (or the
  wait's timeout) arrives as a message that switches the greenlet back in. So a call in
  flight costs a greenlet, not a thread. Such an actor never takes a caller's thread
  (``handles_in_caller`` is off): a greenlet lives on the thread that made it.
- A module whose ``forward`` blocks on I/O of its own (a retriever's HTTP call, say) sets
  ``blocking_forward = True`` (a class attribute): its ``forward`` then runs in a
  short-lived call thread per call, as it would in a thread pool, and the actor never
  blocks either way.

Cancellation: a caller that gives up cancels the call's reply future (an ``acall`` whose
task is cancelled); the actor then drops the call at once (closing its steps, or ending
its forward greenlet), which frees its in-flight slot.

Errors: an LM error, a parse error, a deadline or an overload is the call's answer. Any
other exception is a bug: the caller gets :class:`ModuleCrashed` (with the exception as
its cause), then the actor crashes and its supervisor restarts it, fresh, with its learned
parameters reloaded. Calls still in flight on a crashed actor get ``ModuleCrashed`` too;
a predictor's are marked ``repeatable`` (safe to send again: its callers do, by themselves).

Over 400 lines: the actor's messages and the states of a call in flight (LM done, forward
parked and woken, cancelled) are one state machine; split, its transitions would scatter.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import greenlet
import pykka

import supervisors
from dspy_actors.lm._lm import LM, CacheMiss
from dspy_actors.lm._steps import LMCall
from dspy_actors.lm._usage import UsageMeter
from dspy_actors.lm.errors import LMError
from dspy_actors.primitives.module import Module
from dspy_actors.redaction import scrub_exception
from dspy_actors.runtime._call_stats import CallCell, CallStats
from dspy_actors.runtime._context import restored
from dspy_actors.runtime._errors import (
    ModuleCrashed,
    ModuleUnavailable,
    Overloaded,
    RuntimeCallError,
)
from dspy_actors.runtime._events import Event, ModuleEnd, ModuleError, ModuleStart
from dspy_actors.runtime._futures import reject, resolve
from dspy_actors.runtime._lm_pool import Dispatcher, _plain_lm, submit_lm_request
from dspy_actors.runtime._messages import Call
from dspy_actors.runtime._streaming_hooks import predictor_tap
from dspy_actors.waiting import ForwardGreenlet, Park, timers

# Exceptions that answer a call without crashing the module: the caller's input or the
# LM's output was bad, not the module's state. Everything else lets the actor crash.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    LMError,
    RuntimeCallError,
    ValueError,
    TypeError,
)

# Joining call threads at stop: they end once their sub-calls fail, which is quick.
_CALL_THREAD_JOIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ModuleServices:
    """What a module actor reaches besides its module: the LM pool and the hooks."""

    registry: supervisors.Registry
    dispatcher: Dispatcher
    load_state: Callable[[str], dict[str, Any] | None] = lambda _path: None
    # How to publish the typed events of a call (by its trace id), or None while nobody
    # needs this call's events (then none is even built): module.start, .end, .error.
    publisher: Callable[[str | None], Callable[[Event], None] | None] = lambda _trace: None
    # Where each actor counts the calls it ends (metrics and the console read it).
    call_stats: CallStats = field(default_factory=CallStats)
    # The usage meter of the module at a path: the same one across the actor's restarts
    # and the program's upgrades, so a module's usage adds up over its whole service.
    meter_for: Callable[[str], UsageMeter] = lambda _path: UsageMeter()
    # Why the program's actors will not come back (the app or program stopped, its version
    # retired), or None while they may: a composite's sub-module call then stops resending
    # to a restarting sub-module at once, so no thread waits out the resend limit after stop.
    gone: Callable[[], str | None] = lambda: None


@dataclass(frozen=True, slots=True, eq=False)
class _LMDone:
    call_id: int
    reply: Future[Any]


@dataclass(frozen=True, slots=True, eq=False)
class _ForwardDone:
    call_id: int
    result: Any
    error: BaseException | None


@dataclass(frozen=True, slots=True, eq=False)
class _ForwardWake:
    """Switch the call's parked forward greenlet back in (its wait ``park`` is over)."""

    call_id: int
    park: int


@dataclass(frozen=True, slots=True, eq=False)
class _Cancelled:
    """The caller cancelled the call's reply: drop the call."""

    call_id: int


@dataclass(slots=True, eq=False)
class _InFlight:
    call: Call
    steps: Generator[LMCall, Any, Any] | None = None
    thread: threading.Thread | None = None
    forward: ForwardGreenlet | None = None
    # The current park of the forward greenlet (0: running) and its timer, if any.
    park: int = 0
    timer: int | None = None
    lm_reply: Future[Any] | None = None
    # A streamed call's LM call in flight: its answer's last pieces go out on arrival.
    stream_tap: Any = None
    # Whether a cancel of the call's reply is watched for (see ModuleActor._watch_cancel).
    watched: bool = False
    # When the actor accepted the call (time.monotonic()): its latency in the call counts.
    started: float = 0.0
    # How to publish this call's module events, decided once when it is accepted (None:
    # nobody needs them), so its end is published if and only if its start was.
    publish: Callable[[Event], None] | None = None


@dataclass(slots=True)
class _Counters:
    calls: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def is_predictor(module: Any) -> bool:
    """Modules the actor can run step by step (their LM calls become messages)."""
    return callable(getattr(module, "steps", None))


class ModuleActor(supervisors.SupervisedActor):
    """Serves calls of one module; see the module docstring."""

    # Its handlers never block (LM calls are messages, forward parks its greenlet or runs
    # in a call thread), so a caller may take the actor's turn while it is idle
    # (supervisors.tell_inline); not a ForwardActor, whose greenlets need its own thread.
    handles_in_caller = True

    def __init__(
        self,
        path: str,
        make_module: Callable[[], Any],
        services: ModuleServices,
        max_in_flight: int = 256,
        state_path: str | None = "",
    ) -> None:
        """``path`` names the module in errors and events (``program.attr``); ``state_path``
        is where its learned state sits in the program's state (``""`` for the root; None for
        a composite's own actor, whose parameters live in its sub-modules' actors)."""
        super().__init__()
        self.path = path
        self._where = f"module {path!r}"  # where a call's deadline passed, in its error
        self.state_path = state_path
        self._make_module = make_module
        self.services = services
        self.max_in_flight = max_in_flight
        self.module: Any = None
        self.meter = UsageMeter()  # replaced by the path's own at start
        self._predictor = False
        self._inflight: dict[int, _InFlight] = {}
        self._ids = itertools.count(1)
        self.counters = _Counters()
        self._cell = CallCell()  # replaced by one of the app's call stats at start

    def on_start(self) -> None:
        self.meter = self.services.meter_for(self.path)
        module = self._make_module()
        state = None if self.state_path is None else self.services.load_state(self.state_path)
        if state is not None:
            # The base method: a predictor's own load_state takes its bare state, while
            # program states are keyed by parameter path ("self" for the module itself).
            Module.load_state(module, state)
        if isinstance(module, Module):
            module.usage_meter = self.meter  # a composite's forward meters with it
        self.module = module
        self._predictor = is_predictor(module)
        self._blocking_forward = bool(getattr(module, "blocking_forward", False))
        if not self._predictor and not self._blocking_forward and self.handles_in_caller:
            raise TypeError(
                f"module {self.path!r} runs its forward on greenlets: serve it with a "
                "ForwardActor (a greenlet cannot move between threads)"
            )
        self._cell = self.services.call_stats.cell(self.path)

    # Messages. ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            self._accept(message)
        elif isinstance(message, _LMDone):
            self._lm_done(message)
        elif isinstance(message, _ForwardWake):
            self._forward_wake(message)
        elif isinstance(message, _Cancelled):
            self._cancelled(message.call_id)
        elif isinstance(message, _ForwardDone):
            self._forward_done(message)
        else:
            return super().on_receive(message)
        return None

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "in_flight": len(self._inflight), "usage": self.meter.total}

    def _accept(self, call: Call) -> None:
        if len(self._inflight) >= self.max_in_flight:
            reject(call.reply, Overloaded(f"module {self.path!r}", self.max_in_flight))
            return
        try:
            call.ctx.check(self._where)
        except RuntimeCallError as error:
            reject(call.reply, error)
            return
        call_id = next(self._ids)
        self.counters.calls += 1
        publish = self.services.publisher(call.ctx.trace_id)
        record = _InFlight(call, started=time.monotonic(), publish=publish)
        self._inflight[call_id] = record
        if publish is not None:
            publish(ModuleStart(trace_id=call.ctx.trace_id, module_path=self.path))
        if call.ctx.streaming is not None:
            call.ctx.streaming.say("module_start_status_message", self.path, dict(call.inputs))
        if self._predictor:
            # Making the generator runs none of the steps' code: the call's context is
            # restored where they run (_resume).
            try:
                record.steps = self.module.steps(**call.inputs)
            except BaseException as error:
                self._fail(call_id, error)
                return
            self._resume(call_id, None, None, first=True)
        elif not self._blocking_forward:
            record.forward = ForwardGreenlet(partial(self._forward_body, record))
            self._switch_in(call_id, record)
        else:
            thread = threading.Thread(
                target=self._run_forward,
                args=(call_id, record),
                name=f"call-{self.path}-{call_id}",
                daemon=True,
            )
            record.thread = thread
            thread.start()
            self._watch_cancel(call_id, record)

    def _watch_cancel(self, call_id: int, record: _InFlight) -> None:
        """From the first time the call waits (on the LM, a sub-call, its call thread): a
        caller that gives up cancels the reply, and the call is dropped then (its slot
        freed). A call answered without waiting (a cache hit) never pays for the watch."""
        if not record.watched:
            record.watched = True
            reply = record.call.reply
            reply.add_done_callback(partial(_tell_if_cancelled, self.actor_ref, call_id))

    # Predictors: steps driven by messages. -------------------------------------------

    def _resume(
        self, call_id: int, response: Any, error: BaseException | None, first: bool = False
    ) -> None:
        record = self._inflight.get(call_id)
        if record is None or record.steps is None:
            return
        steps = record.steps
        if record.stream_tap is not None:  # the streamed LM call's answer (or error)
            tap, record.stream_tap = record.stream_tap, None
            if error is None:
                tap.finish(response)
        with restored(record.call.ctx):
            while True:
                try:
                    if first:
                        lm_call = next(steps)
                    elif error is not None:
                        lm_call = steps.throw(error)
                    else:
                        lm_call = steps.send(response)
                except StopIteration as done:
                    self._finish(call_id, done.value)
                    return
                except BaseException as step_error:
                    self._fail(call_id, step_error)
                    return
                first, error = False, None
                found = _probe(lm_call)
                tap = predictor_tap(record.call.ctx, self.path)
                if found is not None and not isinstance(found, CacheMiss):
                    if tap is not None:
                        tap.finish(found)  # a cache hit streams as one piece per field
                    response = found
                    continue
                # The module's meter counts the call too, as Module.__call__'s does.
                ctx = record.call.ctx.metered_by(self.meter)
                if tap is not None:
                    ctx = ctx.streamed_by(tap)
                reply = submit_lm_request(
                    self.services.dispatcher,
                    lm_call.lm,
                    lm_call.messages,
                    lm_call.kwargs,
                    ctx,
                    found,
                )
                record.lm_reply = reply
                record.stream_tap = tap
                reply.add_done_callback(partial(_tell_lm_done, self.actor_ref, call_id))
                self._watch_cancel(call_id, record)
                return

    def _lm_done(self, message: _LMDone) -> None:
        reply = message.reply
        if reply.cancelled():
            return  # we cancelled it: its call was dropped (_cancelled)
        error = reply.exception()
        self._resume(message.call_id, None if error is not None else reply.result(), error)

    # Composites: forward on a greenlet, parked while it waits. ------------------------

    def _forward_body(self, record: _InFlight) -> Any:
        with restored(record.call.ctx):
            return self.module(**record.call.inputs)

    def _switch_in(self, call_id: int, record: _InFlight) -> None:
        """Run the call's forward greenlet until it ends or parks on a future."""
        forward = record.forward
        assert forward is not None
        record.park = 0
        try:
            outcome = forward.switch()
        except BaseException as error:
            self._fail(call_id, error)
            return
        if forward.dead:
            self._finish(call_id, outcome)
            return
        if not isinstance(outcome, Park):  # a switch we did not make: a bug in forward
            forward.throw(greenlet.GreenletExit)
            self._fail(call_id, RuntimeError(f"forward switched out with {outcome!r}"))
            return
        self._watch_cancel(call_id, record)
        park = next(self._ids)
        record.park = park
        wake = partial(_tell_forward_wake, self.actor_ref, call_id, park)
        if outcome.deadline is not None:
            record.timer = timers.schedule(outcome.deadline, wake)
        outcome.future.add_done_callback(lambda _future: wake())

    def _forward_wake(self, message: _ForwardWake) -> None:
        record = self._inflight.get(message.call_id)
        if record is None or record.forward is None or record.park != message.park:
            return  # the call ended, or this wait was already woken (future vs timer)
        if record.timer is not None:
            timers.cancel(record.timer)
            record.timer = None
        self._switch_in(message.call_id, record)

    # Modules with blocking_forward: forward in a call thread. -------------------------

    def _run_forward(self, call_id: int, record: _InFlight) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            with restored(record.call.ctx):
                result = self.module(**record.call.inputs)
        except BaseException as exc:
            error = exc
        try:
            self.actor_ref.tell(_ForwardDone(call_id, result, error))
        except pykka.ActorDeadError:
            # The actor died meanwhile; its on_failure/on_stop already answered the call.
            reject(record.call.reply, ModuleCrashed(self.path, "the module actor stopped"))

    def _forward_done(self, message: _ForwardDone) -> None:
        if message.error is not None:
            self._fail(message.call_id, message.error)
        else:
            self._finish(message.call_id, message.result)

    def _cancelled(self, call_id: int) -> None:
        record = self._inflight.pop(call_id, None)
        if record is None:
            return
        # Every module.start has its end: a cancelled call ends as an error, "CancelledError".
        self._cell.ended(time.monotonic() - record.started, "CancelledError")
        publish = record.publish
        if publish is not None:
            publish(
                ModuleError(
                    trace_id=record.call.ctx.trace_id,
                    module_path=self.path,
                    error_type="CancelledError",
                )
            )
        self._end_quietly(record)
        if record.lm_reply is not None:
            record.lm_reply.cancel()  # the LM pool may skip or drop it

    def _end_quietly(self, record: _InFlight) -> None:
        """End a dropped call's steps or forward greenlet (their ``finally`` blocks run)."""
        if record.timer is not None:
            timers.cancel(record.timer)
            record.timer = None
        if record.steps is not None:
            record.steps.close()
        forward = record.forward
        if forward is not None and not forward.dead and forward.parent is not None:
            try:
                forward.throw(greenlet.GreenletExit)
            except BaseException:  # forward's own cleanup failed: the call is gone anyway
                pass

    # Outcomes. ------------------------------------------------------------------------

    def _finish(self, call_id: int, prediction: Any) -> None:
        record = self._inflight.pop(call_id, None)
        if record is None:
            return
        if record.call.ctx.streaming is not None:  # (before the answer: it comes last)
            record.call.ctx.streaming.say("module_end_status_message", prediction)
        resolve(record.call.reply, prediction)
        self._cell.ended(time.monotonic() - record.started)
        publish = record.publish
        if publish is not None:
            publish(ModuleEnd(trace_id=record.call.ctx.trace_id, module_path=self.path))

    def _fail(self, call_id: int, error: BaseException) -> None:
        record = self._inflight.pop(call_id, None)
        if record is None:
            return
        self.counters.errors += 1
        self._cell.ended(time.monotonic() - record.started, type(error).__name__)
        publish = record.publish
        if publish is not None:
            publish(
                ModuleError(
                    trace_id=record.call.ctx.trace_id,
                    module_path=self.path,
                    error_type=type(error).__name__,
                )
            )
        if isinstance(error, EXPECTED_ERRORS):
            reject(record.call.reply, error)
            return
        crashed = ModuleCrashed(self.path, f"{type(error).__name__}: {error}", caused_by_call=True)
        crashed.__cause__ = scrub_exception(error)  # the caller may print it: no credentials
        reject(record.call.reply, crashed)
        raise error  # let it crash: the supervisor restarts this actor, fresh

    # Exit: no call is left unanswered. --------------------------------------------------

    def _abandon_inflight(self, reason: str) -> None:
        records = list(self._inflight.values())
        self._inflight.clear()
        for record in records:
            # A predictor's call in flight is safe to repeat (its LM calls have no side
            # effects): its caller resends it; a user forward's is not (idempotent=...).
            crashed = ModuleCrashed(self.path, reason, repeatable=self._predictor)
            reject(record.call.reply, crashed)
            self._end_quietly(record)
            if record.lm_reply is not None:
                record.lm_reply.cancel()  # nobody will resume these steps: free its LM slot
        for record in records:
            if record.thread is not None and record.thread is not threading.current_thread():
                record.thread.join(timeout=_CALL_THREAD_JOIN_SECONDS)

    def on_dropped(self, message: Any) -> None:
        if isinstance(message, Call):  # never accepted: safe for the caller to retry
            reject(message.reply, ModuleUnavailable(self.path))

    def on_stop(self) -> None:
        requested = self._lifecycle.exit_requested
        how = "killed" if requested is not None and requested.kind == "killed" else "stopped"
        self._abandon_inflight(f"the module actor was {how}")
        self.services.call_stats.retire(self.path, self._cell)

    def on_failure(self, _type: Any, value: Any, _tb: Any) -> None:
        self._abandon_inflight(f"the module actor crashed: {value!r}")
        self.services.call_stats.retire(self.path, self._cell)


class ForwardActor(ModuleActor):
    """A :class:`ModuleActor` for a module whose ``forward`` runs on greenlets (a
    composite): its greenlets live on its own thread, so no caller takes its turn."""

    handles_in_caller = False


def _probe(lm_call: LMCall) -> Any:
    """The cached response for this LM call if the LM can answer it without I/O; else a
    ``CacheMiss`` to send along (the worker then skips the lookup), or None (uncached)."""
    probe = getattr(lm_call.lm, "probe", None)  # an LM-like object without a cache: None
    if probe is None or (isinstance(lm_call.lm, LM) and not _plain_lm(lm_call.lm)):
        return None  # (an LM subclass's own complete() decides about its cache)
    return probe(lm_call.messages, **lm_call.kwargs)


def _tell_forward_wake(ref: pykka.ActorRef[Any], call_id: int, park: int) -> None:
    try:
        ref.tell(_ForwardWake(call_id, park))  # never inline: the greenlet's thread runs it
    except pykka.ActorDeadError:
        pass  # The actor died; its on_failure/on_stop answered the call already.


def _tell_if_cancelled(ref: pykka.ActorRef[Any], call_id: int, reply: Future[Any]) -> None:
    if not reply.cancelled():
        return
    try:
        ref.tell(_Cancelled(call_id))
    except pykka.ActorDeadError:
        pass


def _tell_lm_done(ref: pykka.ActorRef[Any], call_id: int, reply: Future[Any]) -> None:
    try:
        ref.tell(_LMDone(call_id, reply))
    except pykka.ActorDeadError:
        pass  # The actor died; its on_failure answered the call already.
