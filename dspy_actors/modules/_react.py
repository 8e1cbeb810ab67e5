"""``ReAct``: an agent that reasons, calls tools and observes, then extracts the answer.

DSPy's semantics: each iteration asks the ``react`` predictor for ``next_thought``,
``next_tool_name`` (one of the tools, or ``finish``) and ``next_tool_args`` (a JSON object)
given the inputs and the trajectory so far; runs the tool and appends ``thought_i``,
``tool_name_i``, ``tool_args_i`` and ``observation_i`` to the trajectory; stops at
``finish``, after ``max_iters``, or when the LM's step cannot be parsed (an unknown tool
name, say). Then the ``extract`` chain of thought produces the signature's outputs from
the trajectory. When a prompt overflows the context window, the oldest tool call is cut
from the trajectory and the step tried again (at most three times).

Tool calls run under a :class:`~dspy_actors.modules.tool_runner.ToolRunner`: per-tool
timeout and concurrency limit, and a failure, timeout or bad arguments become the
observation. Served (``app.serve("agent", ReAct(...))``), the app's runner is used: its
tool calls are events and a tool that keeps failing on the same arguments is quarantined
to the dead letters.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal

from dspy_actors import _settings as settings
from dspy_actors.adapters.base import Adapter
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.lm.errors import ContextWindowExceeded
from dspy_actors.modules._chain_of_thought import ChainOfThought
from dspy_actors.modules._predict import Predict
from dspy_actors.modules.tool_runner import ToolOutcome, ToolRunner
from dspy_actors.primitives.module import Module
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.custom_types._tool import Tool, ToolCalls
from dspy_actors.signatures.field import InputField, OutputField
from dspy_actors.signatures.signature import Signature, ensure_signature, make_signature

__all__ = ["ReAct", "TrajectoryTooLong"]

_log = logging.getLogger(__name__)
_TRUNCATION_ATTEMPTS = 3
# A ReAct instance not served by an app shares this runner (made on first use).
_local_runner: ToolRunner | None = None
_local_runner_lock = threading.Lock()


class TrajectoryTooLong(ValueError):
    """The prompt overflowed the context window and the trajectory cannot be cut further."""


class ReAct(Module):
    """``ReAct("question -> answer", tools=[search, lookup], max_iters=10)``.

    ``tools`` are functions (sync or async) or :class:`Tool` objects; a ``finish`` tool is
    added. The result is the signature's outputs plus ``trajectory`` (the dict of every
    thought, tool name, tool arguments and observation). ``max_iters`` may also be given
    per call. ``runner`` sets the tool runner (else the serving app's, else a shared
    in-process one). ``native_tool_calls=True`` offers the tools through the provider's
    function calling (OpenAI ``tools``, Anthropic ``tool_use``) instead of the
    ``next_tool_name`` / ``next_tool_args`` text fields; the trajectory is the same, and a
    step on which the LM calls no tool finishes.
    """

    def __init__(
        self,
        signature: str | type[Signature],
        tools: Iterable[Callable[..., Any] | Tool],
        max_iters: int = 20,
        *,
        runner: ToolRunner | None = None,
        native_tool_calls: bool = False,
    ) -> None:
        self.signature: type[Signature] = ensure_signature(signature)
        self.max_iters = max_iters
        self.runner = runner
        self.native_tool_calls = native_tool_calls
        by_name: dict[str, Tool] = {}
        for item in tools:
            tool = item if isinstance(item, Tool) else Tool(item)
            if tool.name in by_name or tool.name == "finish":
                raise ValueError(
                    f"ReAct: two tools are named {tool.name!r} ('finish' is reserved); give "
                    "one a different name with Tool(func, name=...)"
                )
            by_name[tool.name] = tool
        outputs = ", ".join(f"`{k}`" for k in self.signature.output_fields)
        by_name["finish"] = Tool(
            _finish,
            name="finish",
            desc=(
                "Marks the task as complete. That is, signals that all information for "
                f"producing the outputs, i.e. {outputs}, are now available to be extracted."
            ),
        )
        self.tools: dict[str, Tool] = by_name
        self.react = Predict(self._react_signature())
        extract_fields = {
            **{n: (f.annotation, f) for n, f in self.signature.input_fields.items()},
            **{n: (f.annotation, f) for n, f in self.signature.output_fields.items()},
        }
        self.extract = ChainOfThought(
            make_signature(extract_fields, self.signature.instructions).append(
                "trajectory", InputField(), str
            )
        )

    def _react_signature(self) -> type[Signature]:
        sig = self.signature
        inputs = ", ".join(f"`{k}`" for k in sig.input_fields)
        outputs = ", ".join(f"`{k}`" for k in sig.output_fields)
        lines = [f"{sig.instructions}\n"] if sig.instructions else []
        lines += [
            f"You are an Agent. In each episode, you will be given the fields {inputs} as "
            "input. And you can see your past trajectory so far.",
            "Your goal is to use one or more of the supplied tools to collect any necessary "
            f"information for producing {outputs}.\n",
            "To do this, you will interleave next_thought, next_tool_name, and next_tool_args "
            "in each turn, and also when finishing the task.",
            "After each tool call, you receive a resulting observation, which gets appended "
            "to your trajectory.\n",
            "When writing next_thought, you may reason about the current situation and plan "
            "for future steps.",
        ]
        fields: dict[str, tuple[Any, Any]] = {
            n: (f.annotation, f) for n, f in sig.input_fields.items()
        }
        fields["trajectory"] = (str, InputField())
        if self.native_tool_calls:
            # The tools go in the provider's own field, so the prompt does not list them.
            lines.append("Call exactly one of the tools you are given in each turn.")
            fields["tools"] = (list[Tool], InputField())
            fields["next_thought"] = (str, OutputField())
            fields["next_tool_calls"] = (ToolCalls, OutputField())
            return make_signature(fields, "\n".join(lines))
        lines.append(
            "When selecting the next_tool_name and its next_tool_args, the tool must be one of:\n"
        )
        lines += [f"({i}) {tool}" for i, tool in enumerate(self.tools.values(), 1)]
        lines.append(
            "When providing `next_tool_args`, the value inside the field must be in JSON format"
        )
        names = tuple(self.tools)
        fields["next_thought"] = (str, OutputField())
        fields["next_tool_name"] = (Literal[names], OutputField())
        fields["next_tool_args"] = (dict[str, Any], OutputField())
        return make_signature(fields, "\n".join(lines))

    # -- running ------------------------------------------------------------------------
    def forward(self, **input_args: Any) -> Prediction:
        max_iters = input_args.pop("max_iters", self.max_iters)
        runner = self.runner or settings.get("tool_runner") or _shared_runner()
        trajectory: dict[str, Any] = {}
        for idx in range(max_iters):
            try:
                name, args, thought = self._next_step(trajectory, input_args)
            except ValueError as err:
                # DSPy: an unparseable step (e.g. an unknown tool) ends the trajectory.
                _log.warning("Ending the trajectory: the agent's step was invalid: %s", err)
                break
            trajectory[f"thought_{idx}"] = thought
            trajectory[f"tool_name_{idx}"] = name
            trajectory[f"tool_args_{idx}"] = args
            trajectory[f"observation_{idx}"] = self._observe(runner, name, args)
            if name == "finish":
                break
        extract = self._with_truncation(self.extract, trajectory, input_args)
        return Prediction(trajectory=trajectory, **dict(extract.items()))

    def _next_step(
        self, trajectory: dict[str, Any], input_args: dict[str, Any]
    ) -> tuple[str, Any, str]:
        """The LM's next (tool name, tool args, thought)."""
        if not self.native_tool_calls:
            step = self._with_truncation(self.react, trajectory, input_args)
            return step.next_tool_name, step.next_tool_args, step.next_thought
        tools = list(self.tools.values())
        with settings.context(adapter=_native_adapter()):
            step = self._with_truncation(self.react, trajectory, {**input_args, "tools": tools})
        calls = step.next_tool_calls
        if calls is None or not calls.tool_calls:  # no tool called: the LM is done
            return "finish", {}, step.next_thought or ""
        first = calls.tool_calls[0]
        return first.name, first.args, step.next_thought or ""

    def _observe(self, runner: ToolRunner, name: str, args: Any) -> Any:
        tool = self.tools.get(name)
        if tool is None:  # the text parser admits only known names; native calls may not
            return f"Execution error in {name}: no tool named {name!r} (have {list(self.tools)})"
        if isinstance(args, dict) and "__raw__" in args:
            return (
                f"Execution error in {name}: the arguments are not a JSON object: "
                f"{str(args['__raw__'])[:200]}"
            )
        outcome: ToolOutcome = runner.run(tool, args if isinstance(args, dict) else {})
        return outcome.observation

    def _with_truncation(
        self, module: Any, trajectory: dict[str, Any], input_args: dict[str, Any]
    ) -> Any:
        for _ in range(_TRUNCATION_ATTEMPTS):
            try:
                return module(**input_args, trajectory=self.format_trajectory(trajectory))
            except ContextWindowExceeded:
                _log.warning(
                    "The trajectory overflowed the context window: cutting its oldest step"
                )
                truncate_trajectory(trajectory)
        raise TrajectoryTooLong(
            f"the context window was still exceeded after cutting the trajectory "
            f"{_TRUNCATION_ATTEMPTS} times"
        )

    @staticmethod
    def format_trajectory(trajectory: dict[str, Any]) -> str:
        """The trajectory as the prompt shows it: each entry under its field marker."""
        if not trajectory:
            return ""
        adapter: Adapter = settings.get("adapter") or ChatAdapter()
        sig = make_signature(
            {k: (Any, InputField()) for k in trajectory} | {"x": (str, OutputField())}
        )
        content = adapter.format_inputs(sig, trajectory)
        return content if isinstance(content, str) else str(content)


def truncate_trajectory(trajectory: dict[str, Any]) -> None:
    """Cut the oldest tool call (its thought, name, args and observation) in place."""
    keys = list(trajectory)
    if len(keys) < 4:
        raise TrajectoryTooLong(
            "the prompt exceeded the context window, and the trajectory cannot be cut "
            "because it has only one tool call"
        )
    for key in keys[:4]:
        del trajectory[key]


def _native_adapter() -> Adapter:
    """The adapter in force, with native function calling on."""
    current: Adapter = settings.get("adapter") or ChatAdapter()
    if current.use_native_function_calling:
        return current
    native = copy.copy(current)
    native.use_native_function_calling = True
    return native


def _finish() -> str:
    return "Completed."


def _shared_runner() -> ToolRunner:
    global _local_runner
    with _local_runner_lock:
        if _local_runner is None:
            _local_runner = ToolRunner()
        return _local_runner
