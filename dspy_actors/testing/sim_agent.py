"""SimLM playing an agent: deterministic answers to ReAct prompts.

A ReAct call sends two kinds of prompt: a *step* (asking for ``next_thought``,
``next_tool_name``, ``next_tool_args``) and, at the end, an *extract* (asking for the
signature's outputs given the trajectory). With ``native_tool_calls=True`` a step offers the
tools natively and is answered with a native tool call, in the provider's wire format.
:func:`react_responder` answers both. Which step an agent is on is read from the
trajectory in the prompt (the number of tool calls in it), not from a counter, so many
agents may run at once against one server and each gets the same script.

    sim.respond_with(react_responder(
        [AgentStep("search", {"query": "{question}"}), AgentStep("finish")],
        answer=lambda ctx: {"answer": ctx.observations[0]},
    ))

A step may also be a function of the :class:`AgentContext` (rules), or a
:class:`~dspy_actors.testing._faults.Fault` / raw completion text, to play an LM that fails
mid-trajectory, names a tool that does not exist or sends malformed arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspy_actors.testing._faults import Fault
from dspy_actors.testing.sim_lm import SimReply, SimRequest
from dspy_actors.testing.sim_responder import default_responder

__all__ = ["AgentContext", "AgentStep", "react_responder"]

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]\n?")


@dataclass(frozen=True, slots=True)
class AgentStep:
    """One scripted ReAct step. ``args`` values may name input fields as ``"{question}"``."""

    tool: str
    args: Mapping[str, Any] = field(default_factory=dict)
    thought: str = ""


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What the agent's prompt says: its inputs, and the trajectory so far."""

    inputs: Mapping[str, str]
    step: int  # how many tool calls the trajectory already has
    observations: Sequence[str]
    request: SimRequest


StepRule = AgentStep | Fault | str | Callable[[AgentContext], "AgentStep | Fault | str"]
Answer = Mapping[str, Any] | Callable[[AgentContext], "Mapping[str, Any] | Fault | str"]


def react_responder(
    steps: Sequence[StepRule] | Callable[[AgentContext], AgentStep | Fault | str],
    answer: Answer | None = None,
    default: Callable[[SimRequest], Any] | None = None,
) -> Callable[[SimRequest], Any]:
    """A SimLM responder playing a ReAct agent. ``steps`` is a script (the i-th entry
    answers the i-th step; past its end the agent calls ``finish``) or one rule for every
    step. ``answer`` gives the extract step's outputs (default: the last observation as
    every output, after a ``reasoning``). Other prompts go to ``default``."""
    fallback = default or default_responder

    def respond(request: SimRequest) -> Any:
        text = request.last_user_text
        sections = _sections(text)
        if "trajectory" not in sections:
            return fallback(request)
        ctx = AgentContext(
            inputs={k: v for k, v in sections.items() if k != "trajectory"},
            step=len(re.findall(r"\[\[ ## tool_name_\d+ ## \]\]", sections["trajectory"])),
            observations=_observations(sections["trajectory"]),
            request=request,
        )
        wanted = _requested(text)
        if request.body.get("tools"):  # native function calling: the step is a tool call
            return _native_step_reply(_pick(steps, ctx), ctx)
        if "next_tool_name" in wanted:
            return _step_reply(_pick(steps, ctx), ctx)
        return _extract_reply(answer, ctx, wanted)

    return respond


def _pick(steps: Any, ctx: AgentContext) -> AgentStep | Fault | str:
    if callable(steps) and not isinstance(steps, Fault):
        return steps(ctx)  # type: ignore[no-any-return]
    rule = steps[ctx.step] if ctx.step < len(steps) else AgentStep("finish")
    return rule(ctx) if callable(rule) and not isinstance(rule, Fault | AgentStep) else rule


def _step_reply(step: AgentStep | Fault | str, ctx: AgentContext) -> Any:
    if not isinstance(step, AgentStep):
        return step  # a fault or a raw completion, as given
    args = {k: _fill(v, ctx.inputs) for k, v in step.args.items()}
    thought = step.thought or f"Next I call {step.tool}."
    return (
        f"[[ ## next_thought ## ]]\n{thought}\n\n"
        f"[[ ## next_tool_name ## ]]\n{step.tool}\n\n"
        f"[[ ## next_tool_args ## ]]\n{json.dumps(args)}\n\n"
        "[[ ## completed ## ]]"
    )


def _native_step_reply(step: AgentStep | Fault | str, ctx: AgentContext) -> Any:
    if not isinstance(step, AgentStep):
        return step
    args = {k: _fill(v, ctx.inputs) for k, v in step.args.items()}
    thought = step.thought or f"Next I call {step.tool}."
    return SimReply(
        f"[[ ## next_thought ## ]]\n{thought}\n\n[[ ## completed ## ]]",
        tool_calls=[{"name": step.tool, "args": args}],
    )


def _extract_reply(answer: Answer | None, ctx: AgentContext, wanted: list[str]) -> Any:
    if callable(answer):
        values = answer(ctx)
        if isinstance(values, Fault | str):
            return values
    elif answer is not None:
        values = answer
    else:
        found = [o for o in ctx.observations if o != "Completed."]  # not finish's own
        last = found[-1] if found else ""
        values = {name: last for name in wanted if name != "reasoning"}
    values = {"reasoning": "From the trajectory.", **values}
    parts = [
        f"[[ ## {name} ## ]]\n{_text(values.get(name, ''))}" for name in wanted if name in values
    ]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def _fill(value: Any, inputs: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for name, text in inputs.items():
            value = value.replace("{" + name + "}", text)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sections(text: str) -> dict[str, str]:
    """The prompt's input sections; ``trajectory`` (the last input, whose own entries are
    marked the same way) runs to the closing instruction."""
    body = text.split("\n\nRespond with", 1)[0]
    head, marker, trajectory = body.partition("[[ ## trajectory ## ]]")
    out: dict[str, str] = {}
    matches = list(_MARKER.finditer(head))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(head)
        out.setdefault(m.group(1), head[m.end() : end].strip())
    if marker:
        out["trajectory"] = trajectory.strip()
    return out


def _observations(trajectory: str) -> list[str]:
    found: list[str] = []
    pattern = re.compile(r"\[\[ ## observation_\d+ ## \]\]\n(.*?)(?=\n\n\[\[ ## |\Z)", re.S)
    for m in pattern.finditer(trajectory):
        found.append(m.group(1).strip())
    return found


def _requested(text: str) -> list[str]:
    """The output fields the closing instruction asks for, in order."""
    tail = text[text.rfind("Respond with") :]
    return [n for n in re.findall(r"\[\[ ## (\w+) ## \]\]", tail) if n != "completed"]
