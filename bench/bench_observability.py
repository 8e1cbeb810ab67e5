"""What the console, metrics and tracing cost a running app: a cached call's latency and
256-in-flight throughput with them on vs off, in the same run (issue 16: within 5%).

    .venv/bin/python bench/bench_observability.py
    .venv/bin/python bench/bench_observability.py --rounds 5 --calls 3000 --total 4096

"on" is what a service would run: ``app.console()`` (which keeps ``/metrics`` too) with one
browser-like client reading its event stream, and ``trace_app`` with a batch span processor
(spans exported to a sink that drops them). Rounds alternate off/on, each on a fresh app;
the best round of each is reported (the least disturbed by other load on the machine),
with every round's numbers beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import dspy_actors as dsa
from dspy_actors.testing import SimLM
from dspy_actors.tracing import trace_app


class _DropSpans(SpanExporter):
    """Takes spans as an exporter does, keeps a count, sends them nowhere."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def _read_stream(console: Any, stop: threading.Event, received: list[int]) -> None:
    headers = {"Authorization": f"Bearer {console.token}"}
    with (
        httpx.Client(base_url=console.base_url, headers=headers, timeout=60.0) as client,
        client.stream("GET", "/api/events") as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                received[0] += 1
            if stop.is_set():
                return


@contextlib.contextmanager
def observed(app: Any, on: bool) -> Iterator[dict[str, int]]:
    """Console (+ /metrics) with a reading client, and tracing, when ``on``."""
    counts = {"spans": 0, "pushes": 0, "cpu_us": 0}
    if not on:
        yield counts
        return
    exporter = _DropSpans()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=65536))
    tracing = trace_app(app, provider)
    received = [0]
    stop = threading.Event()
    with app.console(announce=None) as console:
        reader = threading.Thread(target=_read_stream, args=(console, stop, received))
        reader.start()
        deadline = time.monotonic() + 30.0
        while received[0] == 0 and time.monotonic() < deadline:  # its first snapshot
            time.sleep(0.01)
        try:
            yield counts
        finally:
            stop.set()
            console.stop()  # ends the stream: the reader returns
            reader.join(30.0)
            tracing.close()
            provider.shutdown()
            counts["spans"] = exporter.count
            counts["pushes"] = received[0]


def cached_call_us(sim: SimLM, on: bool, calls: int) -> tuple[float, dict[str, int]]:
    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim"),
        data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
    ) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        qa.call(question="What is 2 + 3?")  # fills the cache
        with observed(app, on) as counts:
            for _ in range(200):  # warm up
                qa.call(question="What is 2 + 3?")
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                qa.call(question="What is 2 + 3?")
            elapsed = time.perf_counter() - start
            app.events.flush(30.0)  # the bus's work for these calls counts too
            counts["cpu_us"] = round((time.process_time() - cpu) / calls * 1e6)
    return elapsed / calls * 1e6, counts


def throughput(sim: SimLM, on: bool, total: int, in_flight: int) -> tuple[float, dict[str, int]]:
    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim", cache=False),
        data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
    ) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))

        async def run() -> float:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(total):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    await qa.acall(question=f"{i} + 1?")

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return total / (time.perf_counter() - start)

        with observed(app, on) as counts:
            asyncio.run(run())  # warm-up round: connections, code paths
            rate = asyncio.run(run())
            app.events.flush(30.0)
    return rate, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="cached calls per round")
    parser.add_argument("--total", type=int, default=2048, help="uncached calls per round")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05, help="the LM's, seconds")
    args = parser.parse_args()
    cached: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    rates: dict[bool, list[float]] = {False: [], True: []}
    seen: dict[str, int] = {}
    with SimLM() as fast, SimLM(latency=args.latency) as slow:
        for _ in range(args.rounds):
            for on in (False, True):
                us, counts = cached_call_us(fast, on, args.calls)
                cached[on].append(us)
                cpu[on].append(counts.pop("cpu_us"))
                rate, more = throughput(slow, on, args.total, args.in_flight)
                rates[on].append(rate)
                if on:
                    seen = {k: seen.get(k, 0) + counts[k] + more[k] for k in counts}
    off_us, on_us = min(cached[False]), min(cached[True])
    off_rate, on_rate = max(rates[False]), max(rates[True])
    print(f"cached call, us (best of {args.rounds}; all: off {_fmt(cached[False])}, "
          f"on {_fmt(cached[True])})")  # fmt: skip
    print(f"  off {off_us:.1f}  on {on_us:.1f}  on/off {on_us / off_us:.3f}")
    off_cpu, on_cpu = min(cpu[False]), min(cpu[True])
    print(f"  CPU per call (process time, bus thread included): off {off_cpu:.0f} us, "
          f"on {on_cpu:.0f} us, on/off {on_cpu / off_cpu:.3f}")  # fmt: skip
    print(f"{args.in_flight} in flight, {args.latency * 1000:.0f} ms LM, calls/s (best of "
          f"{args.rounds}; all: off {_fmt(rates[False])}, on {_fmt(rates[True])})")  # fmt: skip
    print(f"  off {off_rate:.1f}  on {on_rate:.1f}  on/off {on_rate / off_rate:.3f}")
    print(f"  ideal {args.in_flight / args.latency:.0f}/s; median on/off "
          f"{statistics.median(rates[True]) / statistics.median(rates[False]):.3f}")  # fmt: skip
    print(f"with it on: {seen.get('spans', 0)} spans exported, "
          f"{seen.get('pushes', 0)} console pushes read")  # fmt: skip


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
