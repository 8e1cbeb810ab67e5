"""The LM's two HTTP transports side by side: urllib3 (default) vs httpx's own (httpcore).

    .venv/bin/python bench/bench_transport.py [--rounds N]

Each runs the LM's real ``ClientPool`` (the sharded pool the LM posts through) against the
simulated LM server in its own process: one thread at 0 ms latency, the backends alternating
call by call (us and thread CPU per request), then 64 and 256 threads at 100 ms latency
(requests/s against the ideal ``threads / 0.1 s``; client CPU is this process's CPU time
over the requests). Rounds alternate the backends; medians over rounds are reported.
Writes bench/results/transport.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, machine_load, median, timed_threads, write_results
from bench_core import Server

from dspy_actors.lm.transport import BACKENDS, ClientPool

BODY = json.dumps(
    {"model": "sim", "messages": [{"role": "user", "content": "What is 2 + 3?"}]}
).encode()
SHAPES = ((1, 0.0, 400), (64, 0.1, 8), (256, 0.1, 5))  # threads, latency, requests per thread


def run(backend: str, url: str, threads: int, per_thread: int) -> dict[str, Any]:
    pool = ClientPool(headers={"Authorization": "Bearer bench"}, timeout=30.0, backend=backend)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def worker(_i: int) -> None:
        try:
            for _ in range(per_thread):
                response = pool.post(url, BODY)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}")
                json.loads(response.content)
        except BaseException as exc:  # reported below: a benchmark must not hide failures
            errors.append(exc)

    try:
        pool.post(url, BODY)  # connect once outside the timing
        wall, cpu = timed_threads(worker, threads, timeout=300)
    finally:
        pool.close()
    if errors:
        raise RuntimeError(f"{backend}: {len(errors)} requests failed, first: {errors[0]!r}")
    n = threads * per_thread
    return {"requests_per_s": n / wall, "us_per_request": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


def run_interleaved(url: str, calls: int) -> dict[str, dict[str, Any]]:
    """One thread, the backends alternating call by call (so load changes hit both alike);
    wall and thread CPU time per request, each call timed on its own."""
    pools = {
        b: ClientPool(headers={"Authorization": "Bearer bench"}, timeout=30.0, backend=b)
        for b in BACKENDS
    }
    wall: dict[str, float] = dict.fromkeys(BACKENDS, 0.0)
    cpu: dict[str, float] = dict.fromkeys(BACKENDS, 0.0)
    try:
        for pool in pools.values():
            pool.post(url, BODY)  # connect once outside the timing
        for i in range(calls):
            order = BACKENDS if i % 2 == 0 else tuple(reversed(BACKENDS))
            for backend in order:
                c0, t0 = time.thread_time(), time.perf_counter()
                response = pools[backend].post(url, BODY)
                json.loads(response.content)
                wall[backend] += time.perf_counter() - t0
                cpu[backend] += time.thread_time() - c0
                if response.status_code != 200:
                    raise RuntimeError(f"{backend}: HTTP {response.status_code}")
    finally:
        for pool in pools.values():
            pool.close()
    return {
        b: {
            "requests_per_s": calls / wall[b],
            "us_per_request": wall[b] / calls * 1e6,
            "cpu_us": cpu[b] / calls * 1e6,
        }
        for b in BACKENDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    env = dict(os.environ)
    servers = {0.0: Server("sim-fast", 0.0, env, logdir), 0.1: Server("sim-slow", 0.1, env, logdir)}
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        str(threads): {b: [] for b in BACKENDS} for threads, _, _ in SHAPES
    }
    loads = []
    try:
        for r in range(args.rounds):
            loads.append(machine_load())
            order = BACKENDS if r % 2 == 0 else tuple(reversed(BACKENDS))
            for threads, latency, per_thread in SHAPES:
                if threads == 1:
                    pair = run_interleaved(servers[latency].endpoint, per_thread)
                    for backend in BACKENDS:
                        rows["1"][backend].append(pair[backend])
                    continue
                for backend in order:
                    result = run(backend, servers[latency].endpoint, threads, per_thread)
                    rows[str(threads)][backend].append(result)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary: dict[str, Any] = {}
    print("| threads (latency) | backend | req/s (of ideal) | us/request | client CPU us/request |")
    print("|---|---|---|---|---|")
    for threads, latency, _ in SHAPES:
        for backend in BACKENDS:
            runs = rows[str(threads)][backend]
            med = {k: median(run[k] for run in runs) for k in runs[0]}
            ideal = threads / latency if latency else None
            fraction = med["requests_per_s"] / ideal if ideal else None
            summary.setdefault(str(threads), {})[backend] = {**med, "fraction_of_ideal": fraction}
            share = f" ({fraction:.0%})" if fraction is not None else ""
            print(
                f"| {threads} ({latency * 1000:g} ms) | {backend} | {med['requests_per_s']:.0f}"
                f"{share} | {med['us_per_request']:.0f} | {med['cpu_us']:.0f} |"
            )
    path = write_results(
        "transport",
        {
            "machine": machine_info(("httpx", "urllib3", "httpcore", "h11")),
            "rounds": args.rounds,
            "shapes": SHAPES,
            "summary": summary,
            "runs": rows,
            "load": loads,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
