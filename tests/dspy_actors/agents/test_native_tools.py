"""Native function calling: the wire (OpenAI tools/tool_calls, Anthropic tool_use /
tool_result, streamed deltas), the adapter option, ToolCalls, and ReAct's option."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.lm.providers._tool_wire import parse_arguments
from dspy_actors.runtime.app import App
from dspy_actors.testing.sim_agent import AgentContext, AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest

MakeLM = Callable[..., dsa.LM]
MODELS = ["openai/sim-model", "anthropic/sim-model"]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny in {city}"


def calls_add(request: SimRequest) -> SimReply:
    return SimReply("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_come_back_whole_or_streamed(
    sim_lm: SimLM, make_lm: MakeLM, model: str, stream: bool
) -> None:
    sim_lm.respond_with(calls_add)
    lm = make_lm(model)
    messages = [{"role": "user", "content": "add 1 and 2"}]
    tools = [dsa.Tool(add).to_openai()]
    if stream:
        events = list(lm.stream(messages, tools=tools))
        response = events[-1].response
        assert response is not None
    else:
        response = lm.complete(messages, tools=tools)
    assert response.tool_calls == [[{"id": "c1", "name": "add", "args": {"a": 1, "b": 2}}]]
    assert response.finish_reasons == [
        "tool_use" if model.startswith("anthropic") else "tool_calls"
    ]
    sent = sim_lm.requests[-1].body["tools"][0]
    if model.startswith("anthropic"):
        assert sent["name"] == "add"
        assert sent["input_schema"]["required"] == ["a", "b"]
    else:
        assert sent["function"]["name"] == "add"


def test_anthropic_gets_tool_choice_and_tool_turns_in_its_format(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(lambda request: "done")
    lm = make_lm("anthropic/sim-model")
    messages = [
        {"role": "user", "content": "add"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]
    lm.complete(messages, tools=[dsa.Tool(add).to_openai()], tool_choice="required")
    body = sim_lm.requests[-1].body
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"][1]["content"][0] == {
        "type": "tool_use",
        "id": "c1",
        "name": "add",
        "input": {},
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "3"}],
    }


def test_tool_calls_survive_the_cache(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(calls_add)
    lm = make_lm(cache=True)
    messages = [{"role": "user", "content": "add, cached"}]
    first = lm.complete(messages, tools=[dsa.Tool(add).to_openai()])
    again = lm.complete(messages, tools=[dsa.Tool(add).to_openai()])
    assert again.cache_hit
    assert again.tool_calls == first.tool_calls
    assert sim_lm.request_count == 1


def test_arguments_that_are_not_a_json_object_are_kept_raw() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {}
    assert parse_arguments("{not json") == {"__raw__": "{not json"}
    assert parse_arguments("[1, 2]") == {"__raw__": "[1, 2]"}


def test_the_adapter_option_fills_a_tool_calls_output(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(calls_add)
    predict = dsa.Predict("question, tools: list[Tool] -> answer, calls: ToolCalls")
    with dsa.context(lm=make_lm(), adapter=ChatAdapter(use_native_function_calling=True)):
        pred = predict(question="what is 1 + 2?", tools=[dsa.Tool(add)])
    assert pred.answer is None  # the LM called a tool and wrote no text
    assert isinstance(pred.calls, dsa.ToolCalls)
    assert pred.calls.tool_calls[0].name == "add"
    assert pred.calls.execute([dsa.Tool(add)]) == [3]
    request = sim_lm.requests[-1]
    assert request.body["tools"][0]["function"]["name"] == "add"
    assert "tools" not in request.last_user_text  # the tools left the prompt


def test_the_adapter_option_keeps_text_answers(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(lambda request: "[[ ## answer ## ]]\n3\n\n[[ ## completed ## ]]")
    predict = dsa.Predict("question, tools: list[Tool] -> answer, calls: ToolCalls")
    with dsa.context(lm=make_lm(), adapter=ChatAdapter(use_native_function_calling=True)):
        pred = predict(question="1 + 2?", tools=[add])
    assert pred.answer == "3"
    assert pred.calls is None


def test_tool_calls_type() -> None:
    calls = dsa.ToolCalls.from_dict_list([{"name": "add", "args": {"a": 2, "b": 2}}])
    assert calls.format() == '{"tool_calls": [{"name": "add", "args": {"a": 2, "b": 2}}]}'
    assert calls.execute({"add": add}) == [4]
    assert dsa.ToolCalls.model_validate([{"name": "x"}]).tool_calls[0].args == {}
    with pytest.raises(dsa.ToolArgumentError, match="no such tool"):
        dsa.ToolCall(name="nope").execute([dsa.Tool(add)])


@pytest.mark.parametrize("model", MODELS)
def test_react_with_native_tool_calls(sim_lm: SimLM, make_lm: MakeLM, model: str) -> None:
    sim_lm.respond_with(
        react_responder(
            [
                AgentStep("weather", {"city": "{question}"}),
                AgentStep("teleport", {"to": "moon"}),
                AgentStep("weather", {"town": "x"}),
                AgentStep("finish"),
            ],
            answer=lambda ctx: {"answer": ctx.observations[0]},
        )
    )
    agent = dsa.ReAct("question -> answer", tools=[weather], native_tool_calls=True)
    with dsa.context(lm=make_lm(model)):
        pred = agent(question="Oslo")
    traj = pred.trajectory
    assert pred.answer == "sunny in Oslo"
    assert traj["tool_args_0"] == {"city": "Oslo"}
    assert "no tool named 'teleport'" in traj["observation_1"]  # native names are not checked
    assert "argument 'town' of tool 'weather'" in traj["observation_2"]
    assert traj["tool_name_3"] == "finish"
    offered = {t.get("name") or t["function"]["name"] for t in sim_lm.requests[0].body["tools"]}
    assert offered == {"weather", "finish"}


def test_a_step_without_a_tool_call_finishes(sim_lm: SimLM, make_lm: MakeLM) -> None:
    def respond(request: SimRequest) -> Any:
        if request.body.get("tools"):
            return "[[ ## next_thought ## ]]\nI know it.\n\n[[ ## completed ## ]]"
        return "[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"

    sim_lm.respond_with(respond)
    agent = dsa.ReAct("question -> answer", tools=[weather], native_tool_calls=True)
    with dsa.context(lm=make_lm()):
        pred = agent(question="q")
    assert pred.answer == "42"
    assert pred.trajectory["tool_name_0"] == "finish"


def test_served_native_agents_under_load(app: App, sim_lm: SimLM, gate: threading.Event) -> None:
    def stall(n: int) -> str:
        """Hangs."""
        gate.wait(10)
        return "late"

    def plan(ctx: AgentContext) -> AgentStep:
        n = int(ctx.inputs["question"])
        script = [
            AgentStep("weather", {"city": f"c{n}"}),
            AgentStep("stall", {"n": n}) if n % 3 == 0 else AgentStep("finish"),
        ]
        return script[ctx.step] if ctx.step < len(script) else AgentStep("finish")

    sim_lm.respond_with(react_responder(plan, answer=lambda ctx: {"answer": ctx.observations[0]}))
    agent = dsa.ReAct(
        "question -> answer",
        tools=[weather, dsa.Tool(stall, timeout=0.05)],
        native_tool_calls=True,
    )
    results = app.serve("agent", agent).batch([{"question": str(n)} for n in range(24)])
    assert [r.answer for r in results] == [f"sunny in c{n}" for n in range(24)]
    for n, pred in enumerate(results):
        if n % 3 == 0:
            assert "did not answer" in pred.trajectory["observation_1"]
    assert app.tools.stats()["stall"]["timeout"] == 8
