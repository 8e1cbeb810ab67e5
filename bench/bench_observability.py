"""What the console, metrics and tracing cost a running app: a cached call and 256-in-flight
throughput with them on vs off, in the same run (issue 16: within 5%).

    .venv/bin/python bench/bench_observability.py                 # the verdict (~2.5 min)
    .venv/bin/python bench/bench_observability.py --pairs 16 --ratios 0.01,0.1,1
    .venv/bin/python bench/bench_observability.py --pieces        # each piece's CPU, alone

Whole runs in paired blocks: one process, one app per workload (cached calls; uncached
calls 256 in flight against a loopback LM server in a child process, 50 ms per request).
Each pair is an "off" block and an "on" block back to back on the same app, in alternating
order (off first, then on first); a block is ``--cached-calls`` cached calls, or
``--total`` uncached calls 256 at a time. A pair's ratio (on/off) compares two blocks run
within seconds of each other, so load elsewhere on the machine mostly cancels; the report
gives the median of the pairs' ratios with their spread, per measure, and says whether
each 5% target is met (the median within 5%), and whether clearly (the middle half of the
pairs on the same side of 5%) or within the run's noise.

"on" is everything a service would run, set up before the block and taken down after it:

- the console (``app.console()``, which serves ``/metrics`` too), with a client reading
  its event stream, as a browser tab does, in another process (the "observer");
- ``/metrics`` scraped by the observer every ``--scrape-every`` seconds (1 s: Prometheus
  is usually set to 15-60 s, so this is a heavy case);
- ``trace_app`` with the SDK's ``BatchSpanProcessor`` (spans exported to a sink that drops
  them) and ``ParentBased(TraceIdRatioBased(r))`` head sampling for each ``--ratios`` r. A
  service at thousands of calls per second samples 1% or less; 10% is a heavy case.

Per block it measures wall time and process CPU per call, and CPU per call by thread (from
/proc: the caller's, the LM loop's, the event bus's, the console's, the span exporter's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import dspy_actors as dsa
from dspy_actors.tracing import trace_app

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loopback_server import LoopbackServer

_QUESTION = "What is 2 + 3?"
# CPU per call by thread, grouped by what the thread is (its name says).
ROLES = ("caller", "lm loop", "bus", "console", "exporter", "other")
TARGET = 0.05


class _DropSpans(SpanExporter):
    """Takes spans as an exporter does, keeps a count, sends them nowhere."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


# ------------------------------------------------------------------- the observer process


def observe(base_url: str, token: str, scrape_every: float) -> None:
    """The observer (a child process): reads the console's event stream as a browser does,
    reconnecting whenever it ends (the console is stopped after each "on" block), and
    scrapes ``/metrics`` every ``scrape_every`` s while the console is up. Prints
    ``snapshot`` each time a stream starts; on "quit" (stdin), prints its counts as JSON."""
    import httpx

    counts = {"snapshots": 0, "sections": 0, "scrapes": 0}
    done = threading.Event()
    headers = {"Authorization": f"Bearer {token}"}

    def read() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
            while not done.is_set():
                try:
                    with client.stream("GET", "/api/events") as response:
                        for line in response.iter_lines():
                            if line == "event: snapshot":
                                counts["snapshots"] += 1
                                print("snapshot", flush=True)
                            elif line == "event: section":
                                counts["sections"] += 1
                except httpx.HTTPError:
                    pass  # the console is down
                done.wait(0.1)  # then try again (a browser's EventSource waits longer)

    def scrape() -> None:
        with httpx.Client(base_url=base_url, headers=headers, timeout=60.0) as client:
            while not done.wait(scrape_every):
                try:
                    if client.get("/metrics").status_code == 200:
                        counts["scrapes"] += 1
                except httpx.HTTPError:
                    pass

    for target in (read, scrape):
        threading.Thread(target=target, daemon=True).start()
    sys.stdin.readline()
    done.set()
    print(json.dumps(counts), flush=True)


class Observer:
    """The observer process, seen from the bench."""

    def __init__(self, base_url: str, token: str, scrape_every: float) -> None:
        argv = [sys.executable, __file__, "--observe", base_url, token, str(scrape_every)]
        self._process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.strip())

    def forget(self) -> None:
        """Drop what it said so far (a stream of an earlier console restarted, say)."""
        while not self._lines.empty():
            self._lines.get_nowait()

    def wait_snapshot(self, timeout: float = 60.0) -> None:
        """Until a stream has started (the console's first push to this reader)."""
        while True:
            if self._lines.get(timeout=timeout) == "snapshot":
                return

    def stop(self) -> dict[str, int]:
        assert self._process.stdin is not None
        self._process.stdin.write("quit\n")
        self._process.stdin.flush()
        counts: dict[str, int] = {}
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line.startswith("{"):
                counts = json.loads(line)
                break
        self._process.wait(timeout=30.0)
        return counts


