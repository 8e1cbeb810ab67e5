"""BestOfN served (attempts fanned out across actors) against BestOfN in-process (one
attempt after another, as DSPy runs it) and DSPy 3.4.1's own BestOfN, all on one SimLM with
a fixed latency, in the same run. The threshold is out of reach, so every attempt runs.

    .venv/bin/python bench/bench_library.py [--n 8] [--latency 0.1] [--calls 8]

DSPy's party runs in bench/.venv-dspy (skipped if absent). Reported: median seconds per
BestOfN call, and each party's ratio to the in-process one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import dspy_actors as dsa
from dspy_actors.testing import SimLM

DSPY_PYTHON = Path(__file__).resolve().parent / ".venv-dspy" / "bin" / "python"

_DSPY_PARTY = """
import json, statistics, sys, time
import dspy
url, n, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dspy.configure(lm=dspy.LM("openai/sim-model", api_base=url, api_key="sim", cache=False))
best = dspy.BestOfN(dspy.Predict("question -> answer"), N=n,
                    reward_fn=lambda args, pred: 0.0, threshold=1.0)
best(question="warm up")
times = []
for i in range(calls):
    t0 = time.perf_counter()
    best(question=f"What is {i} + 1?")
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def never(_inputs: dict[str, Any], _pred: Any) -> float:
    return 0.0


def timed(call: Any, calls: int) -> list[float]:
    call(question="warm up")
    times = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(question=f"What is {i} + 1?")
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with SimLM(latency=args.latency) as sim:
        lm = dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False)
        best = dsa.BestOfN(
            dsa.Predict("question -> answer"), N=args.n, reward_fn=never, threshold=1
        )
        with dsa.context(lm=lm):
            results["in-process (sequential)"] = timed(best, args.calls)
        with dsa.start(lm=lm, data_dir=tempfile.mkdtemp(), lm_max_in_flight=max(8, args.n)) as app:
            served = app.serve("best", best)
            results["served (fan-out)"] = timed(served.call, args.calls)
        if DSPY_PYTHON.exists():
            out = subprocess.run(
                [
                    str(DSPY_PYTHON),
                    "-c",
                    _DSPY_PARTY,
                    sim.openai_base,
                    str(args.n),
                    str(args.calls),
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            results["DSPy 3.4.1"] = json.loads(out.stdout.strip().splitlines()[-1])
        lm.close()
    base = statistics.median(results["in-process (sequential)"])
    print(f"BestOfN N={args.n}, SimLM latency {args.latency}s, {args.calls} calls each")
    for party, times in results.items():
        med = statistics.median(times)
        print(f"  {party:26s} median {med:.3f} s/call   ratio to in-process {med / base:.2f}")


if __name__ == "__main__":
    main()
