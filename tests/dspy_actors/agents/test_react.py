"""ReAct in-process: DSPy's trajectory semantics, and each fault an agent meets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import dspy_actors as dsa
from dspy_actors.lm.errors import LMError
from dspy_actors.modules._react import TrajectoryTooLong, truncate_trajectory
from dspy_actors.testing._faults import Fault
from dspy_actors.testing.sim_agent import AgentContext, AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM, SimRequest
from tests.dspy_actors.agents.conftest import WAIT

MakeLM = Callable[..., dsa.LM]


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def population(city: str) -> int:
    """How many people live in a city."""
    return {"Oslo": 700_000}.get(city, 1)


def test_trajectory_finish_and_extract(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        react_responder(
            [
                AgentStep("weather", {"city": "{question}"}, thought="Check the weather."),
                AgentStep("population", {"city": "{question}"}),
                AgentStep("finish"),
            ],
            answer=lambda ctx: {"answer": f"{ctx.observations[0]}, {ctx.observations[1]}"},
        )
    )
    agent = dsa.ReAct("question -> answer", tools=[weather, population])
    with dsa.context(lm=make_lm()):
        pred = agent(question="Oslo")
    assert pred.answer == "sunny in Oslo, 700000"
    assert pred.trajectory == {
        "thought_0": "Check the weather.",
        "tool_name_0": "weather",
        "tool_args_0": {"city": "Oslo"},
        "observation_0": "sunny in Oslo",
        "thought_1": "Next I call population.",
        "tool_name_1": "population",
        "tool_args_1": {"city": "Oslo"},
        "observation_1": 700_000,
        "thought_2": "Next I call finish.",
        "tool_name_2": "finish",
        "tool_args_2": {},
        "observation_2": "Completed.",
    }
    assert sim_lm.request_count == 4  # three steps and the extract
    first = sim_lm.requests[0].messages[0]["content"]
    assert "(1) weather, whose description is <desc>The weather in a city.</desc>" in first
    assert "(3) finish, whose description is <desc>Marks the task as complete." in first
    assert "[[ ## observation_0 ## ]]\nsunny in Oslo" in sim_lm.requests[1].last_user_text


def test_max_iters_bounds_the_loop_and_can_be_given_per_call(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(react_responder(lambda ctx: AgentStep("weather", {"city": "x"})))
    agent = dsa.ReAct("question -> answer", tools=[weather], max_iters=3)
    with dsa.context(lm=make_lm()):
        assert len(agent(question="q").trajectory) == 12
        assert len(agent(question="q", max_iters=1).trajectory) == 4


def test_an_unknown_tool_name_ends_the_trajectory(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        react_responder([AgentStep("weather", {"city": "Rome"}), AgentStep("teleport")])
    )
    agent = dsa.ReAct("question -> answer", tools=[weather])
    with dsa.context(lm=make_lm()):
        pred = agent(question="q")
    assert pred.trajectory["observation_0"] == "sunny in Rome"
    assert "tool_name_1" not in pred.trajectory  # DSPy: an invalid step ends the loop
    assert pred.answer == "sunny in Rome"


def test_malformed_or_wrong_arguments_become_observations(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        react_responder(
            [
                AgentStep("weather", {"town": "Rome"}),
                AgentStep("population", {"city": ["not", "a", "string"]}),
                AgentStep("finish"),
            ]
        )
    )
    agent = dsa.ReAct("question -> answer", tools=[weather, population])
    with dsa.context(lm=make_lm()):
        traj = agent(question="q").trajectory
    assert traj["observation_0"].startswith("Execution error in weather: ToolArgumentError:")
    assert "argument 'town' of tool 'weather'" in traj["observation_0"]
    assert "argument 'city' of tool 'population'" in traj["observation_1"]


def test_a_crashing_and_a_hanging_tool_do_not_stop_the_agent(
    sim_lm: SimLM, make_lm: MakeLM, gate: threading.Event
) -> None:
    def explode(n: int) -> int:
        raise RuntimeError(f"tool broke on {n}")

    def stall() -> str:
        gate.wait(WAIT)
        return "late"

    runner = dsa.ToolRunner(quarantine_after=100)
    sim_lm.respond_with(
        react_responder([AgentStep("explode", {"n": 7}), AgentStep("stall"), AgentStep("finish")])
    )
    agent = dsa.ReAct(
        "question -> answer", tools=[explode, dsa.Tool(stall, timeout=0.05)], runner=runner
    )
    with dsa.context(lm=make_lm()):
        traj = agent(question="q").trajectory
    assert traj["observation_0"] == "Execution error in explode: RuntimeError: tool broke on 7"
    assert "did not answer within 0.05s" in traj["observation_1"]
    assert traj["tool_name_2"] == "finish"
    gate.set()
    assert runner.join(WAIT)


def test_a_provider_outage_mid_trajectory_is_a_clear_error(sim_lm: SimLM, make_lm: MakeLM) -> None:
    sim_lm.respond_with(
        react_responder([AgentStep("weather", {"city": "x"}), Fault.server_error(503)])
    )
    agent = dsa.ReAct("question -> answer", tools=[weather])
    with dsa.context(lm=make_lm()), pytest.raises(LMError, match="503"):
        agent(question="q")


def test_context_window_overflow_cuts_the_oldest_tool_call(sim_lm: SimLM, make_lm: MakeLM) -> None:
    def overflow_with_three_calls(request: SimRequest) -> Any:
        text = request.last_user_text
        if "[[ ## tool_name_0 ## ]]" in text and "[[ ## tool_name_2 ## ]]" in text:
            return Fault.context_window()
        return steps(request)

    steps = react_responder([AgentStep("weather", {"city": f"c{i}"}) for i in range(4)])
    sim_lm.respond_with(overflow_with_three_calls)
    agent = dsa.ReAct("question -> answer", tools=[weather], max_iters=5)
    with dsa.context(lm=make_lm()):
        traj = agent(question="q").trajectory
    assert next(iter(traj)) == "thought_1"  # step 0 was cut; the agent went on to max_iters
    assert "observation_4" in traj
    assert len(traj) == 16


def test_truncation_needs_more_than_one_tool_call() -> None:
    traj: dict[str, Any] = {"thought_0": "t", "tool_name_0": "x", "tool_args_0": {}}
    with pytest.raises(TrajectoryTooLong, match="only one tool call"):
        truncate_trajectory(traj)


def test_async_tools_in_an_agent(sim_lm: SimLM, make_lm: MakeLM) -> None:
    async def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    sim_lm.respond_with(react_responder([AgentStep("lookup", {"key": "k"})]))
    agent = dsa.ReAct("question -> answer", tools=[lookup])
    with dsa.context(lm=make_lm()):
        assert agent(question="q").answer == "value of k"


def test_tool_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="'weather'"):
        dsa.ReAct("q -> a", tools=[weather, weather])
    with pytest.raises(ValueError, match="reserved"):
        dsa.ReAct("q -> a", tools=[dsa.Tool(weather, name="finish")])


def test_many_concurrent_agents_each_get_their_own_answer(
    sim_lm: SimLM, make_lm: MakeLM, gate: threading.Event
) -> None:
    """Crashes, hangs, bad arguments and unknown tools, mixed across 32 agents at once."""

    def flaky(n: int) -> int:
        if n % 2:
            raise ValueError(f"odd {n}")
        return n

    def stall() -> str:
        gate.wait(WAIT)
        return "late"

    def plan(ctx: AgentContext) -> AgentStep:
        n = int(ctx.inputs["question"])
        script = [
            AgentStep("flaky", {"n": n}),
            AgentStep("stall") if n % 4 == 0 else AgentStep("flaky", {"m": n}),
            AgentStep("nope") if n % 3 == 0 else AgentStep("finish"),
        ]
        return script[ctx.step] if ctx.step < len(script) else AgentStep("finish")

    sim_lm.respond_with(react_responder(plan))
    runner = dsa.ToolRunner(quarantine_after=1000)
    agent = dsa.ReAct(
        "question -> answer",
        tools=[flaky, dsa.Tool(stall, timeout=0.05)],
        runner=runner,
    )
    lm = make_lm()

    def one(n: int) -> Any:
        with dsa.context(lm=lm):
            return agent(question=str(n)).trajectory

    with ThreadPoolExecutor(16) as pool:
        trajectories = list(pool.map(one, range(32), timeout=60))
    for n, traj in enumerate(trajectories):
        first = traj["observation_0"]
        assert first == (n if n % 2 == 0 else f"Execution error in flaky: ValueError: odd {n}")
        second = traj["observation_1"]
        assert ("did not answer" if n % 4 == 0 else "argument 'm' of tool 'flaky'") in second
        assert ("tool_name_2" in traj) == (n % 3 != 0)
    gate.set()
    assert runner.join(WAIT)


def test_a_provider_outage_under_many_agents_answers_each_with_an_error(
    sim_lm: SimLM, make_lm: MakeLM
) -> None:
    sim_lm.respond_with(
        react_responder([AgentStep("weather", {"city": "x"}), Fault.server_error(502)])
    )
    agent = dsa.ReAct("question -> answer", tools=[weather])
    lm = make_lm()

    def one(n: int) -> BaseException | None:
        try:
            with dsa.context(lm=lm):
                agent(question=str(n))
        except LMError as exc:
            return exc
        return None

    with ThreadPoolExecutor(16) as pool:
        errors = list(pool.map(one, range(32), timeout=60))
    assert all(isinstance(e, LMError) and "502" in str(e) for e in errors)
