"""Helpers shared by the optimizers: traced runs, demos as JSON, programs from JSON."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dspy_actors.evaluate.metrics import Metric, call_metric, metric_score
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction

__all__ = [
    "DemoSets",
    "TraceEntry",
    "demo_json",
    "traced",
    "with_demos",
    "with_instructions",
]

TraceEntry = tuple[str, dict[str, Any], Prediction]
DemoSets = dict[str, list[dict[str, Any]]]
"""Demos per predictor name, as JSON objects."""

_trace: contextvars.ContextVar[list[TraceEntry] | None] = contextvars.ContextVar(
    "dspy_actors_optimizer_trace", default=None
)


class _TracingForward:
    """A predictor's ``forward`` that also records the call in the current trace. A class,
    not a closure, so an instrumented program pickles (to run on a Ray worker)."""

    def __init__(self, name: str, predictor: Predict) -> None:
        self.name = name
        self.predictor = predictor

    def __call__(self, **kwargs: Any) -> Prediction:
        predictor = self.predictor
        prediction: Prediction = type(predictor).forward(predictor, **kwargs)
        trace = _trace.get()
        if trace is not None:
            inputs = {k: v for k, v in kwargs.items() if k in predictor.signature.input_fields}
            trace.append((self.name, inputs, prediction))
        return prediction


def instrument(program: Module) -> Module:
    """Make every predictor of ``program`` (a private copy) record its calls in the
    current trace. The per-instance ``forward`` shadows the class's: Module.__call__ calls
    ``self.forward``, so the predictor runs unchanged and also reports."""
    for name, predictor in program.named_predictors():
        if isinstance(predictor, Predict):  # the library's predictors all are
            predictor.__dict__["forward"] = _TracingForward(name, predictor)
    return program


def uninstrument(program: Module) -> Module:
    for _, predictor in program.named_predictors():
        predictor.__dict__.pop("forward", None)
    return program


@contextmanager
def traced() -> Iterator[list[TraceEntry]]:
    """Collect the predictor calls made inside the block (by instrumented programs)."""
    trace: list[TraceEntry] = []
    token = _trace.set(trace)
    try:
        yield trace
    finally:
        _trace.reset(token)


def demo_json(example: Example | Mapping[str, Any]) -> dict[str, Any]:
    """A demo as a JSON object (bookkeeping keys dropped)."""
    return {str(k): to_jsonable(v) for k, v in example.items() if not str(k).startswith("dspy_")}


def with_demos(student: Module, demos: Mapping[str, list[dict[str, Any]]]) -> Module:
    """A copy of ``student`` whose predictors hold ``demos`` (by predictor name)."""
    program = student.deepcopy()
    for name, predictor in program.named_predictors():
        predictor.demos = [Example(d) for d in demos.get(name, [])]
    return program


def with_instructions(program: Module, instructions: Mapping[str, str]) -> Module:
    """``program`` (changed in place) with new instructions for the named predictors."""
    for name, predictor in program.named_predictors():
        if name in instructions:
            predictor.signature = predictor.signature.with_instructions(instructions[name])
    return program


def run_traced(
    program: Module, example: Example, metric: Metric | None, threshold: float | None
) -> tuple[bool, list[TraceEntry], BaseException | None]:
    """Run an instrumented ``program`` on ``example``: whether the metric accepts the
    prediction, the trace, and the error if the program or the metric raised."""
    with traced() as trace:
        try:
            prediction = program(**example.inputs().to_dict())
        except Exception as exc:
            return False, [], exc
    if metric is None:
        return True, list(trace), None
    try:
        value = call_metric(metric, example, prediction, list(trace))
    except Exception as exc:
        return False, [], exc
    ok = metric_score(value) >= threshold if threshold is not None else bool(metric_score(value))
    return ok, list(trace), None


def trace_demos(trace: list[TraceEntry]) -> dict[str, dict[str, Any]]:
    """One demo per predictor from a successful trace (its last call), as JSON."""
    demos: dict[str, dict[str, Any]] = {}
    for name, inputs, prediction in trace:
        demos[name] = demo_json({**inputs, **prediction.to_dict()})
    return demos


def score_program(
    program: Module, devset: list[Example], metric: Metric, ctx: Any
) -> tuple[float, list[float]]:
    """The program's score (percent) on ``devset`` and each example's score, evaluated in
    parallel; a cancelled run raises instead of returning a partial score."""
    from dspy_actors.evaluate._parallel import Cancelled
    from dspy_actors.evaluate.evaluate import Evaluate

    result = Evaluate(
        devset=devset,
        metric=metric,
        concurrency=ctx.num_threads,
        max_errors=ctx.max_errors,
        progress=False,
    )(program, cancel=ctx.cancel, limiter=ctx.slots)
    if result.interrupted:
        raise Cancelled("the run was cancelled")
    return result.score, [r.score for r in result.results]
