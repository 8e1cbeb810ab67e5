"""SupervisedActor: a Pykka actor that reports why it exited, on every path Pykka takes.

Pykka's sharp edges, and what this class does about each:

- A failing ``on_start`` goes to ``_handle_failure`` only (``on_failure`` is not called):
  we record the crash there, so the reason is ``crash`` with the exception.
- An exception inside an ``ask`` is returned to the caller and the actor keeps running.
  With ``crash_on_ask_error = True`` the caller still gets the exception *and* the actor
  crashes (``on_failure`` runs), as an OTP ``gen_server:call`` that crashes the server.
- A ``BaseException`` in a handler makes Pykka stop *every* actor in the process. Here it
  crashes only this actor (its supervisor decides), and an ``ask`` caller gets
  :class:`ActorCrashed`.
- ``actor_stopped`` is set before ``on_stop``/``on_failure`` run: the exit is reported only
  when the loop has fully finished (after the inbox was drained).
- An ``ask`` racing with the actor's death can be queued after Pykka drained the inbox:
  :func:`ask` never waits on such a message forever (see ``drain_stranded``).

One addition of ours: an actor class with ``handles_in_caller = True`` lets a sender
handle a message in the sender's own thread while the actor is idle (:func:`tell_inline`).
Whoever handles a message holds the actor's *turn*, so messages are still handled one at a
time, in order per sender, and a crash still crashes the actor in its own thread.

Over 400 lines: every exit path Pykka takes goes through this one class; the sharp edges
above are handled side by side so none is missed.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import pykka

from supervisors._errors import ActorCrashed
from supervisors._exit import KILLED, NORMAL, SHUTDOWN, Down, ExitReason, MonitorRef
from supervisors._lifecycle import (
    DownCallback,
    Lifecycle,
    drain_stranded,
    lifecycle_of,
    lifecycle_or_none,
    register_lifecycle,
)

# How often a waiting ask re-checks whether its actor died (only on the slow path).
_LIVENESS_POLL_SECONDS = 0.05


class _ExitRequested:
    """Wake-up message: an exit was requested from outside (see ``request_exit``)."""

    __slots__ = ()


_EXIT_REQUESTED = _ExitRequested()


class _InlineCrashed:
    """Wake-up message: a handler run by a sender crashed (see ``tell_inline``)."""

    __slots__ = ()


_INLINE_CRASHED = _InlineCrashed()
_WAKE_UPS = (_EXIT_REQUESTED, _INLINE_CRASHED)

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class SupervisedActor(pykka.ThreadingActor):
    """Base class for actors whose exit (and its reason) supervisors and monitors can see.

    Use it exactly like ``pykka.ThreadingActor``; override ``on_start``, ``on_stop``,
    ``on_failure``, ``on_receive`` and methods as usual (call ``super().__init__()``).
    """

    crash_on_ask_error: ClassVar[bool] = False
    """If True, an exception raised while answering an ``ask`` also crashes the actor."""

    # Daemon threads: a supervision tree is stopped by its owner (``stop()``), not by the
    # interpreter waiting for threads at exit; and on Python 3.11 each non-daemon thread
    # start scans every live non-daemon thread, which makes starting N actors O(N^2)
    # (10,000 children: ~31 s vs ~11 s measured in bench/bench_supervisors.py).
    use_daemon_thread: ClassVar[bool] = True

    handles_in_caller: ClassVar[bool] = False
    """If True, :func:`tell_inline` may handle a message in the sender's thread while this
    actor is idle. Only for handlers that never block: the sender waits for them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lifecycle: Lifecycle = register_lifecycle(self.actor_ref)
        self._lifecycle.dropped = self._dropped
        self._crash: BaseException | None = None
        # Held by whichever thread is handling one of this actor's messages: its own, or a
        # sender's (tell_inline). Also held while it stops, so no sender handles a message
        # during on_stop/on_failure.
        self._turn = threading.Lock()
        self._inline_crash: ExcInfo | None = None
        inbox = self.actor_inbox
        if not isinstance(inbox, queue.Queue):  # what Pykka's ThreadingActor makes
            raise TypeError(f"{type(self).__name__}: expected a queue.Queue inbox, got {inbox!r}")
        self._inbox: queue.Queue[Any] = inbox
        if self.handles_in_caller:
            self._lifecycle.inline = weakref.WeakMethod(self._handle_inline)

    # Pykka internals we hook (pinned to pykka 4.x in pyproject). -----------------------

    def _actor_loop(self) -> None:
        try:
            super()._actor_loop()
        finally:
            self._lifecycle.exit(self._exit_reason())
            drain_stranded(self.actor_ref)

    def _actor_loop_setup(self) -> None:
        super()._actor_loop_setup()
        if not self.actor_stopped.is_set():
            self._lifecycle.mark_started()

    def _actor_loop_running(self) -> None:
        inbox = self._inbox
        while not self.actor_stopped.is_set():
            _wait_for_mail(inbox)
            # The message is taken only once we hold the turn: a sender that finds the
            # inbox empty under the turn knows that no earlier message is still unhandled.
            with self._turn:
                try:
                    envelope = inbox.get_nowait()
                except queue.Empty:  # (cannot happen: only a stopped actor is drained)
                    continue
                if not self._handle_envelope(envelope):
                    return

    def _handle_envelope(self, envelope: Any) -> bool:
        """Handle one message from the inbox (holding the turn); False once stopping."""
        inline_crash = self._inline_crash
        if inline_crash is not None:
            # A sender's handler crashed: crash now, before handling anything else.
            self.actor_inbox.put(envelope)
            self._crash_now(inline_crash)
            return False
        if self._lifecycle.exit_requested is not None:
            # Shutdown/kill: stop now; queued asks (this one included) get ActorDeadError.
            self.actor_inbox.put(envelope)
            self._stop()
            return False
        reply_to = envelope.reply_to
        try:
            response = self._handle_receive(envelope.message)
        except Exception:
            exc_info = sys.exc_info()
            if reply_to is not None:
                reply_to.set_exception(exc_info)
                if not self.crash_on_ask_error:
                    return True
            self._crash_now(exc_info)
        except BaseException as exc:
            exc_info = sys.exc_info()
            if reply_to is not None:
                crashed = ActorCrashed(f"{self} crashed while handling the message: {exc!r}")
                crashed.__cause__ = exc
                reply_to.set_exception((ActorCrashed, crashed, exc.__traceback__))
            self._crash_now(exc_info)
        else:
            if reply_to is not None:
                reply_to.set(response)
        return True

    def _handle_inline(self, message: Any) -> bool:
        """Handle ``message`` in the calling thread if this actor is idle (its turn is
        free, its inbox empty, it runs); False, having done nothing, otherwise.

        A handler that raises crashes the actor as in its own thread: the actor's thread
        is woken to crash before it handles anything else. An exception that is not an
        ``Exception`` (KeyboardInterrupt in the main thread) also goes on up the caller."""
        if not self._turn.acquire(blocking=False):
            return False
        try:
            if (
                not self._lifecycle.started
                or self.actor_stopped.is_set()
                or self._lifecycle.exit_requested is not None
                or self._inline_crash is not None
                or self._inbox.qsize()
            ):
                return False
            try:
                self.on_receive(message)  # the actor's own messages only: not Pykka's
            except Exception:
                self._crashed_inline(sys.exc_info())
            except BaseException:
                self._crashed_inline(sys.exc_info())
                raise
            return True
        finally:
            self._turn.release()

    def _crashed_inline(self, exc_info: ExcInfo | Any) -> None:
        self._inline_crash = exc_info
        try:
            self.actor_ref.tell(_INLINE_CRASHED)  # wakes the actor's thread to crash
        except pykka.ActorDeadError:
            pass  # (not while we hold the turn: only a stopping actor is dead)

    def _actor_loop_teardown(self) -> None:
        # Messages left in the inbox at exit: asks get ActorDeadError (as Pykka does), and
        # every message goes to on_dropped, so an actor that carries its own reply futures
        # in messages can answer them too. Senders may be draining at the same time.
        drain_stranded(self.actor_ref)

    def _dropped(self, message: Any) -> None:
        if message not in _WAKE_UPS:
            self.on_dropped(message)

    def on_dropped(self, message: Any) -> None:
        """Called (in the actor's thread, as it exits) for each message it will never handle.

        Override to answer messages that carry their own reply (a future in the message).
        """

    def _handle_receive(self, message: Any) -> Any:
        if message in _WAKE_UPS:
            return None
        return super()._handle_receive(message)

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._crash is None and exception_value is not None:
            self._crash = exception_value
        super()._handle_failure(exception_type, exception_value, traceback)

    # Our own. ---------------------------------------------------------------------------

    def _crash_now(
        self, exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | Any
    ) -> None:
        self._handle_failure(*exc_info)
        try:
            self.on_failure(*exc_info)
        except Exception:
            self._handle_failure(*sys.exc_info())

    def _exit_reason(self) -> ExitReason:
        if self._crash is not None:
            return ExitReason.crash(self._crash)
        requested = self._lifecycle.exit_requested
        return requested if requested is not None else NORMAL


