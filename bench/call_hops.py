"""Where the time of one uncached call goes: a timestamp at each hop, over many calls.

    .venv/bin/python bench/call_hops.py                      # 64 in flight, 100 ms SimLM
    .venv/bin/python bench/call_hops.py --in-flight 256 --per-thread 3
    .venv/bin/python bench/call_hops.py --no-hooks           # the same run, unobserved
    .venv/bin/python bench/call_hops.py --stagger 0.1        # first calls spread over 100 ms

A one-step ``app.program`` of a Predict (the shape of ``bench_runtime.py``'s 64-in-flight
target), ``in_flight`` threads calling ``handle.call`` back to back against a SimLM server
in its own process. Each hop of a call is stamped with ``time.monotonic()`` by wrapping the
function that marks it (this script patches them; the package is unchanged):

    call        handle.call captured its context (the call starts)
    send        the caller tell_inline's the Call to the step's module actor
    accept      ModuleActor._accept begins (in the caller's thread, or the actor's)
    submit      submit_lm_request: the prompt is formatted, the request goes to the pool
    handed      EventLoopThread._send returned: queued for the loop, the loop woken
    loop        EventLoopThread._begin: the loop took it from its hand-over queue
    post        AioClients.post begins (the HTTP request goes out)
    posted      AioClients.post returned (the response was read)
    settled     LMAttempt.succeeded: LM.settle done, the reply about to be resolved
    told        LMAttempt.succeeded returned: the reply's callbacks ran (the module told)
    resumed     ModuleActor._lm_done begins (the steps resume: the answer is parsed)
    finish      ModuleActor._finish: the Prediction about to resolve the Call's reply
    woken       the caller's wait on the reply returned
    returned    handle.call returned

For each hop to the next: p50/p90/p99/mean in ms over the calls made while every thread
was calling (each thread's warm-up call is left out), where each ran, and the end-to-end
latency less the server's 100 ms. The stamps cost a few us per hop (``--no-hooks`` shows
the rate without them); compare hops of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextvars
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile
from bench_core import Server

HOPS = (
    "call",
    "send",
    "accept",
    "submit",
    "handed",
    "loop",
    "post",
    "posted",
    "settled",
    "told",
    "resumed",
    "finish",
    "woken",
    "returned",
)

# trace id -> hop -> instant; trace id -> where hops ran. Plain dict writes (atomic under
# the GIL): one writer per key.
_stamps: dict[str, dict[str, float]] = {}
_where: dict[str, dict[str, str]] = {}
_caller = threading.local()
_task_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("hop_trace", default=None)


def _stamp(trace_id: str | None, hop: str) -> None:
    if trace_id is not None:
        record = _stamps.get(trace_id)
        if record is not None and hop not in record:
            record[hop] = time.monotonic()


def _ran(trace_id: str | None, hop: str) -> None:
    if trace_id is not None and trace_id in _where:
        _where[trace_id][hop] = threading.current_thread().name


def install_hooks() -> None:
    """Wrap the functions that mark each hop (see the module docstring)."""
    import supervisors
    from dspy_actors.lm import _aio_transport
    from dspy_actors.runtime import _lm_loop, _lm_pool, _module_actor, _plans, handle
    from dspy_actors.runtime._context import capture
    from dspy_actors.runtime._lm_pool import submit_lm_request as submit
    from dspy_actors.runtime._messages import Call

    def capture_stamped(**kwargs: Any) -> Any:
        ctx = capture(**kwargs)
        _stamps[ctx.trace_id] = {"call": time.monotonic()}
        _where[ctx.trace_id] = {}
        _caller.trace_id = ctx.trace_id
        return ctx

    handle.capture = capture_stamped  # type: ignore[attr-defined]

    tell_inline = supervisors.tell_inline

    def tell_inline_stamped(ref: Any, message: Any) -> None:
        if isinstance(message, Call):
            _stamp(message.ctx.trace_id, "send")
        tell_inline(ref, message)

    supervisors.tell_inline = tell_inline_stamped

    accept = _module_actor.ModuleActor._accept

    def accept_stamped(self: Any, call: Any) -> None:
        _stamp(call.ctx.trace_id, "accept")
        _ran(call.ctx.trace_id, "accept")
        accept(self, call)

    _module_actor.ModuleActor._accept = accept_stamped  # type: ignore[method-assign]

    def submit_stamped(*args: Any, **kwargs: Any) -> Any:
        _stamp(args[4].trace_id, "submit")
        return submit(*args, **kwargs)

    _module_actor.submit_lm_request = submit_stamped  # type: ignore[attr-defined]

    send = _lm_loop.EventLoopThread._send

    def send_stamped(self: Any, slot: Any, work: Any) -> None:
        send(self, slot, work)
        _stamp(work.pending.request.ctx.trace_id, "handed")

    _lm_loop.EventLoopThread._send = send_stamped  # type: ignore[method-assign]

    begin = _lm_loop.EventLoopThread._begin

    def begin_stamped(self: Any, slot: Any, lm: Any, attempt: Any, prepared: Any) -> None:
        _stamp(attempt.request.ctx.trace_id, "loop")
        begin(self, slot, lm, attempt, prepared)

    _lm_loop.EventLoopThread._begin = begin_stamped  # type: ignore[method-assign]

    call = _lm_loop.EventLoopThread._call

    async def call_stamped(self: Any, slot: Any, lm: Any, attempt: Any, prepared: Any) -> None:
        _task_trace.set(attempt.request.ctx.trace_id)  # (the task's own context)
        await call(self, slot, lm, attempt, prepared)

    _lm_loop.EventLoopThread._call = call_stamped  # type: ignore[method-assign]

    post = _aio_transport.AioClients.post

    async def post_stamped(self: Any, url: str, content: bytes, timeout: float) -> Any:
        trace_id = _task_trace.get()
        _stamp(trace_id, "post")
        result = await post(self, url, content, timeout)
        _stamp(trace_id, "posted")
        return result

    _aio_transport.AioClients.post = post_stamped  # type: ignore[method-assign]

    succeeded = _lm_pool.LMAttempt.succeeded

    def succeeded_stamped(self: Any, response: Any, before_answer: Any = None) -> str:
        trace_id = self.request.ctx.trace_id
        _stamp(trace_id, "settled")
        outcome = succeeded(self, response, before_answer)
        _stamp(trace_id, "told")
        return outcome

    _lm_pool.LMAttempt.succeeded = succeeded_stamped  # type: ignore[method-assign]

    def trace_of(actor: Any, call_id: int) -> str | None:
        record = actor._inflight.get(call_id)
        return None if record is None else record.call.ctx.trace_id

    lm_done = _module_actor.ModuleActor._lm_done

    def lm_done_stamped(self: Any, message: Any) -> None:
        trace_id = trace_of(self, message.call_id)
        _stamp(trace_id, "resumed")
        _ran(trace_id, "resumed")
        lm_done(self, message)

    _module_actor.ModuleActor._lm_done = lm_done_stamped  # type: ignore[method-assign]

    finish = _module_actor.ModuleActor._finish

    def finish_stamped(self: Any, call_id: int, prediction: Any) -> None:
        _stamp(trace_of(self, call_id), "finish")
        finish(self, call_id, prediction)

    _module_actor.ModuleActor._finish = finish_stamped  # type: ignore[method-assign]

    await_blocking = _plans.await_reply_blocking

    def await_stamped(step: Any) -> Any:
        try:
            return await_blocking(step)
        finally:
            _stamp(step.ctx.trace_id, "woken")

    _plans.await_reply_blocking = await_stamped


def run(
    url: str, in_flight: int, per_thread: int, hooks: bool, stagger: float = 0.0
) -> dict[str, Any]:
    if hooks:
        install_hooks()
    import dspy_actors as dsa

    lm = dsa.LM("openai/gpt-4o-mini", api_base=url + "/v1", api_key="k", cache=False)
    app = dsa.start(lm=lm, data_dir=tempfile.mkdtemp(prefix="bench-hops-"))
    timed: list[str] = []
    lock = threading.Lock()
    try:
        handle = app.program("p", [("answer", dsa.Predict, {"signature": "question -> answer"})])
        handle.call(question="warm-up")
        barrier = threading.Barrier(in_flight + 1)

        def worker(w: int) -> None:
            handle.call(question=f"warm {w}")
            barrier.wait(timeout=120)
            if stagger:  # thread w starts w/in_flight of the way through ``stagger`` s
                time.sleep(stagger * w / in_flight)
            for i in range(per_thread):
                handle.call(question=f"w{w} q{i}")
                if hooks:
                    trace_id = _caller.trace_id
                    _stamp(trace_id, "returned")
                    with lock:
                        timed.append(trace_id)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(in_flight)]
        for t in threads:
            t.start()
        barrier.wait(timeout=120)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.join()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        app.stop()
        lm.close()
    n = in_flight * per_thread
    out: dict[str, Any] = {"rate": n / wall, "cpu_us": cpu / n * 1e6, "ideal": in_flight / 0.1}
    if hooks:
        out["hops"] = _hop_table(timed)
        out["where"] = _where_table(timed)
        out["waves"] = _waves(timed)
    return out


def _waves(traces: list[str], gap_ms: float = 20.0) -> list[tuple[int, float]]:
    """The LM answers' arrivals ("posted") grouped into bursts (a pause of more than
    ``gap_ms`` between two ends a burst): (answers, ms from first to last) per burst.
    Calls that all start at once and meet the same latency arrive in waves; the work
    of a wave is done one call after another on one GIL."""
    arrivals = sorted(_stamps[t]["posted"] for t in traces if "posted" in _stamps[t])
    bursts: list[list[float]] = []
    for instant in arrivals:
        if bursts and (instant - bursts[-1][-1]) * 1e3 <= gap_ms:
            bursts[-1].append(instant)
        else:
            bursts.append([instant])
    return [(len(b), (b[-1] - b[0]) * 1e3) for b in bursts]


def _hop_table(traces: list[str]) -> list[tuple[str, float, float, float, float, int]]:
    rows = []
    complete = [_stamps[t] for t in traces if all(h in _stamps[t] for h in HOPS)]
    for a, b in itertools.pairwise(HOPS):
        ms = [(s[b] - s[a]) * 1e3 for s in complete]
        rows.append(_row(f"{a} -> {b}", ms, len(complete)))
    total = [(s["returned"] - s["call"]) * 1e3 for s in complete]
    server = [(s["posted"] - s["post"]) * 1e3 for s in complete]
    rows.append(_row("call -> returned (end to end)", total, len(complete)))
    rows.append(_row("post -> posted (HTTP; server sleeps 100)", server, len(complete)))
    ours = [t - h for t, h in zip(total, server, strict=True)]
    rows.append(_row("end to end less HTTP (the runtime)", ours, len(complete)))
    return rows


def _row(name: str, ms: list[float], n: int) -> tuple[str, float, float, float, float, int]:
    if not ms:
        return (name, float("nan"), float("nan"), float("nan"), float("nan"), 0)
    return (
        name,
        percentile(ms, 50),
        percentile(ms, 90),
        percentile(ms, 99),
        statistics.fmean(ms),
        n,
    )


def _where_table(traces: list[str]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for t in traces:
        for hop, thread in _where.get(t, {}).items():
            kind = "loop" if thread.endswith("-loop") else thread.split("-")[0]
            counts = table.setdefault(hop, {})
            counts[kind] = counts.get(kind, 0) + 1
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--per-thread", type=int, default=6)
    parser.add_argument("--no-hooks", action="store_true")
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="spread the threads' first calls evenly over this many seconds (0: all at once)",
    )
    args = parser.parse_args()
    server = Server("sim-slow", 0.1, dict(os.environ), Path(tempfile.mkdtemp()))
    try:
        load = os.getloadavg()
        result = run(server.url, args.in_flight, args.per_thread, not args.no_hooks, args.stagger)
    finally:
        server.stop()
    print(
        f"{args.in_flight} in flight x {args.per_thread}: {result['rate']:.0f} calls/s "
        f"({result['rate'] / result['ideal']:.0%} of ideal), {result['cpu_us']:.0f} us CPU "
        f"per call; load before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    if "hops" in result:
        print(f"{'hop':44} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7}  (ms, n)")
        for name, p50, p90, p99, mean, n in result["hops"]:
            print(f"{name:44} {p50:7.2f} {p90:7.2f} {p99:7.2f} {mean:7.2f}  {n}")
        print("where hops ran (thread kind: calls):", result["where"])
        waves = ", ".join(f"{n} in {ms:.0f} ms" for n, ms in result["waves"])
        print(f"LM answers arrived in bursts (answers in first-to-last ms): {waves}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
