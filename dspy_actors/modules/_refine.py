"""``Refine``: BestOfN that learns from a failed attempt before the next one.

As DSPy's: attempts run one after another at ``temperature=1.0`` with rising
``rollout_id``s. When an attempt's reward is below ``threshold`` (and attempts are left),
an LM is asked (:class:`OfferFeedback`) for advice to each predictor of the module, given
the program's code, each predictor's inputs and outputs in that attempt, the outputs, the
reward function's code and the reward. The next attempt shows each predictor its advice as
an extra ``hint_`` input. The first attempt to reach the threshold wins, else the best.

Attempts are sequential by nature (each needs the advice of the one before), served or
not. The predictors' inputs and outputs are recorded by the adapter the attempt runs under
(set with ``context(adapter=...)``), so this works the same when the module is served by
actors: the override travels with each sub-module call.
"""

from __future__ import annotations

import inspect
import json
import textwrap
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from dspy_actors import _settings as settings
from dspy_actors.adapters.base import Adapter, describe_fields
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.lm._steps import Steps
from dspy_actors.modules._best_of_n import (
    FailureBudget,
    RewardFn,
    check_attempt_args,
    rollout_start,
    run_one,
)
from dspy_actors.modules._predict import Predict
from dspy_actors.primitives._predictor import Predictor
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature

__all__ = ["HINT_FIELD", "OfferFeedback", "Refine"]

HINT_FIELD = "hint_"  # DSPy's name for the advice input
_HINT_DESC = "A hint to the module from an earlier run"


class OfferFeedback(Signature):
    """A program's output scored below the target reward. Say which of its modules are to
    blame, if any, and give each one concrete advice for how to handle the same or a similar
    input next time. The modules will not see this run, so the advice must stand on its
    own. A module not to blame gets the advice N/A."""

    program_code: str = InputField(desc="The source code of the program")
    modules_defn: str = InputField(desc="Each module of the program, with its inputs and outputs")
    program_inputs: str = InputField(desc="The inputs the program was given")
    program_trajectory: str = InputField(desc="Each module's inputs and outputs in this run")
    program_outputs: str = InputField(desc="The outputs the program produced")
    reward_code: str = InputField(desc="The source code of the reward function")
    target_threshold: float = InputField(desc="The reward the program should reach")
    reward_value: float = InputField(desc="The reward the program's outputs got")
    module_names: list[str] = InputField(desc="The modules to advise, by name")
    discussion: str = OutputField(desc="Where each module went wrong, if it did")
    advice: dict[str, str] = OutputField(
        desc="For each module by name: the situations where it went wrong and what it should "
        "do differently in them; N/A if it is not to blame"
    )


def _source(obj: Any) -> str:
    """Source code of ``obj`` (or of its class), or its repr when there is none."""
    for target in (obj, type(obj)):
        try:
            return textwrap.dedent(inspect.getsource(target))
        except (OSError, TypeError):
            continue
    return repr(obj)


def _fields_key(signature: type[Signature]) -> tuple[str, ...]:
    # Predictors are told apart by their field names: a served module's predictors are
    # copies in other actors (and loading state makes new signature classes), so neither
    # object identity nor the class is stable.
    return tuple(name for name in signature.fields if name != HINT_FIELD)


def describe_predictors(predictors: Sequence[tuple[str, Predictor]]) -> str:
    """Each predictor's name, input and output fields and instructions, for the advisor."""
    rule = "-" * 80
    out = [rule]
    for name, predictor in predictors:
        sig = predictor.signature
        out.append(f"Module {name}")
        out.append("Input Fields:\n" + describe_fields(list(sig.input_fields.values())))
        out.append("Output Fields:\n" + describe_fields(list(sig.output_fields.values())))
        out.append(f"Original Instructions: {sig.instructions}")
        out.append(rule)
    return "\n".join(out)


def _to_json(value: Any) -> str:
    if isinstance(value, str):
        return value

    def fallback(o: Any) -> Any:
        if isinstance(o, Example):
            return o.to_dict()
        return f"<non-serializable: {type(o).__name__}>"

    return json.dumps(value, indent=2, ensure_ascii=False, default=fallback)


