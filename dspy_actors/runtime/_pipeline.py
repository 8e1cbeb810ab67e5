"""Running a call through a program's steps, driven from the calling thread.

``app.program(name, steps)`` serves each step as its own actor (or subtree, for a
composite step) under the program's supervisor; no actor sits between the steps. The
caller drives the call, step by step (a plan, runtime/_plans.py: the thread of a blocking
``handle.call``, or the event loop of ``await handle.acall``, holding no thread)::

    caller ──Call──▶ step 1 actor ──reply──▶ caller ──Call──▶ step 2 actor ──reply──▶ caller

For each step it sends a ``Call`` to the step's actor by registry name, waits for the
reply, and merges the step's outputs into the values so far; the next step gets the values
it takes (its signature's inputs, or the keyword parameters of its ``forward``). The last
step's Prediction is the call's answer. A one-step program costs the same two hops as
``app.serve`` of that module.

- Every step's ``Call`` carries the call's context (trace id, deadline, overrides); each
  wait ends by the deadline at the latest.
- All the steps of one call go to the actors of one program version: the caller passes the
  version's registry name prefix, read once when the attempt starts.
- A later step that is restarting (``ModuleUnavailable``: the call never reached it) is
  resent every ``calls.RESEND_SECONDS``, for at most ``calls.RESEND_LIMIT_SECONDS`` or until
  the deadline; then the call fails with ``ModuleCrashed`` naming the step. Never by
  re-running the steps before it: they ran, and may not be idempotent.
- The *first* step's ``ModuleUnavailable`` is raised as it is: nothing ran yet, so the
  handle's own retry (which also resolves the program's current version again) is safe.
- A step's error is the call's error (``ModuleCrashed`` of a step names it, as
  ``program.step``); a step answering something other than a Prediction or a mapping of
  outputs fails the call with ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import supervisors
from dspy_actors.runtime._calls import never_stopped, resending_plan, send_call
from dspy_actors.runtime._context import CallContext
from dspy_actors.runtime._plans import AwaitReply, Plan, run_plan


@dataclass(frozen=True, slots=True)
class PipelineStep:
    """One step of a served program: its id (its actor is registered as the version's
    prefix + id) and the input names it takes (None: any, it has ``**kwargs``)."""

    id: str
    accepted: frozenset[str] | None


def prediction_items(result: Any) -> dict[str, Any]:
    """A step's outputs as a dict (a Prediction, a mapping, or an object with items())."""
    if isinstance(result, Mapping):
        return dict(result)
    items = getattr(result, "items", None)
    if callable(items):
        return dict(items())
    raise TypeError(
        f"a pipeline step must return a Prediction or a mapping of outputs, got "
        f"{type(result).__name__}"
    )


def run_pipeline(
    registry: supervisors.Registry,
    program: str,
    prefix: str,
    steps: Sequence[PipelineStep],
    inputs: Mapping[str, Any],
    ctx: CallContext,
    stopped: Callable[[], str | None] = never_stopped,
) -> Any:
    """Run one call of ``program`` through ``steps`` (actors named ``prefix + step.id``)
    in this thread; the last step's Prediction, or the first error. ``stopped`` tells a
    step's retry to give up at once, and why (the program was stopped, or this version
    retired by an upgrade)."""
    return run_plan(pipeline_plan(registry, program, prefix, steps, inputs, ctx, stopped))


def pipeline_plan(
    registry: supervisors.Registry,
    program: str,
    prefix: str,
    steps: Sequence[PipelineStep],
    inputs: Mapping[str, Any],
    ctx: CallContext,
    stopped: Callable[[], str | None] = never_stopped,
) -> Plan[Any]:
    """The plan of :func:`run_pipeline`, for either driver."""
    values = dict(inputs)
    result: Any = None
    last = len(steps) - 1
    for index, step in enumerate(steps):
        accepted = step.accepted
        if accepted is None:
            step_inputs = dict(values)
        else:
            step_inputs = {k: v for k, v in values.items() if k in accepted}
        name, path = prefix + step.id, f"{program}.{step.id}"
        if index == 0:
            reply = send_call(registry, name, step_inputs, ctx)
            result = yield AwaitReply(reply, ctx, path)
        else:
            result = yield from resending_plan(
                registry, name, step_inputs, ctx, path, what="step", stopped=stopped
            )
        outputs = prediction_items(result)  # checked for the last step too
        if index < last:
            values.update(outputs)
    return result
