"""Two builds of the runtime, same run: CPU per call by thread of a one-step ``app.program``.

    .venv/bin/python bench/ab_program_cpu.py --base-tree /tmp/base 256 2 --rounds 6
    .venv/bin/python bench/ab_program_cpu.py --base-env SOME_SWITCH=1 256 2   # an env switch off

"base" runs the package from ``--base-tree`` (a copy of another commit's tree, e.g.
``git archive <commit> dspy_actors | tar -x -C /tmp/base``) or this tree with
``--base-env`` set; "new" runs this tree. Each round runs both in fresh processes, in
alternating order, against one SimLM server at 100 ms; each process runs ``--trials``
bursts of ``threads x per_thread`` calls to ``handle.call`` and keeps its best trial (the
least CPU per call, the highest rate: on a shared machine the best trial is the one least
disturbed). Reported per build, medians over rounds: calls/s, process CPU per call, and
the CPU per call of the LM loop's thread and of the module actor's (from
/proc/self/task/*/schedstat). Compare the two builds of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import Server

ROLES = ("loop", "module")


def _cpu_ns_by_role() -> dict[str, int]:
    out: dict[str, int] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        if thread.name.endswith("-loop"):
            role = "loop"
        elif thread.name.startswith("ModuleActor"):
            role = "module"
        else:
            role = "other"
        out[role] = out.get(role, 0) + ns
    return out


def child(url: str, threads: int, per_thread: int, trials: int) -> dict[str, float]:
    import dspy_actors as dsa

    lm = dsa.LM("openai/gpt-4o-mini", api_base=url + "/v1", api_key="k", cache=False)
    app = dsa.start(lm=lm, data_dir=tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        handle = app.program("p", [("answer", dsa.Predict, {"signature": "question -> answer"})])
        handle.call(question="warm-up")
        rows: list[dict[str, float]] = []
        for trial in range(trials):

            def worker(i: int, trial: int = trial) -> None:
                for j in range(per_thread):
                    handle.call(question=f"q{trial}-{i}-{j}")

            pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
            before, cpu0, t0 = _cpu_ns_by_role(), time.process_time(), time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            after, n = _cpu_ns_by_role(), threads * per_thread
            row = {"rate": n / wall, "cpu_us": cpu / n * 1e6}
            for role in ROLES:
                row[f"{role}_us"] = (after.get(role, 0) - before.get(role, 0)) / n / 1e3
            rows.append(row)
        best = {k: min(r[k] for r in rows) for k in rows[0]}
        best["rate"] = max(r["rate"] for r in rows)
        return best
    finally:
        app.stop()
        lm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("threads", type=int)
    parser.add_argument("per_thread", type=int)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--base-tree", help="a directory holding another build's dspy_actors")
    parser.add_argument("--base-env", action="append", default=[], help="NAME=VALUE for base")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.per_thread, args.trials)))
        return 0
    server = Server("sim-slow", 0.1, dict(os.environ), Path(tempfile.mkdtemp()))
    results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    try:
        for r in range(args.rounds):
            for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
                env = dict(os.environ)
                if name == "base":
                    if args.base_tree:
                        env["PYTHONPATH"] = args.base_tree
                    env.update(kv.split("=", 1) for kv in args.base_env)
                argv = [sys.executable, __file__, "--child", server.url]
                argv += [str(args.threads), str(args.per_thread), "--trials", str(args.trials)]
                done = subprocess.run(
                    argv, env=env, capture_output=True, text=True, timeout=600, cwd="/"
                )
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if not lines:
                    print(name, "failed:", done.stderr[-1000:])
                    continue
                row: dict[str, Any] = json.loads(lines[-1])
                results[name].append(row)
                print(name, {k: round(v) for k, v in row.items()}, flush=True)
    finally:
        server.stop()
    ideal = args.threads / 0.1
    for name, rows in results.items():
        if rows:
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            cells = ", ".join(f"{k} {v:.0f}" for k, v in med.items())
            print(f"{name}: {cells} ({med['rate'] / ideal:.0%} of ideal)")
    print("load average:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