# ------------------------------------------------------------------------------ the blocks


class Observed:
    """Observability on ``app`` (console on a fixed port and token, so the observer finds
    it every time; metrics; tracing at ``ratio``) until :meth:`close`."""

    def __init__(self, app: Any, ratio: float, port: int, token: str, observer: Observer) -> None:
        self.exporter = _DropSpans()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, max_queue_size=65536))
        self.tracing = trace_app(app, self.provider)
        observer.forget()
        self.console = app.console(port=port, token=token, announce=None)
        observer.wait_snapshot()

    def settle(self) -> None:
        """Inside the measured span: the spans of the block's calls reach the exporter."""
        self.provider.force_flush()

    def close(self) -> int:
        self.tracing.close()
        self.provider.shutdown()
        self.console.stop()
        if self.console.metrics is not None:
            self.console.metrics.close()  # (a console leaves the app's metrics on)
        return self.exporter.count


def _role(name: str) -> str:
    if name == "MainThread":
        return "caller"
    if name.endswith("-loop"):
        return "lm loop"
    if name.startswith("EventBusActor"):
        return "bus"
    if name.endswith("-console") or name.startswith("asyncio_"):
        return "console"  # its server's loop, and the threads it renders sections on
    if name.startswith("OtelBatch"):
        return "exporter"
    return "other"


def _cpu_ns_by_role() -> dict[str, int]:
    """CPU ns so far of this process's threads, by role (from /proc's schedstat)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = dict.fromkeys(ROLES, 0)
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            name = names.get(int(tid))
            if name is None:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    name = f.read().strip()
        except OSError:
            continue  # ended meanwhile
        out[_role(name)] += ns
    return out


@dataclass
class Block:
    calls: int
    wall_s: float
    cpu_s: float
    by_role_ns: dict[str, int]

    @property
    def wall_us(self) -> float:
        return self.wall_s / self.calls * 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.calls * 1e6

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s

    def role_us(self, role: str) -> float:
        return self.by_role_ns[role] / self.calls / 1e3


def measured(app: Any, run: Callable[[], int], settle: Callable[[], None]) -> Block:
    """One block: ``run()`` (returns the calls made), then the bus's and the exporter's
    work for them, all inside the CPU window; wall time is ``run()``'s alone."""
    before, cpu = _cpu_ns_by_role(), time.process_time()
    start = time.perf_counter()
    calls = run()
    wall = time.perf_counter() - start
    app.events.flush(30.0)
    settle()
    used, after = time.process_time() - cpu, _cpu_ns_by_role()
    by_role = {role: after[role] - before[role] for role in ROLES}
    # Threads that ended during the block (none expected) are in the total, not a role.
    by_role["other"] += max(0, round(used * 1e9) - sum(by_role.values()))
    return Block(calls, wall, used, by_role)


def cached_block(qa: Any, calls: int) -> int:
    for _ in range(calls):
        qa.call(question=_QUESTION)
    return calls


def in_flight_block(qa: Any, total: int, in_flight: int, offset: int) -> int:
    async def run() -> None:
        pending = iter(range(offset, offset + total))

        async def worker() -> None:
            for i in pending:
                await qa.acall(question=f"{i} + 1?")

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    asyncio.run(run())
    return total


@dataclass
class Pairs:
    """The blocks of one workload at one sampling ratio: off and on, pair by pair."""

    off: list[Block] = field(default_factory=list)
    on: list[Block] = field(default_factory=list)
    spans: int = 0

    def ratios(self, measure: Callable[[Block], float]) -> list[float]:
        return [measure(a) / measure(b) for a, b in zip(self.on, self.off, strict=True)]


