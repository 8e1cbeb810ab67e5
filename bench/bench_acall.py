"""Benchmark of ``await handle.acall(...)`` (issue 12, the caller half).

    ln -s /work/main/bench/.venv-dspy bench/.venv-dspy      # or bash bench/setup_dspy_venv.sh
    .venv/bin/python bench/bench_acall.py [--quick] [--no-dspy] [--only-ceiling]

The simulated LM server (SimLM, 100 ms latency; a second one with none for the cached
call) runs in its own process (bench_core.Server). Each peer runs in its own process:

(1) ``acall`` throughput at 256 and 2,000 calls in flight: that many asyncio tasks, each
    calling again as soon as its call returns, for a fixed number of calls; uncached.
    - ours, ``dsa.start()`` defaults: ``await handle.acall`` of a served Predict, of a
      three-step ``app.program`` (pure-Python retrieve, Predict, Predict: two LM calls)
      and of a served composite whose ``forward`` calls two sub-modules (two LM calls);
    - DSPy 3.4.1: ``await dspy.Predict(...).acall`` from the same number of tasks;
    - the server's ceiling: a raw asyncio HTTP/1.1 client (a keep-alive connection per
      task) posting a prebuilt request to the same server;
    - the ideal: ``in_flight / (0.1 s x LM calls per call)``.
    Reported: calls/s, % of ideal, errors, the process's peak OS threads while in flight.
(2) a cached call (memory cache holds the answer), one caller, us/call: a raw Pykka ``ask``
    to a trivial actor (with and without a timeout); the same cached Predict in-process;
    ``handle.call``; ``await handle.acall`` (one event loop).

Writes bench/results/acall.json. Numbers from one run of a noisy shared machine: compare
the peers of the same run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
MODEL = "gpt-4o-mini"  # a name DSPy knows (an unknown one costs it a table scan per call)
KEY = "bench-key"
LATENCY = 0.1


def _os_threads() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return threading.active_count()


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _closed_loop(call: Any, in_flight: int, total: int) -> dict[str, Any]:
    """``in_flight`` tasks call back to back until ``total`` calls were made."""
    made = 0
    errors: dict[str, int] = {}
    peak_threads = _os_threads()
    peak_rss = _rss_mb()

    async def worker(w: int) -> None:
        nonlocal made
        while made < total:
            i = made
            made += 1
            try:
                await call(f"w{w} What is {i} + {i % 7}?")
            except Exception as error:
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1

    async def sampler() -> None:
        nonlocal peak_threads, peak_rss
        while True:
            peak_threads = max(peak_threads, _os_threads())
            peak_rss = max(peak_rss, _rss_mb())
            await asyncio.sleep(0.05)

    sampling = asyncio.ensure_future(sampler())
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    elapsed = time.perf_counter() - started
    sampling.cancel()
    return {
        "calls": total,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(total / elapsed, 1),
        "errors": errors,
        "peak_threads": peak_threads,
        "peak_rss_mb": round(peak_rss, 1),
    }


# ------------------------------------------------------------------ peers (child processes)


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    import dspy_actors as dsa
    from dspy_actors.lm.cache import Cache
    from dspy_actors.modules._predict import Predict
    from dspy_actors.primitives.module import Module
    from dspy_actors.primitives.prediction import Prediction

    class Retrieve(Module):
        def forward(self, question: str) -> Prediction:
            return Prediction(context=[f"passage about {question}"])

    class Draft(Module):
        def __init__(self) -> None:
            self.outline = Predict("question -> outline")
            self.answer = Predict("question, outline -> answer")

        def forward(self, question: str) -> Prediction:
            outline = self.outline(question=question).outline
            return self.answer(question=question, outline=outline)  # type: ignore[no-any-return]

    if args.shape == "cached":
        return _ours_cached(args, dsa, Cache, Predict)
    lm = dsa.LM(f"openai/{MODEL}", api_base=args.url + "/v1", api_key=KEY, cache=False)
    with tempfile.TemporaryDirectory() as data, dsa.start(lm=lm, data_dir=data) as app:
        if args.shape == "predict":
            handle = app.serve("p", Predict("question -> answer"))
        elif args.shape == "pipeline":
            handle = app.program(
                "p",
                [
                    ("retrieve", Retrieve),
                    ("draft", Predict, {"signature": "context: list[str], question -> draft"}),
                    ("answer", Predict, {"signature": "draft, question -> answer"}),
                ],
            )
        else:
            handle = app.serve("p", Draft())

        async def call(q: str) -> Any:
            return await handle.acall(question=q)

        async def main() -> dict[str, Any]:
            await asyncio.gather(*(call(f"warm {i}") for i in range(min(args.in_flight, 64))))
            return await _closed_loop(call, args.in_flight, args.total)

        return asyncio.run(main())


def _ours_cached(
    args: argparse.Namespace, dsa: Any, cache_class: Any, predict: Any
) -> dict[str, Any]:
    import pykka

    lm = dsa.LM(
        f"openai/{MODEL}",
        api_base=args.url + "/v1",
        api_key=KEY,
        cache_store=cache_class(disk_path=None),
    )
    n = args.total
    out: dict[str, Any] = {}

    class Echo(pykka.ThreadingActor):
        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        ref.ask("warm")
        started = time.perf_counter()
        for _ in range(n):
            ref.ask("x")
        out["pykka_ask_us"] = round((time.perf_counter() - started) / n * 1e6, 1)
        started = time.perf_counter()
        for _ in range(n):
            ref.ask("x", timeout=10.0)  # as bench_runtime.py measures it
        out["pykka_ask_timeout_us"] = round((time.perf_counter() - started) / n * 1e6, 1)
    finally:
        ref.stop()
    inproc = predict("question -> answer")
    inproc.lm = lm
    inproc(question="What is 2 + 3?")
    started = time.perf_counter()
    for _ in range(n):
        inproc(question="What is 2 + 3?")
    out["inprocess_predict_us"] = round((time.perf_counter() - started) / n * 1e6, 1)
    with tempfile.TemporaryDirectory() as data, dsa.start(lm=lm, data_dir=data) as app:
        handle = app.serve("cached", predict("question -> answer"))
        handle.call(question="What is 2 + 3?")
        started = time.perf_counter()
        for _ in range(n):
            handle.call(question="What is 2 + 3?")
        out["handle_call_us"] = round((time.perf_counter() - started) / n * 1e6, 1)

        async def loop() -> float:
            await handle.acall(question="What is 2 + 3?")
            began = time.perf_counter()
            for _ in range(n):
                await handle.acall(question="What is 2 + 3?")
            return time.perf_counter() - began

        out["handle_acall_us"] = round(asyncio.run(loop()) / n * 1e6, 1)
    return out


def run_dspy(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy  # type: ignore[import-not-found, unused-ignore]

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    lm = dspy.LM(f"openai/{MODEL}", api_base=args.url + "/v1", api_key=KEY, cache=False)
    predict = dspy.Predict("question -> answer")
    predict.lm = lm

    async def call(q: str) -> Any:
        return await predict.acall(question=q)

    async def main() -> dict[str, Any]:
        await asyncio.gather(*(call(f"warm {i}") for i in range(min(args.in_flight, 64))))
        return await _closed_loop(call, args.in_flight, args.total)

    return asyncio.run(main())


def run_raw(args: argparse.Namespace) -> dict[str, Any]:
    """The server's ceiling at this many in flight: a raw asyncio HTTP/1.1 client, one
    keep-alive connection per task, posting a prebuilt chat request (stdlib only)."""
    host, port = args.url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "[[ ## question ## ]]\nq"}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def post(w: int) -> None:
        if w not in connections:
            connections[w] = await asyncio.open_connection(host, int(port))
        reader, writer = connections[w]
        writer.write(head + body)
        await writer.drain()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)

    counter = iter(range(10**9))

    async def call(q: str) -> None:
        # The closed loop's worker number is in q ("w12 ..."): one connection per worker.
        await post(int(q.split(" ", 1)[0][1:]) if q.startswith("w") else next(counter))

    async def main() -> dict[str, Any]:
        await asyncio.gather(*(call(f"w{w} warm") for w in range(args.in_flight)))
        result = await _closed_loop(call, args.in_flight, args.total)
        for _, writer in connections.values():
            writer.close()
        return result

    return asyncio.run(main())


# ------------------------------------------------------------------ the driver


def _child(python: Path, *argv: str, timeout: float = 900) -> dict[str, Any]:
    import subprocess

    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": done.stderr[-2000:] or f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def drive(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    from _common import machine_info, write_results
    from bench_core import DSPY_PY, OURS_PY, Server

    env = dict(os.environ)
    logdir = Path(tempfile.mkdtemp(prefix="bench-acall-"))
    slow = Server("slow", LATENCY, env, logdir)
    fast = Server("fast", 0.0, env, logdir)
    results: dict[str, Any] = {"machine": machine_info(), "latency_s": LATENCY, "runs": []}
    in_flights = [256] if args.quick else [256, 2000]
    try:
        for k in in_flights:
            total = k * (4 if args.quick else 8)
            lm_calls = {"predict": 1, "pipeline": 2, "composite": 2}
            peers: list[tuple[str, Path, list[str], int]] = [
                (f"ours {shape}", OURS_PY, ["--ours", "--shape", shape], lm_calls[shape])
                for shape in ("predict", "pipeline", "composite")
            ]
            if not args.no_dspy and DSPY_PY.exists():
                peers.append(("dspy 3.4.1 Predict.acall", DSPY_PY, ["--dspy"], 1))
            peers.append(("raw asyncio client (server ceiling)", OURS_PY, ["--raw"], 1))
            if args.only_ceiling:
                peers = peers[-1:]
            for name, python, argv, calls_per in peers:
                run = _child(
                    python,
                    *argv,
                    "--url",
                    slow.url,
                    "--in-flight",
                    str(k),
                    "--total",
                    str(total),
                )
                ideal = k / (LATENCY * calls_per)
                run.update({"peer": name, "in_flight": k, "ideal_calls_per_s": ideal})
                if "calls_per_s" in run:
                    run["pct_of_ideal"] = round(100 * run["calls_per_s"] / ideal, 1)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        cached = _child(
            OURS_PY, "--ours", "--shape", "cached", "--url", fast.url, "--total", "5000"
        )
        results["cached"] = cached
        print(json.dumps({"cached": cached}), flush=True)
    finally:
        slow.stop()
        fast.stop()
    write_results("acall_ceiling" if args.only_ceiling else "acall", results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-dspy", action="store_true")
    parser.add_argument("--ours", action="store_true", help="(child) our peer")
    parser.add_argument("--dspy", action="store_true", help="(child) DSPy's peer")
    parser.add_argument("--raw", action="store_true", help="(child) the raw client")
    parser.add_argument("--only-ceiling", action="store_true", help="only the raw client")
    parser.add_argument("--shape", default="predict")
    parser.add_argument("--url", default="")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--total", type=int, default=1024)
    args = parser.parse_args()
    if args.ours or args.dspy or args.raw:
        result = run_ours(args) if args.ours else run_dspy(args) if args.dspy else run_raw(args)
        print(json.dumps(result), flush=True)
        return
    drive(args)


if __name__ == "__main__":
    main()
