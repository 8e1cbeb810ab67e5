"""LM calls in flight through the runtime (issue 12): throughput, threads, memory.

Against the loopback server (``bench/loopback_server.py``, a child process), each case runs
in a fresh child process of its own (so its thread count and peak RSS are its own):

- ``raw``: a raw aiohttp client keeping ``in_flight`` requests out (the peer: what the
  machine and server allow);
- ``pool``: the LM half alone: ``in_flight`` asyncio tasks each awaiting an LM request
  handed to a default app's LM pool (``submit_lm_request``), no caller threads;
- ``acall``: ``await handle.acall(...)`` of a served Predict, ``in_flight`` at once, the app
  with its defaults except ``max_in_flight`` (and ``submit_threads=in_flight`` with
  ``--acall-threads``: the acall on this branch still uses a thread per call);
- ``call``: ``handle.call(...)`` from ``in_flight`` threads of the caller's own.

Each reports calls/s over ``rounds x in_flight`` calls, failures, the process's peak thread
count and peak RSS (VmHWM), and RSS per call in flight above an idle app.

    .venv/bin/python bench/bench_lm_inflight.py --latency 2 --in-flight 4096
    .venv/bin/python bench/bench_lm_inflight.py --latency 10 --in-flight 8192 --rounds 1 \
        --cases raw pool
    .venv/bin/python bench/bench_lm_inflight.py --latency 0.1 --in-flight 64 256 --rounds 20 \
        --cases raw call --lm-processes 2      # the LM's HTTP in 2 worker processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_server import LoopbackServer, raise_open_files_limit


def _vm(field: str) -> int:
    """A /proc/self/status field in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _ThreadPeak:
    """Samples threading.active_count() every 10 ms; ``peak`` is the most seen."""

    def __init__(self) -> None:
        self.peak = threading.active_count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="thread-peak")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> _ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


async def _lanes(call: Any, in_flight: int, calls: int) -> tuple[int, int, list[str]]:
    remaining = iter(range(calls))
    ok = failed = 0
    errors: list[str] = []

    async def lane() -> None:
        nonlocal ok, failed
        for i in remaining:
            try:
                await call(i)
                ok += 1
            except Exception as exc:
                failed += 1
                if len(errors) < 3:
                    errors.append(repr(exc)[:200])

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return ok, failed, errors


