"""Sending a call to a module actor by name, and waiting for its reply without ever hanging.

The waiting is written as plans (runtime/_plans.py): :func:`resending_plan` is driven by a
blocking driver for a synchronous caller (:func:`call_resending`, :func:`wait_reply`) and
by an asyncio driver for ``await handle.acall(...)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import pykka

import supervisors
from dspy_actors.runtime._context import CallContext
from dspy_actors.runtime._errors import ModuleCrashed, ModuleUnavailable
from dspy_actors.runtime._futures import reject
from dspy_actors.runtime._messages import Call
from dspy_actors.runtime._plans import AwaitReply, Pause, Plan, await_reply_blocking, run_plan

# A module that is restarting is sent the call again this often, for at most this long: it
# never ran the call, so resending is safe, while failing would make a retrying caller
# re-run whatever already ran before it (earlier pipeline steps, a composite's forward).
RESEND_SECONDS = 0.005
# How long a module actor's start may take (ChildSpec's default, which module actors keep).
MODULE_START_TIMEOUT_SECONDS = supervisors.ChildSpec("module", pykka.ThreadingActor).start_timeout
# Twice that: a restart that uses its whole start timeout, fails and is started again
# still answers the call; only a module that cannot come back fails it. (Equal to the
# start timeout, the limit raced the retried start.)
RESEND_LIMIT_SECONDS = 2 * MODULE_START_TIMEOUT_SECONDS
# A call lost in flight on a predictor (its actor killed, or crashed by another call) is
# safe to repeat and is sent again, at most this many times: each time, its actor died
# again with the call in hand. The call's deadline is the real bound; this one only ends
# a pathological loop sooner. It is high because a kill drops *every* call in flight on
# the actor: under a kill every 200 ms of two predictors at 64 in flight, a limit of 5
# failed 3% of a composite's calls (bench/bench_kill_storm.py).
REPEAT_LIMIT = 50


def never_stopped() -> str | None:
    """The default ``stopped`` check: nothing asks the call to give up early."""
    return None


def send_call(
    registry: supervisors.Registry,
    name: str,
    inputs: Mapping[str, Any],
    ctx: CallContext,
) -> Future[Any]:
    """Send ``Call`` to the actor registered as ``name`` now; its reply future.

    The reply is always completed, even if the actor dies around the send: a module actor
    answers every call it accepted, and every call left in its inbox, as it exits. The one
    gap is a call put after that last look at the inbox; so if the actor is stopped once
    the call is in, this sender drains the inbox itself (whoever drains, each call is
    answered exactly once). That costs one flag read per call, where a monitor per call
    cost a lock round trip on the actor's lifecycle shared by every caller.
    """
    reply: Future[Any] = Future()
    ref = registry.whereis(name)
    if ref is None:
        reject(reply, ModuleUnavailable(name))
        return reply
    try:
        # An idle module actor's turn is taken by this thread (see tell_inline): a cached
        # call is answered here, an uncached one sent to the LM pool from here.
        supervisors.tell_inline(ref, Call(inputs, ctx, reply))
    except pykka.ActorDeadError:
        reject(reply, ModuleUnavailable(name))
        return reply
    if ref.actor_stopped.is_set():
        supervisors.drain_stranded(ref)  # the actor's on_dropped answers each call
    return reply


def wait_reply(
    reply: Future[Any],
    ctx: CallContext,
    path: str,
    timeout: float | None,
    kind: str = "module",
) -> Any:
    """The call's result, waiting at most until the deadline (or ``timeout``).

    ``path`` names what was called in errors (``kind`` ``path``: "module 'qa.answer'",
    "program 'qa'").

    The reply always comes (see :func:`send_call`): the answer, the module's error,
    ``ModuleCrashed`` if the actor died with the call in hand, or ``ModuleUnavailable`` if
    it died before taking it (safe to retry). No polling: the caller sleeps (or its forward
    greenlet is parked) until then or until the deadline, whichever comes first.
    """
    return await_reply_blocking(AwaitReply(reply, ctx, path, timeout, kind))


def resending_plan(
    registry: supervisors.Registry,
    name: str,
    inputs: Mapping[str, Any],
    ctx: CallContext,
    path: str,
    *,
    timeout: float | None = None,
    what: str = "module",
    stopped: Callable[[], str | None] = never_stopped,
) -> Plan[Any]:
    """The plan of :func:`call_resending` (see there)."""
    since: float | None = None
    repeats = 0
    while True:
        reply = send_call(registry, name, inputs, ctx)
        try:
            return (yield AwaitReply(reply, ctx, path, timeout))
        except ModuleCrashed as crash:
            if not crash.repeatable:
                raise
            if repeats >= REPEAT_LIMIT:
                # Not repeatable any more: a caller must not re-run what ran before it.
                raise ModuleCrashed(
                    path, f"it crashed {repeats + 1} times with the call in flight: {crash.reason}"
                ) from crash
            repeats += 1
            since = None  # it reached the module: a fresh wait while it restarts
            yield Pause(RESEND_SECONDS)
        except ModuleUnavailable:
            now = time.monotonic()
            since = now if since is None else since
            reason = stopped()
            if reason is not None:
                raise ModuleCrashed(path, reason) from None
            remaining = ctx.remaining()
            if now - since >= RESEND_LIMIT_SECONDS or (
                remaining is not None and remaining <= RESEND_SECONDS
            ):
                raise ModuleCrashed(
                    path, f"the {what} stayed unavailable for {now - since:.1f} s"
                ) from None
            yield Pause(RESEND_SECONDS)


def call_resending(
    registry: supervisors.Registry,
    name: str,
    inputs: Mapping[str, Any],
    ctx: CallContext,
    path: str,
    *,
    timeout: float | None = None,
    what: str = "module",
    stopped: Callable[[], str | None] = never_stopped,
) -> Any:
    """Call the module actor registered as ``name`` and wait for its answer; while it is
    restarting (``ModuleUnavailable``), send the call again every ``RESEND_SECONDS``.

    A call lost in flight on a predictor (``ModuleCrashed.repeatable``) is sent again
    too, at most ``REPEAT_LIMIT`` times.

    Past ``RESEND_LIMIT_SECONDS``, the deadline, or once ``stopped()`` gives a reason the
    actor will not come back (the program was stopped, its version retired), the call
    fails with ``ModuleCrashed`` naming ``path`` (``what`` says what it is in the
    message: "step", "sub-module"). On a forward greenlet the waits park the greenlet.
    """
    return run_plan(
        resending_plan(
            registry, name, inputs, ctx, path, timeout=timeout, what=what, stopped=stopped
        )
    )
