"""Two builds of ``lm/_aio_posts.PostPool``, same run: the event loop thread's CPU per POST.

    .venv/bin/python bench/ab_post_pool_cpu.py --base-tree /tmp/base 64 4000 --rounds 6

"base" runs the package from ``--base-tree`` (a copy of another commit's tree, e.g.
``git archive <commit> dspy_actors | tar -x -C /tmp/base``); "new" runs this tree. Each
round runs both in fresh processes, in alternating order, against one loopback server
(``loopback_server.py``, a child process, its own CPU not counted); each process keeps
``in_flight`` POSTs out on one event loop until ``calls`` are answered, ``--trials`` times,
and keeps its best trial (the least CPU per POST: on a shared machine the least
disturbed). What is measured is PostPool alone: building the request, the connection's
write, reading the answer (the part a change to the answer's parser moves), the loop's own
work; not the LM's JSON or the runtime. Reported per build, medians over rounds: POSTs/s
and the loop thread's CPU per POST (``time.thread_time``). Compare builds of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_server import LoopbackServer, raise_open_files_limit

_BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "question: What is 6 x 7?"}]}
).encode()


async def _trial(url: str, in_flight: int, calls: int) -> dict[str, float]:
    from dspy_actors.lm._aio_posts import PostPool

    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer k")]
    host = url.split("/")[2]
    pool = PostPool(url, headers, host, ssl.create_default_context)
    remaining = iter(range(calls))

    async def lane() -> None:
        for _ in remaining:
            status, _headers, body = await pool.post(_BODY, 30.0)
            if status != 200 or not body:
                raise RuntimeError(f"HTTP {status}: {body[:100]!r}")

    await asyncio.gather(*(lane() for _ in range(in_flight)))  # warm: connections made
    remaining = iter(range(calls))
    cpu0, t0 = time.thread_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    pool.close()
    return {"rate": calls / wall, "loop_us": cpu / calls * 1e6}


def child(url: str, in_flight: int, calls: int, trials: int) -> dict[str, float]:
    raise_open_files_limit()
    rows = [asyncio.run(_trial(url, in_flight, calls)) for _ in range(trials)]
    return {"rate": max(r["rate"] for r in rows), "loop_us": min(r["loop_us"] for r in rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("in_flight", type=int)
    parser.add_argument("calls", type=int)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="the server's, seconds")
    parser.add_argument("--base-tree", required=True, help="a directory with another build")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.in_flight, args.calls, args.trials)))
        return 0
    raise_open_files_limit()
    results: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
    with LoopbackServer(latency=args.latency) as server:
        url = server.base_url + "/chat/completions"
        for r in range(args.rounds):
            for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
                env = dict(os.environ)
                if name == "base":
                    env["PYTHONPATH"] = args.base_tree
                argv = [sys.executable, __file__, "--child", url, "--base-tree", "-"]
                argv += [str(args.in_flight), str(args.calls), "--trials", str(args.trials)]
                done = subprocess.run(
                    argv, env=env, capture_output=True, text=True, timeout=600, cwd="/"
                )
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if not lines:
                    print(name, "failed:", done.stderr[-1000:])
                    continue
                row: dict[str, float] = json.loads(lines[-1])
                results[name].append(row)
                print(name, {k: round(v, 1) for k, v in row.items()}, flush=True)
    medians: dict[str, dict[str, float]] = {}
    for name, rows in results.items():
        if rows:
            medians[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            cells = ", ".join(f"{k} {v:.1f}" for k, v in medians[name].items())
            print(f"{name}: {cells}")
    if len(medians) == 2:
        ratio = medians["new"]["loop_us"] / medians["base"]["loop_us"]
        print(f"new/base loop CPU per POST: {ratio:.2f}")
    print("load average:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
