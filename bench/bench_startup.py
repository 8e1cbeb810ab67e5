"""What every process and every test pays before and after its work: ``import dspy_actors``
and an app's start and stop. Two builds in the same run, in alternating fresh processes.

    .venv/bin/python bench/bench_startup.py --base-tree /tmp/base --rounds 10
    .venv/bin/python bench/bench_startup.py --rounds 10            # this tree only

"base" runs the package from ``--base-tree`` (a copy of another commit's tree:
``git archive <commit> dspy_actors supervisors | tar -x -C /tmp/base``); "new" runs this
tree. Each round runs one fresh process per build, in alternating order, which measures:

- **import**: the CPU (``time.process_time()``, every thread) and wall time of
  ``import dspy_actors``, the first thing the process does after the standard library;
- **start / stop**: ``--cycles`` times, ``dsa.start(lm=...)`` with the defaults, one
  ``Predict`` served and called once (so the LM loop has opened its HTTP session), then
  ``app.stop()``: the wall time of ``start`` and of ``stop`` (``--lm-processes N`` starts
  the apps with ``lm_processes=N``). The LM is on a SimLM in this (the parent) process.

Reported per build: medians over rounds (a process's start/stop times are its own median).
The machine is shared: compare the two builds of one run, never runs, and quote the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TREE = HERE.parent

# Run in the child with only the standard library loaded before the timed import.
CHILD = r"""
import json, sys, time
cpu0, wall0 = time.process_time(), time.perf_counter()
import dspy_actors as dsa
import_cpu, import_wall = time.process_time() - cpu0, time.perf_counter() - wall0
url, cycles, processes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
starts, stops = [], []
lm = dsa.LM("openai/gpt-4o-mini", api_base=url, api_key="k", cache=False)
for i in range(cycles):
    options = {"lm_processes": processes} if processes else {}
    t0 = time.perf_counter()
    app = dsa.start(lm=lm, **options)  # (a private data dir, removed by stop)
    t1 = time.perf_counter()
    app.serve("qa", dsa.Predict("question -> answer")).call(question=f"q{i}")
    t2 = time.perf_counter()
    app.stop()
    t3 = time.perf_counter()
    starts.append(t1 - t0)
    stops.append(t3 - t2)
lm.close()
print(json.dumps({
    "import_cpu_s": import_cpu, "import_wall_s": import_wall,
    "start_s": sorted(starts)[len(starts) // 2], "stop_s": sorted(stops)[len(stops) // 2],
    "dspy_actors": dsa.__file__,
}))
"""


def run_child(tree: Path, url: str, cycles: int, processes: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, url, str(cycles), str(processes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if not row["dspy_actors"].startswith(str(tree)):
        raise RuntimeError(f"the child imported {row['dspy_actors']}, not the tree {tree}")
    return row


KEYS = ("import_cpu_s", "import_wall_s", "start_s", "stop_s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--base-tree", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=5, help="start/stop cycles per process")
    parser.add_argument("--lm-processes", type=int, default=0)
    args = parser.parse_args()

    sys.path.insert(0, str(TREE))
    from dspy_actors.testing import SimLM

    builds: dict[str, Path] = {"new": TREE}
    if args.base_tree is not None:
        builds = {"base": args.base_tree.resolve(), "new": TREE}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in builds}
    with SimLM() as sim:
        order = list(builds)
        for round_index in range(args.rounds):
            for name in order if round_index % 2 == 0 else reversed(order):
                row = run_child(builds[name], sim.openai_base, args.cycles, args.lm_processes)
                rows[name].append(row)
    load = os.getloadavg()
    print(
        f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {args.rounds} rounds, "
        f"{args.cycles} start/stop cycles per process, lm_processes={args.lm_processes}"
    )
    header = ("build", "import CPU ms", "import wall ms", "start ms", "stop ms")
    print("{:6s} {:>14s} {:>15s} {:>9s} {:>8s}".format(*header))
    medians: dict[str, dict[str, float]] = {}
    for name, got in rows.items():
        medians[name] = {key: statistics.median(r[key] for r in got) for key in KEYS}
        m = medians[name]
        print(
            f"{name:6s} {m['import_cpu_s'] * 1e3:14.0f} {m['import_wall_s'] * 1e3:15.0f} "
            f"{m['start_s'] * 1e3:9.1f} {m['stop_s'] * 1e3:8.1f}"
        )
    if "base" in medians:
        ratios = {key: medians["new"][key] / medians["base"][key] for key in KEYS}
        print("new/base " + "  ".join(f"{key} {value:.2f}" for key, value in ratios.items()))


if __name__ == "__main__":
    main()
