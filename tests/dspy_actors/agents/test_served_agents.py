"""ReAct served by an app: a subtree serving many calls at once, tools supervised by the
app's runner (events, timeouts, quarantine to dead letters), every call answered."""

from __future__ import annotations

import re
import threading
from typing import Any

import dspy_actors as dsa
from dspy_actors.lm.errors import LMError
from dspy_actors.runtime._events import DeadLetterEvent, Event
from dspy_actors.runtime._tools import ToolEnd, ToolStart
from dspy_actors.runtime.app import App
from dspy_actors.testing._faults import Fault
from dspy_actors.testing.sim_agent import AgentContext, AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM
from tests.dspy_actors.agents.conftest import WAIT


def record(app: App, pattern: str) -> list[Event]:
    seen: list[Event] = []
    lock = threading.Lock()

    def add(event: Event) -> None:
        with lock:
            seen.append(event)

    app.subscribe(pattern, add)
    return seen


def test_many_served_agent_calls_with_every_tool_fault(
    app: App, sim_lm: SimLM, gate: threading.Event
) -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    def explode(n: int) -> int:
        """Always fails."""
        raise RuntimeError(f"broken on {n}")

    def stall(n: int) -> str:
        """Never answers (until the test ends)."""
        gate.wait(WAIT)
        return "late"

    def plan(ctx: AgentContext) -> AgentStep:
        n = int(ctx.inputs["question"])
        script = [
            AgentStep("lookup", {"key": f"k{n}"}),
            AgentStep("explode", {"n": n}),  # distinct args: no quarantine here
            AgentStep("stall", {"n": n}) if n % 4 == 0 else AgentStep("lookup", {"wrong": 1}),
            AgentStep("no_such_tool") if n % 5 == 0 else AgentStep("finish"),
        ]
        return script[ctx.step] if ctx.step < len(script) else AgentStep("finish")

    sim_lm.respond_with(react_responder(plan, answer=lambda ctx: {"answer": ctx.observations[0]}))
    events = record(app, "tool.*")
    agent = dsa.ReAct("question -> answer", tools=[lookup, explode, dsa.Tool(stall, timeout=0.05)])
    handle = app.serve("agent", agent)
    results = list(handle.batch([{"question": str(n)} for n in range(40)]))
    assert [r.answer for r in results] == [f"value of k{n}" for n in range(40)]
    for n, pred in enumerate(results):
        traj = pred.trajectory
        assert traj["observation_1"] == f"Execution error in explode: RuntimeError: broken on {n}"
        assert ("did not answer" if n % 4 == 0 else "argument 'wrong'") in traj["observation_2"]
        assert ("tool_name_3" in traj) == (n % 5 != 0)
    stats = app.tools.stats()
    assert stats["lookup"]["ok"] == 40
    assert stats["explode"]["error"] == 40
    assert stats["stall"]["timeout"] == 10
    assert app.events.flush(WAIT)
    starts = [e for e in events if isinstance(e, ToolStart)]
    ends = [e for e in events if isinstance(e, ToolEnd)]
    assert len(starts) == len(ends) == sum(len(r.trajectory) // 4 for r in results)
    assert {e.outcome for e in ends} == {"ok", "error", "timeout", "bad_arguments"}
    assert all(e.trace_id for e in ends)


def test_a_tool_crashing_on_the_same_arguments_is_quarantined_to_dead_letters(
    app: App, sim_lm: SimLM
) -> None:
    def charge(account: str) -> str:
        """Charge an account."""
        raise ConnectionError(f"bank refused {account}")

    sim_lm.respond_with(react_responder([AgentStep("charge", {"account": "acme"})]))
    letters = record(app, "dead_letter")
    handle = app.serve("agent", dsa.ReAct("question -> answer", tools=[charge]))
    observations = [handle.call(question="pay").trajectory["observation_0"] for _ in range(5)]
    assert observations[:3] == ["Execution error in charge: ConnectionError: bank refused acme"] * 3
    assert all("quarantined after 3 failures" in o for o in observations[3:])
    stored = app.dead_letters("tool:charge")
    assert len(stored) == 1
    assert stored[0].inputs == {"account": "acme"}
    assert stored[0].exception_type.endswith("ConnectionError")
    assert app.events.flush(WAIT)
    assert [e.dead_letter_id for e in letters if isinstance(e, DeadLetterEvent)] == [stored[0].id]
    assert app.replay_dead_letter(stored[0].id) is None  # released: the tool runs again
    again = handle.call(question="pay").trajectory["observation_0"]
    assert again == "Execution error in charge: ConnectionError: bank refused acme"
    assert app.dead_letters("tool:charge") == []


def test_a_provider_outage_mid_trajectory_answers_with_an_error(app: App, sim_lm: SimLM) -> None:
    def lookup(key: str) -> str:
        return key

    sim_lm.respond_with(react_responder([AgentStep("lookup", {"key": "k"}), Fault.server_error()]))
    handle = app.serve("agent", dsa.ReAct("question -> answer", tools=[lookup]))
    outcomes = handle.batch([{"question": str(n)} for n in range(16)], return_exceptions=True)
    assert len(outcomes) == 16
    assert all(isinstance(o, LMError) for o in outcomes), outcomes[:3]


def test_the_served_runner_is_used_unless_the_agent_has_its_own(app: App, sim_lm: SimLM) -> None:
    def lookup(key: str) -> str:
        return key

    sim_lm.respond_with(react_responder([AgentStep("lookup", {"key": "k"})]))
    own = dsa.ToolRunner()
    app.serve("mine", dsa.ReAct("question -> answer", tools=[lookup], runner=own))
    app.serve("theirs", dsa.ReAct("question -> answer", tools=[lookup]))
    assert app.handle("mine").call(question="q").answer == "k"
    assert app.handle("theirs").call(question="q").answer == "k"
    assert own.stats()["lookup"]["ok"] == 1
    assert app.tools.stats()["lookup"]["ok"] == 1


def test_served_context_window_overflow_truncates(app: App, sim_lm: SimLM) -> None:
    def lookup(key: str) -> str:
        return key

    steps = react_responder([AgentStep("lookup", {"key": f"k{i}"}) for i in range(3)])

    def respond(request: Any) -> Any:
        text = request.last_user_text
        if "[[ ## tool_name_0 ## ]]" in text and "[[ ## tool_name_1 ## ]]" in text:
            return Fault.context_window()
        return steps(request)

    sim_lm.respond_with(respond)
    handle = app.serve("agent", dsa.ReAct("question -> answer", tools=[lookup], max_iters=3))
    traj = handle.call(question="q").trajectory
    assert "thought_0" not in traj
    assert "observation_2" in traj


def test_a_served_tool_call_ends_by_the_calls_deadline(gate: threading.Event) -> None:
    from dspy_actors.runtime._context import capture, restored
    from dspy_actors.runtime._tools import served_tool_runner

    def stall() -> str:
        gate.wait(WAIT)
        return "late"

    runner = served_tool_runner(lambda event: None, lambda: False, lambda: None)
    tool = dsa.Tool(stall, timeout=WAIT * 100)
    with restored(capture(timeout=0.05)):
        outcome = runner.run(tool, {})
    assert outcome.outcome == "timeout"
    # bounded by the call's remaining 0.05 s, not the tool's own timeout
    assert re.search(r"did not answer within 0(\.0\d*)?s", outcome.observation)
    gate.set()
    assert runner.join(WAIT)
