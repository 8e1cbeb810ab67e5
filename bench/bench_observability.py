"""What the console, metrics and tracing cost a running app: a cached call's latency and
256-in-flight throughput with them on vs off, in the same run (issue 16: within 5%).

    .venv/bin/python bench/bench_observability.py
    .venv/bin/python bench/bench_observability.py --rounds 5 --calls 3000 --total 4096
    .venv/bin/python bench/bench_observability.py --parts     # CPU per cached call, by part
    .venv/bin/python bench/bench_observability.py --pieces    # each piece's CPU, in isolation
    .venv/bin/python bench/bench_observability.py --threads --calls 20000  # CPU by thread

"on" is what a service would run: ``app.console()`` (which keeps ``/metrics`` too) with one
browser-like client reading its event stream, and ``trace_app`` with a batch span processor
(spans exported to a sink that drops them), measured three ways: every call traced ("on"),
with the head sampling a service at this rate runs, ``ParentBased(TraceIdRatioBased(0.1))``
("on-10%"), and ``ParentBased(TraceIdRatioBased(0.01))`` ("on-1%"). Rounds alternate
off/on/on-10%/on-1%, each on a fresh app; the best round of each is
reported (the least disturbed by other load on the machine), with every round's numbers
beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

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
def observed(app: Any, sampled: float | None) -> Iterator[dict[str, int]]:
    """Console (+ /metrics) with a reading client, and tracing with ``sampled`` of the
    calls, unless ``sampled`` is None (all off)."""
    counts = {"spans": 0, "pushes": 0, "cpu_us": 0}
    if sampled is None:
        yield counts
        return
    exporter = _DropSpans()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))
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


def cached_call_us(sim: SimLM, on: float | None, calls: int) -> tuple[float, dict[str, int]]:
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


def throughput(
    sim: SimLM, on: float | None, total: int, in_flight: int
) -> tuple[float, dict[str, int]]:
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


def part_cpu_us(sim: SimLM, part: str, calls: int) -> float:
    """CPU (process time, bus thread included) per cached call with one part on alone."""
    from dspy_actors.console._state import ConsoleState
    from dspy_actors.metrics import app_metrics

    with dsa.start(
        lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim"),
        data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
    ) as app:
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        qa.call(question="What is 2 + 3?")
        closers: list[Any] = []
        if part == "events":  # events built, queued and delivered to a no-op subscriber
            app.subscribe("*", lambda _event: None)
        elif part == "metrics":
            app_metrics(app)
        elif part == "console-state":  # the aggregates, without the server
            closers.append(ConsoleState(app).close)
        elif part.startswith("tracing"):
            ratio = 0.1 if part == "tracing-10%" else 1.0
            provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
            provider.add_span_processor(BatchSpanProcessor(_DropSpans(), max_queue_size=65536))
            closers += [trace_app(app, provider).close, provider.shutdown]
        for _ in range(200):
            qa.call(question="What is 2 + 3?")
        app.events.flush(30.0)
        cpu = time.process_time()
        for _ in range(calls):
            qa.call(question="What is 2 + 3?")
        app.events.flush(30.0)
        used = (time.process_time() - cpu) / calls * 1e6
        for close in closers:
            close()
    return used


def parts(rounds: int, calls: int) -> None:
    names = ("off", "events", "metrics", "console-state", "tracing", "tracing-10%")
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with SimLM() as sim:
        for _ in range(rounds):
            for name in names:
                cpu[name].append(part_cpu_us(sim, name, calls))
    print(f"CPU per cached call, one part on at a time, us (best of {rounds}; all in brackets)")
    for name in names:
        print(f"  {name:14s} {min(cpu[name]):7.1f}  [{_fmt(cpu[name])}]  "
              f"+{min(cpu[name]) - min(cpu['off']):.1f} over off")  # fmt: skip


def pieces(rounds: int, calls: int) -> None:
    """Each piece of a cached call's observability, timed alone: counting the call (what
    metrics and the console read), the sampler's decision, and for a call that publishes
    events, the events such a call makes (module.start + module.end): steadier on a busy
    machine than whole calls."""
    from dspy_actors.runtime import _events as ev
    from dspy_actors.runtime._call_stats import CallCell
    from dspy_actors.tracing._sampling import CallSampler

    def best(work: Any) -> float:  # CPU us per call, best of ``rounds``
        times = []
        for _ in range(rounds):
            cpu = time.process_time()
            work()
            times.append((time.process_time() - cpu) / calls * 1e6)
        return min(times)

    def build() -> None:
        for i in range(calls):
            ev.ModuleStart(trace_id=str(i), module_path="qa")
            ev.ModuleEnd(trace_id=str(i), module_path="qa")

    batch: list[Any] = []
    for i in range(calls):
        batch += [ev.ModuleStart(trace_id=f"{i:032x}", module_path="qa"),
                  ev.ModuleEnd(trace_id=f"{i:032x}", module_path="qa")]  # fmt: skip
    bus = ev.EventBus.start(max_pending=None)
    bus.subscribe("*", lambda _event: None)

    def publish() -> None:
        for event in batch:
            bus.publish(event)
        bus.flush(30.0)

    cell = CallCell()

    def count() -> None:
        for _ in range(calls):
            cell.ended(0.0001)

    ids = [f"{i:x}-{i}" for i in range(calls)]
    sampler = CallSampler(TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1))))

    def decide() -> None:
        for trace_id in ids:  # asked twice per call: at its start and at its end
            sampler(trace_id)
            sampler(trace_id)

    print(f"CPU per cached call, us (best of {rounds}, {calls} calls)")
    print(f"  count the call (every call)          {best(count):6.1f}")
    print(f"  sampler's decision x2 (every call)   {best(decide):6.1f}")
    print(f"  build 2 events (a sampled call)      {best(build):6.1f}")
    print(f"  publish + deliver to a no-op (both)  {best(publish):6.1f}")
    bus.stop()
    with (
        SimLM() as sim,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim"),
            data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
        ) as app,
    ):
        app.serve("qa", dsa.Predict("question -> answer"))
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_DropSpans(), max_queue_size=1 << 20))
        tracing = trace_app(app, provider)
        used = best(lambda t=tracing: t._events(batch))
        tracing.close()
        provider.shutdown()  # (its export thread's work is not in the number above)
        print(f"  spans of a sampled call (bus thread) {used:6.1f}")


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each of this process's threads, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        name = names.get(int(tid), stat[stat.index("(") + 1 : stat.rindex(")")])
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def threads(rounds: int, calls: int) -> None:
    """CPU per cached call by thread (from /proc, 10 ms ticks: use many calls): the
    caller's thread is as noisy as the machine, the others' (the event bus's, the
    console's, the span exporter's) are what observability adds there."""
    configs: dict[str, float | None] = {"off": None, "on-1%": 0.01, "on-10%": 0.1, "on": 1.0}
    with SimLM() as sim:
        for _ in range(rounds):
            for name, sampled in configs.items():
                with dsa.start(
                    lm=dsa.LM("openai/sim-model", api_base=sim.openai_base, api_key="sim"),
                    data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
                ) as app:
                    qa = app.serve("qa", dsa.Predict("question -> answer"))
                    qa.call(question="What is 2 + 3?")
                    with observed(app, sampled):
                        for _ in range(500):
                            qa.call(question="What is 2 + 3?")
                        app.events.flush(30.0)
                        before, cpu = _thread_cpu_s(), time.process_time()
                        for _ in range(calls):
                            qa.call(question="What is 2 + 3?")
                        app.events.flush(30.0)
                        used, after = time.process_time() - cpu, _thread_cpu_s()
                by_thread = {n: after[n] - before.get(n, 0.0) for n in after}
                top = sorted(by_thread.items(), key=lambda item: -item[1])[:4]
                shares = ", ".join(f"{n} {s / calls * 1e6:.1f}" for n, s in top if s > 0)
                print(f"  {name:7s} process {used / calls * 1e6:6.1f} us/call;  {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000, help="cached calls per round")
    parser.add_argument("--total", type=int, default=2048, help="uncached calls per round")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05, help="the LM's, seconds")
    parser.add_argument("--parts", action="store_true", help="CPU by part instead")
    parser.add_argument("--pieces", action="store_true", help="each piece's CPU instead")
    parser.add_argument("--threads", action="store_true", help="CPU by thread instead")
    args = parser.parse_args()
    if args.threads:
        threads(args.rounds, args.calls)
        return
    if args.parts:
        parts(args.rounds, args.calls)
        return
    if args.pieces:
        pieces(args.rounds, args.calls)
        return
    configs: dict[str, float | None] = {"off": None, "on": 1.0, "on-10%": 0.1, "on-1%": 0.01}
    cached: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    rates: dict[str, list[float]] = {name: [] for name in configs}
    seen: dict[str, dict[str, int]] = {name: {} for name in configs}
    with SimLM() as fast, SimLM(latency=args.latency) as slow:
        for _ in range(args.rounds):
            for name, sampled in configs.items():
                us, counts = cached_call_us(fast, sampled, args.calls)
                cached[name].append(us)
                cpu[name].append(counts.pop("cpu_us"))
                rate, more = throughput(slow, sampled, args.total, args.in_flight)
                rates[name].append(rate)
                got = seen[name]
                seen[name] = {k: got.get(k, 0) + counts[k] + more[k] for k in counts}
    print(f"cached call, us (best of {args.rounds}; every round in brackets; 'paired': the "
          "median of each round's on/off, steadier under load)")  # fmt: skip
    for name in configs:
        print(f"  {name:7s} {min(cached[name]):7.1f}  [{_fmt(cached[name])}]  "
              f"on/off {min(cached[name]) / min(cached['off']):.3f}  "
              f"paired {_paired(cached[name], cached['off']):.3f}")  # fmt: skip
    print("CPU per cached call (process time, bus thread included), us")
    for name in configs:
        print(f"  {name:7s} {min(cpu[name]):7.0f}  [{_fmt(cpu[name])}]  "
              f"on/off {min(cpu[name]) / min(cpu['off']):.3f}  "
              f"paired {_paired(cpu[name], cpu['off']):.3f}")  # fmt: skip
    print(f"{args.in_flight} in flight, {args.latency * 1000:.0f} ms LM, calls/s (best of "
          f"{args.rounds}; ideal {args.in_flight / args.latency:.0f}/s)")  # fmt: skip
    for name in configs:
        best = max(rates[name]) / max(rates["off"])
        median = statistics.median(rates[name]) / statistics.median(rates["off"])
        print(f"  {name:7s} {max(rates[name]):7.1f}  [{_fmt(rates[name])}]  "
              f"on/off {best:.3f}  median on/off {median:.3f}  "
              f"paired {_paired(rates[name], rates['off']):.3f}")  # fmt: skip
    for name in ("on", "on-10%", "on-1%"):
        print(f"{name}: {seen[name].get('spans', 0)} spans exported, "
              f"{seen[name].get('pushes', 0)} console pushes read")  # fmt: skip


def _paired(on: list[float], off: list[float]) -> float:
    """The median of each round's on/off ratio (rounds run back to back, so a burst of
    load elsewhere slows both sides of a round alike)."""
    return statistics.median(a / b for a, b in zip(on, off, strict=True))


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