def one_case(
    case: str,
    base_url: str,
    in_flight: int,
    calls: int,
    acall_threads: bool,
    lm_processes: int = 0,
) -> dict[str, Any]:
    raise_open_files_limit(40_000)
    url = f"{base_url}/chat/completions"
    rss_idle = _vm("VmRSS")
    threads_idle = threading.active_count()
    result: dict[str, Any] = {"case": case, "in_flight": in_flight, "calls": calls}
    if case == "raw":
        import aiohttp

        async def run_raw() -> tuple[int, int, list[str]]:
            body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "q"}]})
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

                async def call(_i: int) -> None:
                    async with s.post(
                        url, data=body, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        r.raise_for_status()

                return await _lanes(call, in_flight, calls)

        with _ThreadPeak() as peak:
            t0 = time.perf_counter()
            ok, failed, errors = asyncio.run(run_raw())
            wall = time.perf_counter() - t0
        result.update(threads_idle=threads_idle)
    else:
        import dspy_actors as dsa
        from dspy_actors.runtime._context import capture
        from dspy_actors.runtime._lm_pool import submit_lm_request

        lm = dsa.LM("openai/bench", api_base=base_url, api_key="k", cache=False, timeout=600)
        options: dict[str, Any] = {
            "max_in_flight": max(1024, in_flight),
            "module_max_in_flight": max(1024, in_flight),
            "call_timeout": 600.0,
        }
        if case == "acall" and acall_threads:
            options["submit_threads"] = in_flight
        if lm_processes:  # the opt-in LM worker processes
            options["lm_processes"] = lm_processes
            result["lm_processes"] = lm_processes
        app = dsa.start(lm=lm, data_dir=tempfile.mkdtemp(prefix="bench-inflight-"), **options)
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        qa.call(question="warm-up")
        # Why a breaker opened, if one did: failures, or calls it judged slow.
        transitions: list[str] = []
        app.subscribe(
            "breaker.transition",
            lambda e: transitions.append(
                f"{e.from_state}->{e.to_state} failure_rate={e.failure_rate} "
                f"slow_call_rate={e.slow_call_rate}"
            ),
        )
        rss_idle = _vm("VmRSS")
        threads_idle = threading.active_count()
        messages = [{"role": "user", "content": "question: q"}]

        async def pool_call(i: int) -> None:
            ctx = capture(timeout=600.0)
            reply = submit_lm_request(app.dispatcher, lm, messages, {}, ctx)
            await asyncio.wrap_future(reply)

        async def acall(i: int) -> None:
            await qa.acall(question=f"q{i}")

        def call_from_threads() -> tuple[int, int, list[str]]:
            remaining = iter(range(calls))
            lock = threading.Lock()
            counts = {"ok": 0, "failed": 0}
            errors: list[str] = []

            def lane() -> None:
                while True:
                    with lock:
                        i = next(remaining, None)
                    if i is None:
                        return
                    try:
                        qa.call(question=f"q{i}")
                        outcome = "ok"
                    except Exception as exc:
                        outcome = "failed"
                        if len(errors) < 3:
                            errors.append(repr(exc)[:200])
                    with lock:
                        counts[outcome] += 1

            threads = [threading.Thread(target=lane) for _ in range(in_flight)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(1200)
            return counts["ok"], counts["failed"], errors

        try:
            with _ThreadPeak() as peak:
                t0 = time.perf_counter()
                if case == "pool":
                    ok, failed, errors = asyncio.run(_lanes(pool_call, in_flight, calls))
                elif case == "acall":
                    ok, failed, errors = asyncio.run(_lanes(acall, in_flight, calls))
                else:
                    ok, failed, errors = call_from_threads()
                wall = time.perf_counter() - t0
            result["actors"] = len(supervisors_actors())
            app.events.flush(10.0)
            result["breaker"] = transitions[:4] + (
                [f"... {len(transitions)}"] if transitions else []
            )
        finally:
            app.stop()
            lm.close()
        result.update(threads_idle=threads_idle)
    hwm = _vm("VmHWM")
    result.update(
        ok=ok,
        failed=failed,
        errors=errors,
        wall_s=round(wall, 2),
        calls_per_s=round(ok / wall, 1),
        peak_threads=peak.peak,
        peak_rss_mb=round(hwm / 1024, 1),
        kb_per_in_flight=round((hwm - rss_idle) / in_flight, 1),
    )
    return result


def supervisors_actors() -> list[Any]:
    import pykka

    return list(pykka.ActorRegistry.get_all())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LM calls in flight through the runtime.")
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4096])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["raw", "pool", "acall", "call"])
    parser.add_argument("--acall-threads", action="store_true")
    parser.add_argument("--lm-processes", type=int, default=0, help="dsa.start(lm_processes=N)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a child: one case, its JSON on stdout
        row = one_case(
            args.one,
            args.url,
            args.in_flight[0],
            args.in_flight[0] * args.rounds,
            args.acall_threads,
            args.lm_processes,
        )
        print(json.dumps(row), flush=True)
        return 0
    raise_open_files_limit(40_000)
    with LoopbackServer(latency=args.latency) as server:
        for in_flight in args.in_flight:
            for case in args.cases:
                argv_child = [
                    sys.executable,
                    __file__,
                    "--one",
                    case,
                    "--url",
                    server.base_url,
                    "--in-flight",
                    str(in_flight),
                    "--rounds",
                    str(args.rounds),
                ]
                if args.acall_threads:
                    argv_child.append("--acall-threads")
                if case != "raw":
                    argv_child += ["--lm-processes", str(args.lm_processes)]
                done = subprocess.run(argv_child, capture_output=True, text=True, timeout=1800)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if not lines:
                    print(
                        json.dumps(
                            {"case": case, "in_flight": in_flight, "error": done.stderr[-500:]}
                        )
                    )
                    continue
                row = json.loads(lines[-1])
                row["latency_s"] = args.latency
                row["ideal_per_s"] = round(in_flight / args.latency, 1)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
