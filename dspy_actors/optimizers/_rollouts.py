"""Rollouts for the reflective optimizers (GEPA, SIMBA): run a program on examples in
parallel (bounded by the run's LM slots), keeping per example its score, the metric's
textual feedback, the program's outputs and each predictor call (as JSON), so a step can
return them as checkpointable data."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from dspy_actors.evaluate._parallel import parallel_map
from dspy_actors.evaluate.metrics import Metric, call_metric, metric_score
from dspy_actors.optimizers._base import RunContext
from dspy_actors.optimizers._program import instrument, traced
from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module

__all__ = ["Rollout", "feedback_metric", "rollouts", "score_and_feedback"]

Rollout = dict[str, Any]
"""``{"score": float, "feedback": str, "outputs": {...}, "trace": [{"predictor", "inputs",
"outputs"}], "error": str | None}``, all JSON."""


def feedback_metric(metric: Metric) -> bool:
    """Whether ``metric`` takes DSPy's five GEPA arguments (gold, pred, trace, pred_name,
    pred_trace)."""
    try:
        inspect.signature(metric).bind(None, None, None, None, None)
    except TypeError:
        return False
    except ValueError:
        return False
    return True


def score_and_feedback(
    metric: Metric,
    example: Example,
    prediction: Any,
    trace: Any,
    pred_name: str | None = None,
    pred_trace: Any = None,
) -> tuple[float, str | None]:
    """Call ``metric`` as DSPy's GEPA does (five arguments when it takes them) and split its
    result into a score and the feedback it gave (None if it gave none)."""
    if feedback_metric(metric):
        value = metric(example, prediction, trace, pred_name, pred_trace)
    else:
        value = call_metric(metric, example, prediction, trace)
    if isinstance(value, Example) and "score" in value:
        feedback = value.get("feedback")
        return metric_score(value["score"]), None if feedback is None else str(feedback)
    return metric_score(value), None


def _jsonable_prediction(prediction: Any) -> dict[str, Any]:
    if hasattr(prediction, "to_dict"):
        return {str(k): to_jsonable(v) for k, v in prediction.to_dict().items()}
    return {"value": to_jsonable(prediction)}


def rollouts(
    program: Module,
    examples: Sequence[Example],
    metric: Metric,
    ctx: RunContext,
    *,
    failure_score: float = 0.0,
) -> list[Rollout]:
    """Run ``program`` (a private instrumented copy) on each example, in parallel. An
    example whose program or metric raised scores ``failure_score`` with the error as its
    feedback; more than ``ctx.max_errors`` of those fail the step (an outage must not pass
    for a bad candidate)."""
    runnable = instrument(program.deepcopy())

    def one(example: Example) -> Rollout:
        with traced() as trace:
            try:
                prediction = runnable(**example.inputs().to_dict())
            except Exception as exc:
                message = f"The program raised {type(exc).__name__}: {exc}"
                return {
                    "score": failure_score,
                    "feedback": message,
                    "outputs": {},
                    "trace": [],
                    "error": message,
                }
        calls = list(trace)
        try:
            score, feedback = score_and_feedback(metric, example, prediction, calls)
        except Exception as exc:
            errors.append(repr(exc))
            message = f"The metric raised {type(exc).__name__}: {exc}"
            return {
                "score": failure_score,
                "feedback": message,
                "outputs": {},
                "trace": [],
                "error": message,
            }
        return {
            "score": score,
            "feedback": feedback,
            "outputs": _jsonable_prediction(prediction),
            "trace": [
                {
                    "predictor": name,
                    "inputs": {str(k): to_jsonable(v) for k, v in inputs.items()},
                    "outputs": _jsonable_prediction(pred),
                }
                for name, inputs, pred in calls
            ],
            "error": None,
        }

    results = parallel_map(
        one, list(examples), num_threads=ctx.num_threads, cancel=ctx.cancel, limiter=ctx.slots
    )
    # Counted from the results, not in ``one``: it may run in another process.
    errors = [str(r["error"]) for r in results if r["error"] is not None]
    if ctx.max_errors is not None and len(errors) > ctx.max_errors:
        raise RuntimeError(
            f"{len(errors)} of {len(results)} examples failed (more than max_errors="
            f"{ctx.max_errors}); the last: {errors[-1]}"
        )
    return results
