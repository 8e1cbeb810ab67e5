"""Benchmarks of agents (issue 13): what supervision costs an agent.

    .venv/bin/python bench/bench_agents.py [--agents 32] [--latency 0.02] [--rounds 3]

(1) one tool call, one thread, us/call: the tool called directly; through a ToolRunner
    (its own thread, timeout, concurrency slot, failure accounting).
(2) ReAct throughput, agents/s, ``--agents`` agents at once, each a 3-step trajectory
    (two tool calls, finish, extract: 4 LM calls) against a SimLM with ``--latency``
    seconds per request: in-process (threads calling one ReAct) and served
    (``app.serve`` + ``handle.batch``), in the same run, rounds interleaved, medians
    reported with the served/in-process ratio. The ideal is ``agents / (4 * latency)``.

Writes bench/results/agents.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, median, write_results

import dspy_actors as dsa
from dspy_actors.testing.sim_agent import AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM


def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


def tool_call_us(calls: int) -> dict[str, float]:
    tool = dsa.Tool(lookup)
    runner = dsa.ToolRunner()
    t0 = time.perf_counter()
    for i in range(calls):
        tool(key=str(i))
    direct = (time.perf_counter() - t0) / calls * 1e6
    t0 = time.perf_counter()
    for i in range(calls):
        runner.run(tool, {"key": str(i)})
    supervised = (time.perf_counter() - t0) / calls * 1e6
    runner.join(10.0)
    return {"direct_us": direct, "supervised_us": supervised}


def react_round(sim: SimLM, agents: int, served_first: bool) -> dict[str, float]:
    lm = dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False)
    agent = dsa.ReAct("question -> answer", tools=[lookup], max_iters=5)
    questions = [{"question": f"q{i}"} for i in range(agents)]

    def one(inputs: dict[str, Any]) -> Any:
        with dsa.context(lm=lm):
            return agent(**inputs)

    def in_process() -> float:
        with ThreadPoolExecutor(agents) as pool:
            list(pool.map(one, questions[:2], timeout=600))  # warm the connections
            t0 = time.perf_counter()
            list(pool.map(one, questions, timeout=600))
            return agents / (time.perf_counter() - t0)

    def served() -> float:
        with tempfile.TemporaryDirectory() as data:
            app = dsa.start(lm=lm, data_dir=data, lm_max_in_flight=agents)
            try:
                handle = app.serve("agent", agent)
                handle.batch(questions[:2])  # warm the subtree
                t0 = time.perf_counter()
                handle.batch(questions, concurrency=agents)
                return agents / (time.perf_counter() - t0)
            finally:
                app.stop()

    if served_first:
        result = {"served_per_s": served(), "in_process_per_s": in_process()}
    else:
        result = {"in_process_per_s": in_process(), "served_per_s": served()}
    lm.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    calls = tool_call_us(2000)
    script = [AgentStep("lookup", {"key": "{question}"}), AgentStep("lookup", {"key": "b"})]
    rounds = []
    with SimLM(latency=args.latency) as sim:
        sim.respond_with(react_responder(script))
        for i in range(args.rounds):  # which peer goes first alternates
            rounds.append(react_round(sim, args.agents, served_first=i % 2 == 1))
    ideal = args.agents / (4 * args.latency)
    in_process = median(r["in_process_per_s"] for r in rounds)
    served = median(r["served_per_s"] for r in rounds)
    results = {
        "tool_call": calls,
        "react": {
            "agents": args.agents,
            "latency_s": args.latency,
            "ideal_per_s": ideal,
            "in_process_per_s": in_process,
            "served_per_s": served,
            "served_over_in_process": served / in_process,
            "rounds": rounds,
        },
        "machine": machine_info(),
    }
    write_results("agents", results)
    direct, supervised = calls["direct_us"], calls["supervised_us"]
    print(f"tool call: direct {direct:.1f} us, supervised {supervised:.1f} us")
    print(
        f"ReAct, {args.agents} agents at once, {args.latency * 1e3:.0f} ms/LM call: in-process "
        f"{in_process:.1f}/s, served {served:.1f}/s (ratio {served / in_process:.2f}; "
        f"ideal {ideal:.1f}/s)"
    )


if __name__ == "__main__":
    main()