def _wait_for_mail(inbox: queue.Queue[Any]) -> None:
    """Block until ``inbox`` holds a message, without taking it. (Pykka's threading inbox
    is a ``queue.Queue``: this is its ``get`` without the take.)"""
    not_empty = inbox.not_empty
    with not_empty:
        while not inbox._qsize():
            not_empty.wait()


A = TypeVar("A", bound=pykka.Actor)

_supervised_classes: dict[type[Any], type[Any]] = {}


def supervised(actor_class: type[A]) -> type[A]:
    """Return a subclass of a plain ``pykka.ThreadingActor`` class that reports its exit.

    Supervisors apply this automatically to a child spec's actor class, so any Pykka actor
    class can be supervised; a factory must return a ref of a supervised actor.
    """
    if issubclass(actor_class, SupervisedActor):
        return actor_class
    if not issubclass(actor_class, pykka.ThreadingActor):
        raise TypeError(
            f"{actor_class.__name__} is not a pykka.ThreadingActor subclass; only threading "
            "actors can be supervised"
        )
    cached = _supervised_classes.get(actor_class)
    if cached is None:
        cached = type(actor_class.__name__, (SupervisedActor, actor_class), {})
        cached.__qualname__ = actor_class.__qualname__
        cached.__module__ = actor_class.__module__
        _supervised_classes[actor_class] = cached
    return cached