class _AttemptAdapter(Adapter):
    """Runs one attempt's predictor calls through ``base``: adds each predictor's hint (if
    there is advice) and records its inputs and outputs (the attempt's trajectory)."""

    name = "RefineAttempt"

    def __init__(
        self, base: Adapter, names: Mapping[tuple[str, ...], str], advice: Mapping[str, str]
    ) -> None:
        self.base = base
        self.names = dict(names)
        self.advice = dict(advice)
        self.trajectory: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def steps(
        self,
        lm: Any,
        lm_kwargs: Mapping[str, Any],
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> Steps[list[dict[str, Any]]]:
        name = self.names.get(_fields_key(signature), signature.signature)
        shown = dict(inputs)
        if self.advice:
            signature = signature.append(HINT_FIELD, InputField(desc=_HINT_DESC), str)
            inputs = {**inputs, HINT_FIELD: self.advice.get(name, "N/A")}
        outputs = yield from self.base.steps(lm, lm_kwargs, signature, demos, inputs)
        with self._lock:
            self.trajectory.append(
                {"module_name": name, "inputs": shown, "outputs": outputs[0] if outputs else {}}
            )
        return outputs


class Refine(Module):
    """Runs ``module`` up to ``N`` times, with advice from each failed attempt fed into the
    next; returns the first prediction whose reward reaches ``threshold``, else the best.

    ``reward_fn(inputs, prediction) -> float``; ``fail_count`` (default ``N``): failed
    attempts tolerated before the next failure is raised (if all fail, the last error is).
    The advice comes from ``feedback_lm`` if given, else the LM in force.
    """

    def __init__(
        self,
        module: Module,
        N: int,
        reward_fn: RewardFn,
        threshold: float,
        fail_count: int | None = None,
        *,
        feedback_lm: Any = None,
    ) -> None:
        self.fail_count = check_attempt_args("Refine", N, fail_count)
        self.module = module
        self.N = N
        self.reward_fn = reward_fn
        self.threshold = threshold
        self.feedback_lm = feedback_lm
        self.module_code = _source(module)
        self.reward_fn_code = _source(reward_fn)
        # Taken now: served, self.module becomes a proxy to its actor.
        self._predictors = [(n, p) for n, p in module.named_predictors()]

    def forward(self, **kwargs: Any) -> Prediction:
        predictors = self._current_predictors()
        names = {_fields_key(p.signature): n for n, p in predictors}
        module_names = [n for n, _ in predictors]
        base: Adapter = settings.get("adapter") or ChatAdapter()
        start = rollout_start(self.module)
        budget = FailureBudget("Refine", self.fail_count)
        best: Prediction | None = None
        best_reward = -float("inf")
        last_error: BaseException | None = None
        advice: dict[str, str] = {}
        for index in range(self.N):
            adapter = _AttemptAdapter(base, names, advice)
            rollout_id = start + index

            def attempt(adapter: _AttemptAdapter = adapter, rid: int = rollout_id) -> Any:
                with settings.context(rollout_id=rid, temperature=1.0, adapter=adapter):
                    prediction = self.module(**kwargs)
                return prediction, float(self.reward_fn(dict(kwargs), prediction))

            outcome = run_one(attempt)
            if outcome.error is not None:
                last_error = outcome.error
                budget.failed(index, rollout_id, outcome.error)
                continue
            assert outcome.value is not None
            prediction, reward = outcome.value
            if best is None or reward > best_reward:
                best, best_reward = prediction, reward
            if reward >= self.threshold or index == self.N - 1:
                break
            advice = self._advise(
                kwargs, predictors, module_names, adapter.trajectory, prediction, reward
            )
        if best is None:
            assert last_error is not None
            raise last_error
        return best

    def _current_predictors(self) -> list[tuple[str, Predictor]]:
        named = getattr(self.module, "named_predictors", None)
        return list(named()) if callable(named) else list(self._predictors)

    def _advise(
        self,
        inputs: Mapping[str, Any],
        predictors: Sequence[tuple[str, Predictor]],
        module_names: list[str],
        trajectory: list[dict[str, Any]],
        outputs: Prediction,
        reward: float,
    ) -> dict[str, str]:
        call: dict[str, Any] = {
            "program_code": self.module_code,
            "modules_defn": describe_predictors(predictors),
            "program_inputs": _to_json(dict(inputs)),
            "program_trajectory": _to_json(trajectory),
            "program_outputs": _to_json(outputs.to_dict()),
            "reward_code": self.reward_fn_code,
            "target_threshold": self.threshold,
            "reward_value": reward,
            "module_names": module_names,
        }
        if self.feedback_lm is not None:
            call["lm"] = self.feedback_lm
        # Made per use, as DSPy does: not a parameter of this program (its saved state
        # holds only the refined module's predictors).
        advice = Predict(OfferFeedback)(**call).advice
        return {str(k): str(v) for k, v in dict(advice).items()}
