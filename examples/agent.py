"""A served ReAct agent with two tools, one of which hangs: the agent goes on regardless.

Run it:  .venv/bin/python examples/agent.py

A SimLM (a real HTTP server on loopback) plays the LM: for each question the agent looks
up a city's weather, then asks a "traffic" service that never answers, then finishes.
The app serves the agent as a subtree and runs its tool calls under supervision: the
traffic tool is abandoned after its 0.2 s timeout (the agent sees the timeout as its
observation and goes on), the abandoned calls are counted (and hold their concurrency
slot until they end, so later calls see "busy"), and every tool call is an event.
24 questions are asked 8 at a time; every one gets its answer.
"""

from __future__ import annotations

import tempfile
import threading
from collections import Counter
from typing import Any

import dspy_actors as dsa
from dspy_actors.testing.sim_agent import AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM

QUESTIONS = 24
# Set when the example ends, so the hung tool's threads finish before the process exits.
_shutdown = threading.Event()


def weather(city: str) -> str:
    """Today's weather in a city.

    Args:
        city: the city's name
    """
    return f"sunny and 21C in {city}"


def traffic(city: str) -> str:
    """Current traffic in a city (this service hangs)."""
    _shutdown.wait(60)
    return "jammed"


def main() -> dict[str, Any]:
    script = react_responder(
        [
            AgentStep("weather", {"city": "{question}"}, thought="First the weather."),
            AgentStep("traffic", {"city": "{question}"}, thought="Then the traffic."),
            AgentStep("finish", thought="I have what I can get."),
        ],
        answer=lambda ctx: {"answer": ctx.observations[0]},
    )
    with SimLM() as sim, tempfile.TemporaryDirectory() as data_dir:
        sim.respond_with(script)
        lm = dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False)
        app = dsa.start(lm=lm, data_dir=data_dir)
        outcomes: Counter[str] = Counter()
        app.subscribe("tool.end", lambda event: outcomes.update([f"{event.tool}:{event.outcome}"]))
        try:
            agent = dsa.ReAct(
                "question -> answer",
                tools=[weather, dsa.Tool(traffic, timeout=0.2)],
                max_iters=5,
            )
            handle = app.serve("agent", agent)
            cities = [f"City{i}" for i in range(QUESTIONS)]
            results = handle.batch([{"question": c} for c in cities], concurrency=8)
            stats = app.tools.stats()
            app.events.flush(5.0)
        finally:
            _shutdown.set()
            app.stop()
            lm.close()
    answered = sum(r.answer == weather(c) for r, c in zip(results, cities, strict=True))
    summary = {
        "answered": answered,
        "questions": QUESTIONS,
        "traffic_timeouts": stats["traffic"].get("timeout", 0),
        # Abandoned calls keep their concurrency slot until they end: once all are taken,
        # a later call waits its timeout for one and sees "busy", never an unbounded pile.
        "traffic_busy": stats["traffic"].get("busy", 0),
        "traffic_abandoned_still_running": stats["traffic"]["running"],
        "tool_events": dict(sorted(outcomes.items())),
        "sample_observation": results[0].trajectory["observation_1"],
    }
    return summary


if __name__ == "__main__":
    result = main()
    for key, value in result.items():
        print(f"{key}: {value}")
    if result["answered"] != result["questions"]:
        raise SystemExit("some questions were not answered")