def run_pairs(args: argparse.Namespace) -> None:
    ratios = [float(r) for r in args.ratios.split(",")]
    port, token = _free_port(), "bench-observability-" + os.urandom(8).hex()
    results: dict[tuple[str, float], Pairs] = {}
    load_before = os.getloadavg()
    with (
        LoopbackServer(latency=args.latency) as server,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=server.base_url, api_key="k"),
            data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
        ) as cached_app,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=server.base_url, api_key="k", cache=False),
            data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
        ) as flight_app,
    ):
        observer = Observer(f"http://127.0.0.1:{port}", token, args.scrape_every)
        cached = cached_app.serve("qa", dsa.Predict("question -> answer"))
        flight = flight_app.serve("qa", dsa.Predict("question -> answer"))
        offset = 0

        def block(app: Any, work: Callable[[], int], ratio: float | None) -> tuple[Block, int]:
            if ratio is None:
                return measured(app, work, lambda: None), 0
            on = Observed(app, ratio, port, token, observer)
            try:
                done = measured(app, work, on.settle)
            finally:
                spans = on.close()
            return done, spans

        def one_pair(kind: str, ratio: float, first_on: bool) -> None:
            nonlocal offset
            app = cached_app if kind == "cached" else flight_app
            pairs = results.setdefault((kind, ratio), Pairs())
            for on in (first_on, not first_on):
                if kind == "cached":
                    work = partial(cached_block, cached, args.cached_calls)
                else:
                    work = partial(in_flight_block, flight, args.total, args.in_flight, offset)
                    offset += args.total
                done, spans = block(app, work, ratio if on else None)
                (pairs.on if on else pairs.off).append(done)
                pairs.spans += spans

        # Warm up (not measured): both apps, each code path, the console's first start.
        cached.call(question=_QUESTION)
        block(cached_app, lambda: cached_block(cached, 2000), ratios[0])
        block(flight_app, partial(in_flight_block, flight, 512, args.in_flight, -(10**6)), None)
        started = time.monotonic()
        for i in range(args.pairs):
            for ratio in ratios:
                one_pair("cached", ratio, first_on=i % 2 == 1)
                one_pair("256", ratio, first_on=i % 2 == 0)
            print(f"  pair {i + 1}/{args.pairs} done ({time.monotonic() - started:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)  # fmt: skip
        seen = observer.stop()
    report(args, ratios, results, seen, load_before, os.getloadavg())


# ------------------------------------------------------------------------------- the report


def _spread(values: list[float]) -> str:
    """The median, the middle half and the extremes of per-pair ratios."""
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return (f"{statistics.median(values):.3f}  [middle half {q[0]:.3f}-{q[2]:.3f}, "
            f"all {min(values):.3f}-{max(values):.3f}]")  # fmt: skip


def _verdict(ratios: list[float], higher_is_better: bool) -> str:
    """MET if the median pair is within 5%; "clearly" when the whole middle half of the
    pairs is on that side of 5%, else "within this run's noise"."""
    costs = sorted(1.0 - r if higher_is_better else r - 1.0 for r in ratios)
    cost = statistics.median(costs)
    q = statistics.quantiles(costs, n=4) if len(costs) >= 2 else [cost] * 3
    within = cost <= TARGET + 1e-9
    met = "MET" if within else "NOT MET"
    sure = q[2] <= TARGET + 1e-9 if within else q[0] > TARGET
    how = "clearly" if sure else "within this run's noise"
    return (
        f"{met}, {how} (observability costs {cost * 100:+.1f}%; middle half of the pairs "
        f"{q[0] * 100:+.1f}% to {q[2] * 100:+.1f}%)"
    )


def report(
    args: argparse.Namespace,
    ratios: list[float],
    results: dict[tuple[str, float], Pairs],
    seen: dict[str, int],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(f"Issue 16: observability on vs off, {args.pairs} pairs of blocks per row "
          f"(median of per-pair on/off ratios [middle half, all]); load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")  # fmt: skip
    print(f"'on': the console with a reader of its stream (another process), /metrics "
          f"scraped every {args.scrape_every:g} s, tracing (BatchSpanProcessor) at each "
          "head-sampling ratio")  # fmt: skip
    for ratio in ratios:
        name = f"on at {ratio:.0%} sampled"
        cached, flight = results[("cached", ratio)], results[("256", ratio)]
        wall = cached.ratios(lambda b: b.wall_us)
        cpu = cached.ratios(lambda b: b.cpu_us)
        rate = flight.ratios(lambda b: b.rate)
        fcpu = flight.ratios(lambda b: b.cpu_us)
        print(f"\n{name}")
        off_us = statistics.median(b.wall_us for b in cached.off)
        print(f"  cached call, wall per call   {_spread(wall)}   (off: median {off_us:.1f} us)")
        print(f"  cached call, CPU per call    {_spread(cpu)}")
        off_rate = statistics.median(b.rate for b in flight.off)
        print(f"  256 in flight, calls/s       {_spread(rate)}   (off: median {off_rate:.0f}/s)")
        print(f"  256 in flight, CPU per call  {_spread(fcpu)}")
        for label, pairs in (("cached", cached), ("256", flight)):
            cells = []
            for role in ROLES:
                off = statistics.median(b.role_us(role) for b in pairs.off)
                on = statistics.median(b.role_us(role) for b in pairs.on)
                cells.append(f"{role} {off:.1f}->{on:.1f}")
            print(f"  {label:6s} CPU us/call by thread, off->on (medians): " + ", ".join(cells))
        print(f"  spans exported: {cached.spans} (cached blocks), {flight.spans} (256 blocks)")
        print(f"  VERDICT cached call (wall per call within 5%):  "
              f"{_verdict(wall, higher_is_better=False)}")  # fmt: skip
        print(f"  VERDICT 256 in flight (calls/s within 5%):      "
              f"{_verdict(rate, higher_is_better=True)}")  # fmt: skip
    print(f"\nobserver: {seen.get('snapshots', 0)} streams read, {seen.get('sections', 0)} "
          f"sections pushed, {seen.get('scrapes', 0)} /metrics scrapes")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------- the pieces


def pieces(rounds: int, calls: int) -> None:
    """Each piece of observability's work timed alone (CPU us, best of ``rounds``): what a
    call pays on its path, what a sampled call costs the bus, what an LM request's count
    costs against the two events it replaces, and what a console push and a scrape cost."""
    from dspy_actors.console._state import ConsoleState
    from dspy_actors.metrics import app_metrics
    from dspy_actors.runtime import _events as ev
    from dspy_actors.runtime._call_stats import CallCell
    from dspy_actors.tracing._sampling import CallSampler

    def best(work: Callable[[], object], per: int = calls) -> float:
        times = []
        for _ in range(rounds):
            cpu = time.process_time()
            work()
            times.append((time.process_time() - cpu) / per * 1e6)
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
        for trace_id in ids:
            sampler(trace_id)

    print(f"CPU per piece, us (best of {rounds}, {calls} each)")
    print(f"  count a module call (every call)         {best(count):7.1f}")
    print(f"  sampler's decision (every call)          {best(decide):7.1f}")
    print(f"  build 2 events (a sampled call)          {best(build):7.1f}")
    print(f"  publish + deliver to a no-op (both)      {best(publish):7.1f}")
    bus.stop()
    lm_pieces(best, calls)
    with (
        LoopbackServer(latency=0.0) as server,
        dsa.start(
            lm=dsa.LM("openai/sim-model", api_base=server.base_url, api_key="k"),
            data_dir=tempfile.mkdtemp(prefix="bench-obs-"),
        ) as app,
    ):
        qa = app.serve("qa", dsa.Predict("question -> answer"))
        for i in range(50):
            qa.call(question=f"{i}?")
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_DropSpans(), max_queue_size=1 << 20))
        tracing = trace_app(app, provider)
        spans = best(lambda: tracing._events(batch))
        print(f"  spans of a sampled call (bus thread)     {spans:7.1f}")
        tracing.close()
        provider.shutdown()
        state, metrics = ConsoleState(app), app_metrics(app)
        push = best(lambda: json.dumps(state.section("programs"), default=repr), 1)
        deployments = best(lambda: json.dumps(state.section("deployments"), default=repr), 1)
        scrape = best(lambda: metrics.exposition(), 1)
        print(f"  one push of the programs section         {push:7.1f}   (once a second at most)")
        print(f"  one push of the deployments section      {deployments:7.1f}   (same)")
        print(f"  one /metrics scrape (exposition)         {scrape:7.1f}   (per scrape)")
        state.close()
        metrics.close()