def monitor(
    ref: pykka.ActorRef[Any],
    notify: DownCallback | pykka.ActorRef[Any],
) -> MonitorRef:
    """Get a :class:`Down` when ``ref``'s actor exits (at once, if it already has).

    ``notify`` is a callback (called in the exiting actor's thread: keep it short and never
    block in it) or an actor ref, which is sent the ``Down`` as a message.
    """
    lifecycle = lifecycle_of(ref)
    if isinstance(notify, pykka.ActorRef):
        target = notify

        def tell_target(down: Down) -> None:
            if target.is_alive():
                try:
                    target.tell(down)
                except pykka.ActorDeadError:
                    pass  # The monitoring actor is gone too; nobody left to tell.

        return lifecycle.add_monitor(tell_target)
    return lifecycle.add_monitor(notify)


def demonitor(ref: pykka.ActorRef[Any], mref: MonitorRef) -> bool:
    """Remove a monitor. Returns False if it was not active (already fired or removed)."""
    return lifecycle_of(ref).remove_monitor(mref)


def request_exit(ref: pykka.ActorRef[Any], reason: ExitReason = SHUTDOWN) -> None:
    """Ask a supervised actor to exit with ``reason`` after the message it is handling.

    Messages still queued are not handled: their ``ask`` callers get ``ActorDeadError``.
    """
    lifecycle = lifecycle_of(ref)
    if lifecycle.exit_requested is None:
        lifecycle.exit_requested = reason
    try:
        ref.tell(_EXIT_REQUESTED)
    except pykka.ActorDeadError:
        pass  # Already stopping: nothing to wake up.


def tell_inline(ref: pykka.ActorRef[Any], message: Any) -> None:
    """``ref.tell(message)``, except that if the actor is idle and its class allows it
    (``handles_in_caller``), the calling thread handles the message itself, at once.

    The calling thread then takes the actor's turn, as the actor's own thread does for
    each message, so nothing changes for the actor: one message at a time, in order per
    sender (a sender's earlier message still in the inbox makes this one queue behind
    it), and a crash in the handler crashes the actor, in its own thread, before it
    handles anything else. Only the thread differs, as on the BEAM, where a process runs
    on whichever scheduler thread is free. What it saves is two thread hand-offs: the
    wake-up of the actor's thread and the sender's wait for it.

    ``message`` goes to the actor's ``on_receive``: Pykka's own messages (stop, proxy
    calls) are never handled inline, so send them with ``tell``, ``ask`` or the ref.
    Raises ``pykka.ActorDeadError`` if the actor is not running, as ``tell`` does.
    """
    lifecycle = lifecycle_or_none(ref)
    if lifecycle is not None and lifecycle.inline is not None:
        handle = lifecycle.inline()
        if handle is not None and handle(message):
            return
    ref.tell(message)


def kill(ref: pykka.ActorRef[Any]) -> None:
    """Request an exit with reason ``killed`` (what ``brutal_kill`` does), without waiting."""
    request_exit(ref, KILLED)


def ask(ref: pykka.ActorRef[Any], message: Any, *, timeout: float) -> Any:
    """``ref.ask(message)`` that never hangs on an actor dying under it.

    Raises ``pykka.ActorDeadError`` if the actor is dead or dies before answering,
    ``pykka.Timeout`` after ``timeout`` seconds, or whatever the actor raised.
    """
    future = ref.ask(message, block=False)
    try:
        return future.get(timeout=min(timeout, _LIVENESS_POLL_SECONDS))
    except pykka.Timeout:
        if timeout <= _LIVENESS_POLL_SECONDS:
            raise
    deadline = time.monotonic() + timeout - _LIVENESS_POLL_SECONDS
    while True:
        if ref.actor_stopped.is_set():
            drain_stranded(ref)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return future.get(timeout=0)
        try:
            return future.get(timeout=min(remaining, _LIVENESS_POLL_SECONDS))
        except pykka.Timeout:
            continue


def exit_reason(ref: pykka.ActorRef[Any]) -> ExitReason | None:
    """The actor's exit reason, or None while it runs."""
    return lifecycle_of(ref).reason


def wait_for_exit(ref: pykka.ActorRef[Any], timeout: float) -> ExitReason | None:
    """Wait up to ``timeout`` seconds for the actor to exit; its reason, or None if it did not."""
    lifecycle = lifecycle_of(ref)
    lifecycle.finished.wait(timeout)
    return lifecycle.reason


__all__ = [
    "Down",
    "SupervisedActor",
    "ask",
    "demonitor",
    "exit_reason",
    "kill",
    "monitor",
    "request_exit",
    "supervised",
    "tell_inline",
    "wait_for_exit",
]
