"""CPU per cached ``Predict`` call, and per adapter round (the part without the module's
own bookkeeping), for the tree on ``PYTHONPATH``: compare two checkouts (say, two
commits in ``git worktree``s ``../before`` and ``.``) in one run with

    for t in ../before . ../before .; do
        PYTHONPATH=$t .venv/bin/python bench/predict_call_overhead.py $t; done

Best of 9 rounds of CPU time (process time, so other load on the machine counts less).
The difference between the two numbers is what a call costs beyond formatting, the cache
hit and parsing: input checks, history, usage metering, the forward() check.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import dspy_actors as dsa
from dspy_actors.adapters import ChatAdapter
from dspy_actors.lm._steps import run_steps
from dspy_actors.testing import SimLM


def best_cpu_us(fn: Callable[[], object], calls: int = 3000, rounds: int = 9) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def main() -> None:
    logging.disable(logging.WARNING)
    label = sys.argv[1] if len(sys.argv) > 1 else "tree"
    with SimLM() as sim:
        lm = dsa.LM("openai/sim", api_base=sim.openai_base, api_key="bench")
        predict = dsa.Predict("question -> answer")
        predict(question="q", lm=lm)  # fills the cache: the timed calls never reach the server
        adapter = ChatAdapter()
        signature = predict.signature
        rounds = best_cpu_us(
            lambda: run_steps(adapter.steps(lm, {}, signature, [], {"question": "q"}))
        )
        calls = best_cpu_us(lambda: predict(question="q", lm=lm))
        lm.close()
        assert sim.request_count == 1
    print(f"{label}: adapter round {rounds:.1f} us CPU, Predict call {calls:.1f} us CPU")


if __name__ == "__main__":
    main()