def lm_pieces(best: Callable[..., float], calls: int) -> None:
    """An LM request's count (what metrics and the console read now) against its two
    events built, published and delivered to a batch subscriber (what they took before)."""
    from dspy_actors.runtime import _events as ev
    from dspy_actors.runtime._call_stats import LMCounts

    counts = LMCounts()

    def count() -> None:
        for _ in range(calls):
            counts.ended("openai:http://x:sim", "openai/sim", 0.05, prompt_tokens=10,
                         completion_tokens=5)  # fmt: skip

    bus = ev.EventBus.start(max_pending=None)
    bus.subscribe("lm.*", lambda _events: None, batch=True)

    def events() -> None:
        for i in range(calls):
            bus.publish(ev.LMStart(trace_id=str(i), deployment="d", model="m"))
            bus.publish(ev.LMEnd(trace_id=str(i), deployment="d", model="m", latency_s=0.05,
                                 prompt_tokens=10, completion_tokens=5))  # fmt: skip
        bus.flush(30.0)

    print(f"  count an LM request (every request)      {best(count):7.1f}")
    print(f"  its lm.start + lm.end, built and sent    {best(events):7.1f}   (before: each one)")
    bus.stop()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--observe":
        observe(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="pairs of blocks per row")
    parser.add_argument("--ratios", default="0.01,0.1", help="head-sampling ratios of 'on'")
    parser.add_argument("--cached-calls", type=int, default=10000, help="per cached block")
    parser.add_argument("--total", type=int, default=2048, help="uncached calls per block")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.05, help="the LM's, seconds")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="/metrics, seconds")
    parser.add_argument("--pieces", action="store_true", help="each piece's CPU instead")
    parser.add_argument("--rounds", type=int, default=5, help="--pieces: best of")
    parser.add_argument("--calls", type=int, default=3000, help="--pieces: calls per round")
    args = parser.parse_args()
    if args.pieces:
        pieces(args.rounds, args.calls)
        return
    run_pairs(args)


if __name__ == "__main__":
    main()
